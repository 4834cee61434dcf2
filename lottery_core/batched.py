"""Many tickets as one model: N networks of one architecture and one protocol trained together.

Why: a lottery-ticket experiment is many small networks of the same shape (trials x controls x
branches x stability copies), each trained by ``training.train_round`` on its own. A LeNet step
is a few small GEMMs, far too little work to fill a GPU, or to amortise Python and per-step
overhead anywhere, so ``train_members`` trains N of them as one model: their parameters, masks
and optimizer state stacked along a new leading axis, one forward and one backward for all N,
one gather of all N batches, one optimizer call.

What each member keeps of its own: its masks (layer -> 0/1), its starting parameters (keyed like
``model.named_parameters()``, pruned weights as ``<layer>.weight_orig``) and its data-order seed
(its batches are those of ``training.epoch_permutation(seed, epoch, ...)``, exactly as a single
run draws them). What the members share: the architecture and the ``TrainSettings`` (budget,
batch size, learning rate and recipe, evaluation period), hence the learning rate of every step.

How a step runs (the single path's operations, member by member):

- the batches: each member's indices from its epoch permutation, all N x B rows gathered from
  the device-resident data in one ``index_select``;
- the forward: ``weight = weight_orig * mask`` for every member, then either the ``bmm``
  backend (models that are ``nn.Sequential`` of ``Flatten``, ``Linear`` and ``ReLU``, such as
  LeNet-300-100: each layer one ``torch.baddbmm`` over the members, ``_Linear``) or the ``vmap``
  backend (any other model: ``torch.func.vmap`` over ``torch.func.functional_call`` of a
  mask-free copy of the model). The gradient of a pruned entry is exactly zero (the backward of
  the product with the mask's 0), so pruned weights never move and stay exactly zero;
- the loss: each member's mean cross-entropy over its own batch; the members' losses are summed
  before the backward, so each member's gradient is its single-run gradient;
- the update: Adam or SGD (momentum, Nesterov, weight decay) at ``lr x recipe.factor(it)``
  through ``lottery_core.optim`` (torch's fused kernels), given each member's tensors as views
  of the stacked ones: a fused kernel does the tail of a tensor that does not fill a vector
  register in scalar code, which rounds differently (measured up to 1e-7 after 5 steps), so one
  update over a stacked tensor is not N single updates, while N views in one call are;
- no host synchronisation: the per-example losses stay on the device and become each member's
  training loss at evaluations only; the ``bmm`` backend writes gradients into buffers it keeps
  (no weight-sized allocation per step: on the CPU fresh memory is page faults, a large share
  of a step at large N before this was done).

Evaluation is batched too (members in groups of ``EVAL_MEMBERS``, rows in chunks of
``training.EVAL_CHUNK``), with the single path's summation: each chunk's loss summed in float32
in the order ``F.cross_entropy(reduction="sum")`` sums it on the CPU (``nll_sum``), the chunks
in float64. Early stopping is the single path's: the minimum validation loss (the first on a
tie), the parameters there kept in a stacked snapshot, the test set evaluated once there and
once at the end.

What holds (``tests/test_batched.py`` checks each on the CPU, MKL's strict mode being set when
``lottery_core`` is imported):

- ``bmm`` backend: every member is its single run (``training.train_round`` on an ordinary
  model with the same masks, parameters, seed and settings) bit for bit, N = 1 or many, on one
  thread or two: the parameters, every history row (the training loss included), the
  early-stopping iteration and every accuracy. MKL's batched GEMM gives each matrix of the
  batch the bits of the plain GEMM; the weight gradient is the same product as autograd's
  (``_Linear``); the loss sums are ATen's summation order, emulated (``nll_sum``).
- ``vmap`` backend: ``vmap``'s ``F.linear`` is a ``matmul`` and a separate bias add, and its
  convolutions are grouped ones, which round differently. LeNet-300-100 with Adam: parameters
  within 1e-7 (absolute) of the single runs after 200 steps, the same early-stopping iteration.
  LeNet-5 with SGD: 5e-8 after 20 steps. LeNet-5 with Adam: up to 2e-5 after a single step,
  since Adam divides each gradient by its own size, so a gradient near ``eps`` (1e-8) turns a
  rounding-level difference into a visible update; training amplifies it (one member in four
  was 1e-2 away after 20 steps, 0.17 after 200) as it amplifies another CPU's last bits, while
  the early-stopping iterations (20 of 20 cases) and the accuracies (within 0.4 points) agreed.
- On a GPU nothing is promised bit for bit (cuBLAS's batched kernels are not its single ones,
  and CUDA's cross-entropy sums in another order than ``nll_sum``'s): the members agree with
  single runs as runs on another machine do.

A member whose training or validation loss stops being finite fails as its single run would
(``NonFiniteLoss``, in ``MemberResult.error``, with its history up to there) without disturbing
the others: members share no arithmetic. Not supported (``ValueError``): models with buffers
other than the masks (BatchNorm's running statistics would be stacked state updated in place),
optimizers other than the built-in ``adam`` and ``sgd`` (a plugin's step may use the closure,
SAM, or combine tensors, a global norm, which would mix members), and layers with a random
forward (``vmap`` refuses randomness). Threads: the thread rule the caller passes
(``training_threads``: the run's own rule, adaptive on the CPU), else the caller's count; the
``bmm`` members' bits do not depend on it.

Speed (``python -m bench.batched``; ``bench/runs/batched-*``): on a shared 2-core EPYC, one
thread, LeNet-300-100 at 21% remaining, ``bmm`` gives 1.15x the single path's member-steps per
second at N = 1 and about 1.8x at N = 8 to 256; ``vmap`` 1.5x to 2.5x slower than ``bmm``, so
``bmm`` is the default wherever it applies.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from . import guards, masks, optim
from .specs import DatasetSplits
from .threads import ThreadRule, use_threads
from .training import (
    EVAL_CHUNK,
    NonFiniteLoss,
    RoundOutcome,
    TrainSettings,
    augmented,
    epoch_permutation,
)

Backend = Literal["auto", "bmm", "vmap"]
Tensors = dict[str, torch.Tensor]

EVAL_MEMBERS = 64  # members per evaluation pass: memory is members x EVAL_CHUNK x widest layer
LOSS_BUFFER = 1 << 22  # per-example losses kept on the device before they are summed (floats)
CASCADE_STEP = 16  # nll_loss's CPU reduction: partial sums of 16, in 8 levels (LossNLL.cpp)
CASCADE_LEVELS = 8
OPTIMIZERS = ("adam", "sgd")  # elementwise per tensor: a member's update is its single one


@dataclass(frozen=True)
class Member:
    """One network of the batch: its masks by prunable layer name (``masks.prunable_layers``),
    its starting parameters keyed like ``model.named_parameters()`` (pruned weights as
    ``<layer>.weight_orig``) and the seed of its data order (``training.train_round``'s
    ``data_seed``)."""

    masks: Mapping[str, torch.Tensor]
    parameters: Mapping[str, torch.Tensor]
    data_seed: int


@dataclass
class MemberResult:
    """What one member's training produced: ``outcome`` as ``training.train_round`` returns it,
    the trained ``parameters`` (keyed like ``Member.parameters``, on the data's device), the
    parameters at iteration ``snapshot_at`` where it was asked for (late rewinding's θk), and
    ``error``: the ``NonFiniteLoss`` a single run would have raised, else ``None`` (the outcome
    then holds the history up to the failed evaluation, no test accuracies)."""

    outcome: RoundOutcome
    parameters: Tensors
    snapshot: Tensors | None = None
    error: NonFiniteLoss | None = None


# -- the stacked state -----------------------------------------------------------------------


def _plain_copy(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Size], dict[str, str]]:
    """A copy of ``model`` without the pruning re-parametrisation (``weight`` a parameter
    again); the shape of every parameter of the pruned model, by name, in order (``<layer>.
    weight_orig`` for a prunable weight, whether ``model`` had its masks attached or not); and
    each name's name in the copy (``<layer>.weight_orig`` -> ``<layer>.weight``). ``model`` is
    left as it is."""
    memo: dict[int, object] = {}
    for module in model.modules():  # prune's computed ``weight``: not a leaf after a forward
        weight = getattr(module, "weight", None)
        if prune.is_pruned(module) and isinstance(weight, torch.Tensor):
            memo[id(weight)] = weight.detach().clone()
    work = copy.deepcopy(model, memo)
    layers = masks.prunable_layers(work)
    masks.attach_masks(layers)
    extra = sorted(masks.state_buffers(work))
    if extra:
        raise ValueError(
            f"batched training needs a model whose only buffers are its masks; this one has "
            f"{extra} (BatchNorm's running statistics are not stacked)"
        )
    shapes = {name: parameter.shape for name, parameter in work.named_parameters()}
    pruned = {f"{layer.name}.weight_orig" for layer in layers}
    for layer in layers:
        prune.remove(layer.module, "weight")
    plain = {name: name.removesuffix("_orig") if name in pruned else name for name in shapes}
    if sorted(plain.values()) != sorted(name for name, _ in work.named_parameters()):
        raise ValueError("the model's parameters do not map onto its mask-free copy")
    for parameter in work.parameters():
        parameter.requires_grad_(False)
    return work, shapes, plain


class _Stack:
    """The members' parameters (leaves, N x shape) and masks (by parameter name), stacked."""

    def __init__(self, model: nn.Module, members: Sequence[Member], device: torch.device):
        module, shapes, plain = _plain_copy(model)
        self.device = device
        self.module = module.to(device)
        self.names = names = list(shapes)
        self.plain = plain
        self.count = len(members)
        layer_names = [layer.name for layer in masks.prunable_layers(module)]
        self.params: Tensors = {}
        for name in names:
            values = [
                _member_tensor(m.parameters, name, shapes[name], i, "parameter").to(device)
                for i, m in enumerate(members)
            ]
            self.params[name] = torch.stack(values).requires_grad_(True)
        self.masks: Tensors = {}
        for layer in layer_names:
            name = f"{layer}.weight_orig"
            values = [
                _member_tensor(m.masks, layer, shapes[name], i, "mask").to(device)
                for i, m in enumerate(members)
            ]
            stacked = torch.stack(values).to(self.params[name].dtype)
            if not bool(((stacked == 0) | (stacked == 1)).all()):
                raise ValueError(f"the masks of layer {layer!r} are not all 0 or 1")
            self.masks[name] = stacked
        for i, member in enumerate(members):
            extra = sorted(set(member.parameters) - set(names))
            extra += sorted(set(member.masks) - set(layer_names))
            if extra:
                raise ValueError(f"member {i} names {extra}, which the model does not have")

    def effective(self, params: Mapping[str, torch.Tensor], which: slice = slice(None)) -> Tensors:
        """The weights the forward computes with, by the mask-free copy's names: ``weight_orig
        * mask`` for a pruned weight (the single path's pre-hook), the parameter otherwise;
        members ``which`` only."""
        return {
            self.plain[name]: params[name][which] * self.masks[name][which]
            if name in self.masks
            else params[name][which]
            for name in self.names
        }

    def member(self, params: Mapping[str, torch.Tensor], index: int) -> Tensors:
        """Member ``index``'s tensors of a stacked dict, copied, keyed like its parameters."""
        return {name: params[name][index].detach().clone() for name in self.names}


def _member_tensor(
    given: Mapping[str, torch.Tensor], name: str, shape: torch.Size, index: int, what: str
) -> torch.Tensor:
    if name not in given:
        raise ValueError(f"member {index} has no {what} {name!r}")
    value = given[name].detach()
    if value.shape != shape:
        raise ValueError(
            f"member {index}'s {what} {name!r} has shape {tuple(value.shape)}; the model's is "
            f"{tuple(shape)}"
        )
    return value


# -- the forward -----------------------------------------------------------------------------


class _Forward:
    """A batched forward: ``train`` over the members' own inputs (``N*B x ...`` stored rows,
    member-major) at their current parameters, ``evaluate`` over one input every member sees
    with the given effective weights; both return ``M x rows x classes`` logits. ``grads``:
    where the training backward leaves every parameter's gradient, stacked, if it keeps them
    in buffers of its own (else in each parameter's ``grad``)."""

    grads: Tensors | None = None

    def train(self, stack: _Stack, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, weights: Tensors, x: torch.Tensor, members: int) -> torch.Tensor:
        raise NotImplementedError


class _Linear(torch.autograd.Function):
    """Every member's masked ``F.linear`` as one ``torch.baddbmm``, with the single path's
    arithmetic and no allocation of weight-sized tensors per step.

    Forward: ``weight = weight_orig * mask`` into the buffer ``effective`` (the single path's
    pre-hook), then ``baddbmm(bias, input, weight^T)``, the batched ``addmm`` of ``F.linear``.
    Backward: autograd's ``addmm`` backward gives a column-major weight (``weight.t()``) its
    gradient as ``(grad.t() @ input).t()``, while ``bmm``'s own backward would compute
    ``input.t() @ grad``, another GEMM that rounds differently; so the weight's gradient is
    ``grad.t() @ input`` per member, times the mask (the product's backward: pruned entries get
    exactly 0), the input's ``grad @ weight``, the bias's ``grad`` summed over the batch: the
    single path's operations, batched. The parameter gradients are written into the persistent
    buffers ``weight_grad`` and ``bias_grad`` (what the optimizer reads) rather than returned:
    a returned gradient is a new tensor every step, which on the CPU means fresh pages of
    memory, for N networks hundreds of megabytes a step."""

    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,
        weight_orig: torch.Tensor,
        mask: torch.Tensor,
        bias: torch.Tensor | None,
        effective: torch.Tensor,
        weight_grad: torch.Tensor,
        bias_grad: torch.Tensor | None,
    ) -> torch.Tensor:
        torch.mul(weight_orig, mask, out=effective)
        ctx.save_for_backward(h, effective, mask)  # (no setup_context: apply would inspect)
        ctx.sinks = (weight_grad, bias_grad)
        if bias is None:
            return torch.bmm(h, effective.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), h, effective.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, effective, mask = ctx.saved_tensors
        weight_grad, bias_grad = ctx.sinks
        grad_h = torch.bmm(grad, effective) if ctx.needs_input_grad[0] else None
        torch.bmm(grad.transpose(1, 2), h, out=weight_grad)
        weight_grad.mul_(mask)
        if bias_grad is not None:
            torch.sum(grad, 1, out=bias_grad)
        return grad_h, None, None, None, None, None, None


class _Bmm(_Forward):
    """``nn.Sequential`` of ``Flatten``, ``Linear`` and ``ReLU``: each linear layer one
    ``torch.baddbmm`` over the members (``_Linear``), the batched form of the ``addmm`` that
    ``F.linear`` is on a single network (the same bits per member on MKL)."""

    def __init__(self, ops: list[tuple[str, str]], stack: _Stack):
        self.ops = ops
        params = stack.params
        self.grads = {name: torch.zeros_like(params[name]) for name in stack.names}
        self.effective = {name: torch.empty_like(params[name]) for name in stack.masks}

    @staticmethod
    def fits(module: nn.Module) -> list[tuple[str, str]] | None:
        """The layer program of a supported model, else ``None``."""
        if not isinstance(module, nn.Sequential):
            return None
        ops: list[tuple[str, str]] = []
        flat = False
        for name, child in module.named_children():
            if isinstance(child, nn.Flatten) and child.start_dim == 1 and child.end_dim == -1:
                ops.append(("flatten", name))
                flat = True
            elif isinstance(child, nn.Linear) and flat:
                ops.append(("linear", name))
            elif isinstance(child, nn.ReLU):
                ops.append(("relu", name))
            else:
                return None
        return ops

    def train(self, stack: _Stack, x: torch.Tensor) -> torch.Tensor:
        h = x.view(stack.count, -1, *x.shape[1:])
        grads = self.grads
        assert grads is not None
        for op, name in self.ops:
            if op == "flatten":
                h = h.flatten(2)
            elif op == "relu":
                h = torch.relu(h)
            else:
                weight, bias = f"{name}.weight_orig", f"{name}.bias"
                h = _Linear.apply(
                    h,
                    stack.params[weight],
                    stack.masks[weight],
                    stack.params.get(bias),
                    self.effective[weight],
                    grads[weight],
                    grads.get(bias),
                )
        return h

    def evaluate(self, weights: Tensors, x: torch.Tensor, members: int) -> torch.Tensor:
        h = x
        shared = True  # one input for every member: broadcast, not copied, into the first layer
        for op, name in self.ops:
            if op == "flatten":
                h = h.flatten(1) if shared else h.flatten(2)
            elif op == "relu":
                h = torch.relu(h)
            else:
                if shared:
                    h = h.expand(members, *h.shape)
                    shared = False
                weight = weights[f"{name}.weight"].transpose(1, 2)
                bias = weights.get(f"{name}.bias")
                if bias is None:
                    h = torch.bmm(h, weight)
                else:
                    h = torch.baddbmm(bias.unsqueeze(1), h, weight)
        return h


class _Vmap(_Forward):
    """Any model: ``torch.func.vmap`` over ``torch.func.functional_call`` of its mask-free
    copy, the members' effective weights as the mapped argument; autograd does the rest."""

    def __init__(self, module: nn.Module):
        self.module = module

    def _call(self, params: Tensors, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.module, params, (x,))

    def train(self, stack: _Stack, x: torch.Tensor) -> torch.Tensor:
        self.module.train()
        weights = stack.effective(stack.params)
        return torch.func.vmap(self._call)(weights, x.view(stack.count, -1, *x.shape[1:]))

    def evaluate(self, weights: Tensors, x: torch.Tensor, members: int) -> torch.Tensor:
        self.module.eval()
        return torch.func.vmap(self._call, in_dims=(0, None))(weights, x)


def choose_backend(model: nn.Module, backend: Backend = "auto") -> Literal["bmm", "vmap"]:
    """The forward ``train_members`` uses for ``model``: ``bmm`` where the model is a plain
    stack of ``Flatten``, ``Linear`` and ``ReLU`` (exact, and faster than ``vmap``: ``python -m
    bench.batched``), ``vmap`` otherwise or when asked; ``bmm`` asked of any other model is a
    ``ValueError``."""
    fits = _Bmm.fits(model) is not None
    if backend == "bmm" and not fits:
        raise ValueError("the bmm backend takes nn.Sequential of Flatten, Linear and ReLU only")
    return "bmm" if fits and backend != "vmap" else "vmap"


def _make_forward(stack: _Stack, backend: Backend) -> _Forward:
    if choose_backend(stack.module, backend) == "bmm":
        ops = _Bmm.fits(stack.module)
        assert ops is not None
        return _Bmm(ops, stack)
    return _Vmap(stack.module)


# -- the losses ------------------------------------------------------------------------------


def _sequential(values: torch.Tensor) -> torch.Tensor:
    """The float sum of the last dim, left to right from 0, one add at a time."""
    total = values.new_zeros(values.shape[:-1])
    for i in range(values.shape[-1]):
        total = total + values[..., i]
    return total


def nll_sum(losses: torch.Tensor) -> torch.Tensor:
    """The sum over the last dim, in the order ``F.cross_entropy(reduction="sum")`` (and
    ``"mean"``, before its division) adds a batch's per-example losses on the CPU: partial sums
    of ``CASCADE_STEP`` in ``CASCADE_LEVELS`` levels, element 0 alone at the top (ATen's
    ``nll_loss_out_frame``). Element-wise over the leading dims, so every member's sum is the
    bits its single run gets, in a few dozen vectorised adds instead of a loop over rows."""
    level = losses  # what one level receives, in order: row 0 first, alone
    remainders: list[torch.Tensor] = []
    for _ in range(CASCADE_LEVELS - 1):  # the top level never passes its sum on
        size = level.shape[-1]
        if size <= 1:  # row 0 alone goes to the top; every level above holds +0.0
            break
        full = (size - 1) // CASCADE_STEP  # passed up: items 1..16, 17..32, ... as one sum each
        end = 1 + full * CASCADE_STEP
        remainders.append(_sequential(level[..., end:]))  # never passed up: left at this level
        groups = level[..., 1:end].unflatten(-1, (full, CASCADE_STEP))
        level = torch.cat([level[..., :1], _sequential(groups)], dim=-1)
    total = losses.new_zeros(losses.shape[:-1])  # the levels added from the bottom, from +0.0
    for partial in [*remainders, _sequential(level)]:
        total = total + partial
    return total


class _TrainLoss:
    """Each member's training loss summed over the steps since the last evaluation, as the
    single path sums ``loss.detach()`` per step, without a host sync per step: the per-example
    losses are kept and reduced in bulk (``flush``)."""

    def __init__(self, members: int, batch: int, device: torch.device):
        self.batch = batch
        self.kept: list[torch.Tensor] = []
        self.limit = max(1, LOSS_BUFFER // (members * batch))
        self.total = torch.zeros(members, device=device)

    def add(self, per_example: torch.Tensor) -> None:
        self.kept.append(per_example)
        if len(self.kept) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self.kept:
            return
        means = nll_sum(torch.stack(self.kept)) / self.batch  # steps x members
        self.kept = []
        for row in means.unbind(0):
            self.total = self.total + row

    def take(self, window: int) -> list[float]:
        """The mean per step since the last call (``train_loss`` of a history row)."""
        self.flush()
        values = (self.total / window).tolist()
        self.total = torch.zeros_like(self.total)
        return values


# -- the optimizer ---------------------------------------------------------------------------


class _Updater:
    """The round's optimizer over every member's tensors as views of the stacked ones (one
    call, each tensor updated as the single path updates it), at ``lr x recipe.factor(it)``.
    ``grads``: the forward's own gradient buffers, if it has them (their views are each view's
    ``grad`` once and for all), else each step's ``grad`` of the stacked parameters."""

    def __init__(self, stack: _Stack, settings: TrainSettings, grads: Tensors | None):
        self.stack = stack
        self.lr = settings.lr
        self.recipe = recipe = settings.recipe
        self.views = {name: list(stack.params[name].detach().unbind(0)) for name in stack.names}
        self.fixed = grads is not None
        if grads is not None:
            for name, views in self.views.items():
                for view, grad in zip(views, grads[name].unbind(0), strict=True):
                    view.grad = grad
        flat = [view for views in self.views.values() for view in views]
        if recipe is None:
            self.state: optim.Adam | optim.SGD = optim.Adam(
                flat, settings.lr, fused=optim.fusable(flat)
            )
            return
        if recipe.optimizer.name not in OPTIMIZERS:
            raise ValueError(
                f"batched training supports the optimizers {list(OPTIMIZERS)}, not "
                f"{recipe.optimizer_who}"
            )
        with guards.blame(recipe.optimizer_who, "making its state"):
            state = recipe.optimizer.make_state(flat, recipe.config)
        if type(state) not in (optim.Adam, optim.SGD):
            raise ValueError(
                f"{recipe.optimizer_who} made a {type(state).__name__}; batched training "
                "takes lottery_core.optim's Adam and SGD"
            )
        self.state = state

    def step(self, iteration: int) -> None:
        """The update from ``iteration`` to ``iteration + 1``."""
        if not self.fixed:
            for name, views in self.views.items():
                parameter = self.stack.params[name]
                assert parameter.grad is not None
                for view, grad in zip(views, parameter.grad.unbind(0), strict=True):
                    view.grad = grad
        if self.recipe is None:
            self.state.step()
        else:
            self.state.step(self.lr * self.recipe.factor(iteration))
        if not self.fixed:  # free them before the next backward makes new ones
            for name, views in self.views.items():
                self.stack.params[name].grad = None
                for view in views:
                    view.grad = None


# -- evaluation ------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate_members(
    forward: _Forward,
    stack: _Stack,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    images: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> tuple[list[float], list[float]]:
    """Every member's mean cross-entropy and accuracy (percent) over a whole split, as
    ``training.evaluate`` computes each: chunks of ``EVAL_CHUNK`` rows, each chunk's loss
    summed in float32 (``nll_sum``), the chunks in float64, in order."""
    losses: list[float] = []
    accuracies: list[float] = []
    n = x.shape[0]
    for first in range(0, stack.count, EVAL_MEMBERS):
        which = slice(first, min(first + EVAL_MEMBERS, stack.count))
        count = which.stop - which.start
        weights = stack.effective(params, which)
        loss_sum = torch.zeros(count, dtype=torch.float64, device=x.device)
        correct = torch.zeros(count, dtype=torch.int64, device=x.device)
        for start in range(0, n, EVAL_CHUNK):
            logits = forward.evaluate(weights, images(x[start : start + EVAL_CHUNK]), count)
            target = y[start : start + EVAL_CHUNK]
            rows = target.shape[0]
            per_example = F.cross_entropy(
                logits.reshape(count * rows, -1), target.repeat(count), reduction="none"
            )
            loss_sum += nll_sum(per_example.view(count, rows)).double()
            correct += (logits.argmax(dim=2) == target).sum(dim=1)
        losses += [value / n for value in loss_sum.tolist()]
        accuracies += [100.0 * value / n for value in correct.tolist()]
    return losses, accuracies


class _Log:
    """The members' histories and early-stopping snapshots (``training._RoundLog`` for N):
    called only at evaluations and at the end."""

    def __init__(
        self,
        forward: _Forward,
        stack: _Stack,
        data: DatasetSplits,
        settings: TrainSettings,
        on_evaluation: Callable[[int, dict], dict | None] | None,
    ):
        self.forward = forward
        self.stack = stack
        self.data = data
        self.settings = settings
        self.on_evaluation = on_evaluation
        self.outcomes = [RoundOutcome() for _ in range(stack.count)]
        self.errors: list[NonFiniteLoss | None] = [None] * stack.count
        self.best = {name: p.detach().clone() for name, p in stack.params.items()}

    @property
    def failed(self) -> bool:
        """Every member has failed: nothing left to train."""
        return all(error is not None for error in self.errors)

    def _evaluate(self, params: Mapping[str, torch.Tensor], split: str) -> tuple[list, list]:
        data = self.data
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        return evaluate_members(self.forward, self.stack, params, x, y, data.images)

    def evaluation(self, iteration: int, train_losses: list[float]) -> None:
        """Validate every member, add its row and, at a new best validation loss, snapshot its
        parameters; a member whose loss is not finite fails there (``NonFiniteLoss``)."""
        params = self.stack.params
        val_loss, val_acc = self._evaluate(params, "val")
        test = self._evaluate(params, "test") if self.settings.test_every_eval else None
        improved = []
        for i, outcome in enumerate(self.outcomes):
            if self.errors[i] is not None:
                continue
            bad = [v for v in (train_losses[i], val_loss[i]) if not math.isfinite(v)]
            if bad:
                self.errors[i] = NonFiniteLoss(iteration, bad[0])
                continue
            row = {
                "iteration": iteration,
                "train_loss": train_losses[i],
                "val_loss": val_loss[i],
                "val_acc": val_acc[i],
            }
            if test is not None:
                row["test_loss"], row["test_acc"] = test[0][i], test[1][i]
            if self.on_evaluation is not None:
                row.update(self.on_evaluation(i, row) or {})
            outcome.history.append(row)
            if row["val_loss"] < outcome.es_val_loss:
                outcome.es_iteration = iteration
                outcome.es_val_loss = row["val_loss"]
                outcome.es_val_acc = row["val_acc"]
                improved.append(i)
        if improved:
            index = torch.tensor(improved, device=self.stack.device)
            with torch.no_grad():
                for name, best in self.best.items():
                    best.index_copy_(0, index, params[name].detach().index_select(0, index))

    def finish(self) -> list[RoundOutcome]:
        """The test accuracy at the end and at the early-stopping snapshot, for every member
        that did not fail."""
        if self.failed:
            return self.outcomes
        final = self._evaluate(self.stack.params, "test")[1]
        at_es = self._evaluate(self.best, "test")[1]
        for i, outcome in enumerate(self.outcomes):
            if self.errors[i] is None:
                outcome.final_test_acc = final[i]
                outcome.es_test_acc = at_es[i]
        return self.outcomes


# -- the round -------------------------------------------------------------------------------


def _steps_per_epoch(n: int, batch: int) -> int:
    steps = n // batch
    if steps < 1:
        raise ValueError(f"batch size {batch} exceeds the {n} training examples")
    return steps


@dataclass
class _Batches:
    """All members' batches of one step: their indices from each member's epoch permutation,
    gathered at once (``N*B`` rows, member-major)."""

    data: DatasetSplits
    seeds: list[int]
    batch: int
    epoch: int = -1
    orders: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def at(
        self, epoch: int, step: int, iteration: int, settings: TrainSettings
    ) -> tuple[torch.Tensor, torch.Tensor]:
        data, batch = self.data, self.batch
        if epoch != self.epoch:
            n, device = data.train_x.shape[0], data.train_x.device
            self.orders = torch.stack([epoch_permutation(s, epoch, n, device) for s in self.seeds])
            self.epoch = epoch
        index = self.orders[:, step * batch : (step + 1) * batch].reshape(-1)
        stored = torch.index_select(data.train_x, 0, index)
        if settings.augment is not None:
            parts = stored.view(len(self.seeds), batch, *stored.shape[1:])
            stored = torch.cat(
                [
                    augmented(settings.augment, part, seed, iteration)
                    for part, seed in zip(parts, self.seeds, strict=True)
                ]
            )
        return data.images(stored), torch.index_select(data.train_y, 0, index)


def train_members(
    model: nn.Module,
    members: Sequence[Member],
    data: DatasetSplits,
    settings: TrainSettings,
    *,
    backend: Backend = "auto",
    snapshot_at: int | None = None,
    on_evaluation: Callable[[int, dict], dict | None] | None = None,
    progress: Callable[[int], None] | None = None,
    threads: ThreadRule | None = None,
) -> list[MemberResult]:
    """Train every member from ``settings.start_iteration`` to ``settings.iterations`` as
    ``training.train_round`` trains one network, all of them at once on ``data``'s device.

    ``model`` is one built model of the architecture (pruning re-parametrisation attached or
    not; it is copied, never changed); ``backend``: ``choose_backend``'s. ``snapshot_at``: keep
    every member's parameters after the step that completes that iteration (late rewinding's
    θk; ``train_round``'s ``on_iteration``). ``on_evaluation(member, row)`` may return extra
    columns for the member's row; ``progress(k)``: k more steps done (once per evaluation);
    ``threads`` (the thread rule, as ``train_round`` takes it) is told of every step and of
    the work between steps, else the caller's thread count stands. Returns one
    ``MemberResult`` per member, in order.
    """
    if not members:
        return []
    device = data.train_x.device
    count, batch = len(members), settings.batch_size
    steps_per_epoch = _steps_per_epoch(data.train_x.shape[0], batch)
    stack = _Stack(model, members, device)
    forward = _make_forward(stack, backend)
    updater = _Updater(stack, settings, forward.grads)
    log = _Log(forward, stack, data, settings, on_evaluation)
    batches = _Batches(data, [m.data_seed for m in members], batch)
    train_loss = _TrainLoss(count, batch, device)
    snapshot: Tensors | None = None
    window = 0
    iteration = settings.start_iteration
    if threads is not None:
        threads.begin()
    while iteration < settings.iterations and not log.failed:
        epoch, offset = divmod(iteration, steps_per_epoch)
        for step in range(offset, steps_per_epoch):
            x, y = batches.at(epoch, step, iteration, settings)
            logits = forward.train(stack, x)
            per_example = F.cross_entropy(logits.reshape(count * batch, -1), y, reduction="none")
            (per_example.sum() / batch).backward()  # each member's gradient: its mean's
            updater.step(iteration)
            train_loss.add(per_example.detach().view(count, batch))
            if threads is not None:
                threads.step_done()
            window += 1
            iteration += 1
            if iteration == snapshot_at:
                snapshot = {name: p.detach().clone() for name, p in stack.params.items()}
            if iteration % settings.eval_every == 0 or iteration == settings.iterations:
                log.evaluation(iteration, train_loss.take(window))
                if progress is not None:
                    progress(window)
                window = 0
                if threads is not None:
                    threads.pause()
            if iteration >= settings.iterations or log.failed:
                break
    outcomes = log.finish()
    return [
        MemberResult(
            outcome,
            stack.member(stack.params, i),
            None if snapshot is None else stack.member(snapshot, i),
            log.errors[i],
        )
        for i, outcome in enumerate(outcomes)
    ]


@contextmanager
def training_threads(config_threads: int, rule: str, device: torch.device
                     ) -> Iterator[ThreadRule | None]:  # fmt: skip
    """The thread rule a batched model trains under (``train_members``' ``threads``), from
    the config's ``threads`` and ``thread_rule`` as a run makes its own: adaptive on the CPU,
    so a batched step gets two threads where they pay (an idle machine) and one where they
    collapse (busy cores); the thread count before is restored after."""
    before = torch.get_num_threads()
    adaptive = rule == "adaptive" and device.type == "cpu"
    try:
        yield ThreadRule(config_threads, adaptive=adaptive) if device.type == "cpu" else None
    finally:
        use_threads(before)


def unsupported(model: nn.Module, settings: TrainSettings) -> str | None:
    """Why ``train_members`` cannot train networks of ``model`` with ``settings`` together
    (a model with BatchNorm's buffers, an optimizer plugin's step), or ``None`` when it can:
    the caller trains them one by one instead."""
    extra = sorted(masks.state_buffers(model))
    if extra:
        return f"the model has buffers besides its masks ({', '.join(extra[:2])})"
    recipe = settings.recipe
    if recipe is not None and recipe.optimizer.name not in OPTIMIZERS:
        return f"optimizer {recipe.optimizer.name!r} is not one of {', '.join(OPTIMIZERS)}"
    return None
