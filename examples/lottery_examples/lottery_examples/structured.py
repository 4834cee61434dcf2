"""A structured strategy: it returns the masks itself, because it decides its own structure."""

from __future__ import annotations

import torch

from lottery_core.specs import PruningContext


def neuron_masks(ctx: PruningContext) -> dict[str, torch.Tensor]:
    """Neuron pruning: remove whole output neurons (rows) of the hidden fc layers.

    In every ``fc`` layer the alive rows (neurons with at least one surviving weight) are ranked
    by the L2 norm of their surviving weights (``ctx.weights``: trained under IMP, θ0 at init),
    and the weakest ``round(rate * alive rows)`` lose their whole row, where ``rate`` is
    ``ctx.rates[layer]`` (``ctx.rates["*"]`` under ``--scope global``). Conv and output layers
    keep their masks, so the network's overall remaining percentage is higher than an
    unstructured run's at the same rate; the hidden fc layers follow the usual schedule (80.0%,
    64.0%, ... at 20% a round). A removed neuron's bias is not pruned (biases never are): it
    then feeds a constant ``relu(bias)`` forward, which the next layer can still use.
    """
    new = {}
    for name, mask in ctx.masks.items():
        if ctx.kinds[name] != "fc":
            new[name] = mask.clone()
            continue
        rate = ctx.rates["*"] if ctx.scope == "global" else ctx.rates[name]
        rows = mask.reshape(mask.shape[0], -1)
        alive = rows.sum(dim=1) > 0
        count = round(rate * int(alive.sum()))
        norms = ctx.weights[name].reshape(rows.shape).to(torch.float64).norm(dim=1)
        norms = torch.where(alive, norms, torch.full_like(norms, float("inf")))
        pruned = mask.clone()
        if count > 0:
            pruned[torch.topk(norms, count, largest=False).indices] = 0
        new[name] = pruned
    return new
