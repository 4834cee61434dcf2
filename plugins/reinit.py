"""Reinitialisation policies: what the surviving weights start from in the next round."""

from __future__ import annotations

import torch

from lottery_core.hookspecs import hookimpl
from lottery_core.specs import ReinitContext, ReinitPolicy


@torch.no_grad()
def rewind(ctx: ReinitContext) -> None:
    """Every weight and bias back to its value at the rewind point (iteration 0 or k); the core
    has set the buffers (BatchNorm's running statistics) to that point's already."""
    for name, tensor in ctx.parameters.items():
        tensor.copy_(ctx.rewind_state[name])


@torch.no_grad()
def random_reinit(ctx: ReinitContext) -> None:
    """A fresh draw from the model's initial distribution; the masks are kept. Buffers
    (BatchNorm's running statistics) go back to θ0's, a freshly built model's."""
    fresh = ctx.fresh_parameters(ctx.generator)
    for name, tensor in ctx.parameters.items():
        tensor.copy_(fresh[name])
    for name, buffer in ctx.buffers.items():
        if name in ctx.initial_buffers:
            buffer.copy_(ctx.initial_buffers[name])


def keep_trained(ctx: ReinitContext) -> None:
    """Continue from the trained weights (fine-tuning after pruning)."""


@hookimpl
def register_reinit_policies(register) -> None:
    register(
        ReinitPolicy(
            "rewind", rewind, "reset survivors to their values at the rewind point", rewinds=True
        )
    )
    register(ReinitPolicy("random", random_reinit, "fresh init of the same distribution"))
    register(ReinitPolicy("none", keep_trained, "keep the trained values"))
