"""Scoring strategies: each returns one importance score per weight, and the core prunes the
lowest-scoring survivors by the run's scope and rates (layerwise or global, IMP or at init).

Every function here takes a ``PruningContext`` and reads only what it documents: the live model
with its ``torch.nn.utils.prune`` re-parametrisation (``weight_orig`` * ``weight_mask``), the
masks, the effective, initial and rewind weights, training batches and the loss. Gradients are
taken with respect to ``weight_orig``, so they are already zero at pruned entries (whose scores
the core ignores anyway), and with ``torch.autograd.grad``, so no ``.grad`` is left behind. The
core restores the model's parameters, masks and mode after each call.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from lottery_core import LotteryError
from lottery_core.specs import PruningContext

Scores = dict[str, torch.Tensor]

SNIP_BATCHES = 10
"""Training batches SNIP averages its saliency over (Lee et al. use one; a few are steadier)."""

GRASP_BATCHES = 10
"""Training batches for GraSP's gradient and Hessian-gradient product."""

GRASP_TEMPERATURE = 200.0
"""GraSP divides the logits by this before the loss (Wang et al. 2020; Synaptic-Flow too)."""


def layer_parameters(ctx: PruningContext) -> dict[str, nn.Parameter]:
    """The live ``weight_orig`` parameter of every prunable layer, keyed by layer name."""
    modules = dict(ctx.model.named_modules())
    return {name: modules[name].weight_orig for name in ctx.masks}


def snip_scores(ctx: PruningContext) -> Scores:
    """SNIP (Lee et al. 2019): connection sensitivity ``|w * dL/dw|``.

    The gradient of the training loss is summed over ``SNIP_BATCHES`` batches from
    ``ctx.batches``; ``w`` are the current effective weights (θ0 at init, the trained weights
    under IMP). A weight matters if removing it would change the loss a lot, to first order.
    """
    params = layer_parameters(ctx)
    weights = list(params.values())
    total = [torch.zeros_like(p) for p in weights]
    with torch.enable_grad():
        for x, y in ctx.batches(SNIP_BATCHES):
            loss = ctx.loss(ctx.model(x), y)
            for acc, grad in zip(total, torch.autograd.grad(loss, weights), strict=True):
                acc += grad
    return {
        name: (p.detach() * grad).abs()
        for (name, p), grad in zip(params.items(), total, strict=True)
    }


def grasp_scores(ctx: PruningContext) -> Scores:
    """GraSP (Wang et al. 2020): keep the weights whose removal would shrink the gradient flow.

    With ``g`` the loss gradient (over ``GRASP_BATCHES`` batches, logits divided by
    ``GRASP_TEMPERATURE``) and ``H`` the Hessian, the paper's score is ``S = -θ ⊙ Hg``
    (removing a weight changes ``gᵀg`` by about ``2·S``) and GraSP removes the weights with the
    *largest* ``S``. The core removes the *lowest* scores, so this returns ``θ ⊙ Hg = -S``: the
    weights pruned first are those whose removal most increases (least reduces) the gradient
    norm, exactly as the paper and Synaptic-Flow (``p.grad * p.data`` on ``Hg``) do. Returning
    ``-θ ⊙ Hg`` instead would prune the weights GraSP keeps.

    ``Hg`` comes from double backpropagation: ``∇_θ (g_stopped · ∇_θ L)``.
    """
    params = layer_parameters(ctx)
    weights = list(params.values())
    with torch.enable_grad():
        stopped = [torch.zeros_like(p) for p in weights]
        for x, y in ctx.batches(GRASP_BATCHES):
            loss = ctx.loss(ctx.model(x) / GRASP_TEMPERATURE, y)
            for acc, grad in zip(stopped, torch.autograd.grad(loss, weights), strict=True):
                acc += grad
        hessian_grad = [torch.zeros_like(p) for p in weights]
        for x, y in ctx.batches(GRASP_BATCHES):  # the same batches again (seeded)
            loss = ctx.loss(ctx.model(x) / GRASP_TEMPERATURE, y)
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            dot = sum((g * s).sum() for g, s in zip(grads, stopped, strict=True))
            for acc, hg in zip(hessian_grad, torch.autograd.grad(dot, weights), strict=True):
                acc += hg
    return {
        name: p.detach() * hg for (name, p), hg in zip(params.items(), hessian_grad, strict=True)
    }


def synflow_scores(ctx: PruningContext) -> Scores:
    """SynFlow (Tanaka et al. 2020): data-free synaptic flow ``|θ ⊙ ∂R/∂θ|``.

    Every parameter and buffer is replaced by its absolute value (in float64, so products over
    many layers neither underflow nor overflow), an all-ones input of the data's shape goes
    through the network in eval mode, and ``R`` is the sum of the output. The labels and values
    of the data are never used, only its shape. Its point is iteration, which avoids layer
    collapse at high sparsity: run it with ``--prune-at init --init-steps 100`` and the core
    calls it again after each of 100 steps on a geometric path to the round's sparsity.

    The computation goes through ``torch.func.functional_call`` on absolute-valued copies, so
    the live model is never modified (it keeps its dtype and values).
    """
    model = ctx.model
    model.eval()
    x, _ = next(iter(ctx.batches(1)))
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=ctx.device)
    tensors = {
        name: t.detach().to(torch.float64).abs() if t.is_floating_point() else t
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    leaves = {name: tensors[f"{name}.weight_orig"].requires_grad_() for name in ctx.masks}
    with torch.enable_grad():
        flow = functional_call(model, tensors, (ones,)).sum()
        grads = torch.autograd.grad(flow, list(leaves.values()))
    return {
        name: (theta.detach() * grad).abs()
        for (name, theta), grad in zip(leaves.items(), grads, strict=True)
    }


def movement_scores(ctx: PruningContext) -> Scores:
    """Movement: keep the weights that training moved away from zero.

    The score is ``θ_T · (θ_T - θ_k)``: the trained weight times how far training moved it from
    where the round started (``ctx.rewind``, θ0 unless ``--rewind-iter`` > 0; with
    ``--reinit rewind`` every round restarts there). It is the lottery-ticket form of
    first-order movement pruning (Sanh et al. 2020, ``S = -Σ_t ∂L/∂W · W``: with plain gradient
    steps the accumulated ``-∂L/∂W`` is the movement ``θ_T - θ_k`` over the learning rate; under
    Adam, roughly). Positive when a weight grew in the direction of its sign, negative when it
    shrank towards zero or crossed it; unlike Zhou et al.'s ``|θ_T| - |θ_k|`` it also rewards
    weights that are already large.

    Movement needs trained weights: at ``--prune-at init`` every weight equals its starting
    value and every score would be 0, so it stops with one line instead of pruning arbitrarily.
    """
    unmoved = all(
        torch.equal(w, ctx.rewind[name] * ctx.masks[name]) for name, w in ctx.weights.items()
    )
    if unmoved:
        raise LotteryError(
            "pruning strategy 'movement' (lottery-examples) ranks how far training moved each "
            "weight, and nothing has trained yet (--prune-at init); use --prune-at imp"
        )
    return {name: w * (w - ctx.rewind[name]) for name, w in ctx.weights.items()}
