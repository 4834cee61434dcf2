"""Built-in branch kinds: experiments on round r of a finished run (``lottery branch KIND``).

Each picks where one network starts from round r of the trunk; the core trains it with the
trunk's protocol. The controls of Frankle & Carbin (2019), the sanity checks of Frankle et al.
(2021), Zhou et al.'s (2019) sign-preserving reinitialisation and ticket transfer.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from lottery_core.errors import LotteryError
from lottery_core.hookspecs import hookimpl
from lottery_core.specs import BranchContext, BranchKind, BranchStart, Tensors


def _weights(name: str) -> str:
    """The parameter name of layer ``name``'s (pruned) weight."""
    return f"{name}.weight_orig"


def reinit(ctx: BranchContext) -> BranchStart:
    """Frankle & Carbin (2019), the random-reinitialisation control: the winning ticket's mask
    m_r kept bit for bit, every parameter drawn afresh from the model's own initialiser."""
    return BranchStart(dict(ctx.masks), ctx.fresh_parameters(ctx.generator))


def random_prune(ctx: BranchContext) -> BranchStart:
    """Frankle & Carbin (2019), the random-pruning control: in every layer a uniformly random
    mask with as many survivors as m_r, and the trunk's starting weights (θ0, or θk)."""
    new = {}
    for name, mask in ctx.masks.items():
        count = int(mask.sum().item())
        order = torch.randperm(mask.numel(), generator=ctx.generator)
        flat = torch.zeros(mask.numel())
        flat[order[:count]] = 1.0
        new[name] = flat.reshape(mask.shape)
    return BranchStart(new, dict(ctx.rewind))


def shuffle(ctx: BranchContext) -> BranchStart:
    """Frankle et al. (2021), "layerwise shuffling": m_r's entries permuted at random within each
    layer (its per-layer sparsity kept, its positions lost), with the trunk's starting weights."""
    new = {}
    for name, mask in ctx.masks.items():
        order = torch.randperm(mask.numel(), generator=ctx.generator)
        new[name] = mask.flatten()[order].reshape(mask.shape)
    return BranchStart(new, dict(ctx.rewind))


def sign_reinit(ctx: BranchContext) -> BranchStart:
    """Zhou et al. (2019), reinitialisation with the original signs: m_r kept, every weight a
    fresh magnitude from the model's initialiser with θ0's sign (a zero counts as positive);
    biases drawn afresh."""
    fresh = ctx.fresh_parameters(ctx.generator)
    layers = {_weights(name) for name in ctx.masks}
    parameters: Tensors = {}
    for name, value in fresh.items():
        if name in layers:
            sign = torch.where(ctx.initial[name] < 0, -1.0, 1.0).to(value.dtype)
            parameters[name] = value.abs() * sign
        else:
            parameters[name] = value
    return BranchStart(dict(ctx.masks), parameters)


def invert(ctx: BranchContext) -> BranchStart:
    """Frankle et al. (2021), score inversion, for trunks that prune at initialisation: round
    r's pruning done again with every score negated, so the lowest-scored weights survive (the
    same per-layer counts under layerwise scope, the same total under global); the trunk's
    starting weights."""
    inverted = ctx.repruned(lambda scores: {k: -v.double() for k, v in scores.items()})
    return BranchStart(inverted, dict(ctx.rewind))


class RetrainOptions(BaseModel):
    """What the ticket is trained with instead of the trunk's settings."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        None,
        description="Train on this dataset instead (transfer).",
        json_schema_extra={"plugin": "datasets"},
    )
    iterations: int | None = Field(None, ge=1, description="Training iterations.")
    lr: float | None = Field(None, gt=0, description="Learning rate.")
    batch_size: int | None = Field(None, ge=1, description="Minibatch size.")
    start: Literal["rewind", "init", "trained"] = Field(
        "rewind",
        description="Starting weights: rewind (θk, θ0 without rewinding), init (θ0) or trained "
        "(round r's trained weights: the trunk's last round, or any round with --keep-trained).",
    )


def retrain(ctx: BranchContext) -> BranchStart:
    """Ticket transfer (Morcos et al. 2019; OpenLTH's ``retrain`` branch): m_r with θ0, θk or
    round r's trained weights, trained on another dataset or with other training settings."""
    options: RetrainOptions = ctx.options
    if options.start == "trained":
        if ctx.trained is None:
            raise LotteryError(
                f"the trunk did not keep round {ctx.round_index}'s trained weights (only its "
                "last round's are in its checkpoint); run the trunk with --keep-trained"
            )
        parameters = dict(ctx.trained)
    else:
        parameters = dict(ctx.initial if options.start == "init" else ctx.rewind)
    changes = {
        key: value
        for key, value in options.model_dump(exclude={"start"}).items()
        if value is not None
    }
    return BranchStart(dict(ctx.masks), parameters, changes)


@hookimpl
def register_branches(register) -> None:
    register(BranchKind("reinit", reinit, description="m_r, a fresh init (the paper's control)"))
    register(
        BranchKind(
            "random-prune",
            random_prune,
            description="a random mask with m_r's count per layer, the trunk's θ0/θk (control)",
        )
    )
    register(BranchKind("shuffle", shuffle, description="m_r permuted within each layer"))
    register(
        BranchKind("sign-reinit", sign_reinit, description="m_r, fresh magnitudes, θ0's signs")
    )
    register(
        BranchKind("invert", invert, description="at-init trunks: keep the lowest-scored weights")
    )
    register(
        BranchKind(
            "retrain",
            retrain,
            RetrainOptions,
            "m_r and θ0/θk/trained weights on other data or settings (transfer)",
        )
    )
