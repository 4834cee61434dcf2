"""Pruning strategies: importance scores that the core turns into masks.

A strategy only ranks weights; which and how many survivors are pruned (layerwise or global, at
which rate) is decided by the core, so every strategy gets both scopes for free.
"""

from __future__ import annotations

import torch

from lottery_core.hookspecs import hookimpl
from lottery_core.specs import PruningContext, PruningStrategy


def magnitude_scores(ctx: PruningContext) -> dict[str, torch.Tensor]:
    """Larger absolute value, more important: IMP's criterion (at θ0 under ``prune_at=init``)."""
    return {name: w.abs() for name, w in ctx.weights.items()}


def random_scores(ctx: PruningContext) -> dict[str, torch.Tensor]:
    """Uniform random scores drawn from the seeded generator: the random-pruning control."""
    return {
        name: torch.rand(w.shape, generator=ctx.generator).to(w.device)
        for name, w in ctx.weights.items()
    }


@hookimpl
def register_pruning_strategies(register) -> None:
    register(PruningStrategy("magnitude", magnitude_scores, "prune the smallest |w|"))
    register(PruningStrategy("random", random_scores, "prune uniformly at random (control)"))
