"""A branch kind from outside the core: Zhou et al. (2019)'s signed constant.

Zhou, Lan, Liu & Yosinski (2019), "Deconstructing lottery tickets": a winning ticket's mask
with every survivor set to ``sign(θ0) * σ`` (σ the layer's initialisation standard deviation)
trains nearly as well as the ticket itself. ``--scale`` multiplies σ.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from lottery_core import BranchContext, BranchStart


class SignedConstantOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(1.0, gt=0, description="Multiple of the layer's θ0 standard deviation.")


def signed_constant(ctx: BranchContext) -> BranchStart:
    """m_r kept; each layer's weights ``sign(θ0) * scale * std(θ0 of the layer)``; biases θ0."""
    scale = ctx.options.scale
    parameters = dict(ctx.initial)
    for layer in ctx.masks:
        name = f"{layer}.weight_orig"
        initial = ctx.initial[name]
        sign = torch.where(initial < 0, -1.0, 1.0).to(initial.dtype)
        parameters[name] = sign * scale * initial.std()
    return BranchStart(dict(ctx.masks), parameters)
