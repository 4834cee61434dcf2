"""Built-in branch kinds: experiments on round r of a finished run (``lottery branch KIND``).

Each picks where one network starts from round r of the trunk; the core trains it with the
trunk's protocol. The controls of Frankle & Carbin (2019), the sanity checks of Frankle et al.
(2021), Zhou et al.'s (2019) sign-preserving reinitialisation and ticket transfer.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lottery_core import connectivity
from lottery_core.errors import LotteryError
from lottery_core.hookspecs import hookimpl
from lottery_core.specs import AnalysisContext, BranchContext, BranchKind, BranchStart, Tensors


def _weights(name: str) -> str:
    """The parameter name of layer ``name``'s (pruned) weight."""
    return f"{name}.weight_orig"


def reinit(ctx: BranchContext) -> BranchStart:
    """Frankle & Carbin (2019), the random-reinitialisation control: the winning ticket's mask
    m_r kept bit for bit, every parameter drawn afresh from the model's own initialiser."""
    return BranchStart(dict(ctx.masks), ctx.fresh_parameters(ctx.generator))


def _random_masks(masks: Tensors, generator: torch.Generator) -> Tensors:
    """In every layer a uniformly random mask with as many survivors as ``masks``'."""
    new = {}
    for name, mask in masks.items():
        count = int(mask.sum().item())
        order = torch.randperm(mask.numel(), generator=generator)
        flat = torch.zeros(mask.numel())
        flat[order[:count]] = 1.0
        new[name] = flat.reshape(mask.shape)
    return new


def random_prune(ctx: BranchContext) -> BranchStart:
    """Frankle & Carbin (2019), the random-pruning control: in every layer a uniformly random
    mask with as many survivors as m_r, and the trunk's starting weights (θ0, or θk)."""
    return BranchStart(_random_masks(ctx.masks, ctx.generator), dict(ctx.rewind))


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


class StabilityOptions(BaseModel):
    """Where the copies start, and how finely the path between them is evaluated."""

    model_config = ConfigDict(extra="forbid")

    k: str = Field(
        "0",
        description="The iteration the copies start from (500, 500it, 2ep): the dense "
        "network's weights there, replayed with the trunk's data order, under round r's mask; "
        "they train from k to the trunk's last iteration.",
    )
    control: Literal["none", "reinit", "random-prune"] = Field(
        "none",
        description="Test a control instead of the ticket: reinit (m_r, a fresh init trained "
        "to k) or random-prune (a random mask with m_r's counts, the weights at k).",
    )
    alphas: int = Field(
        connectivity.ALPHAS, ge=2, le=1000, description="Evenly spaced points on the path."
    )

    @field_validator("k", mode="before")
    @classmethod
    def _steps(cls, value: object) -> str:
        """``500``, ``"500"`` and ``" 500 "`` alike (one folder for one k); ``"2EP"`` as
        ``"2ep"``; the value is checked against the trunk when the branch starts."""
        return "".join(str(value).split()).lower()


def stability(ctx: BranchContext) -> BranchStart:
    """Frankle et al. (2020), instability analysis: a copy of round r's subnetwork at iteration
    k (m_r and the dense network's weights W_k) trained from k to T. Every trial of a round
    starts from the same weights (controls draw from the round's generator, not the trial's),
    so copies differ only in their data order (SGD noise); ``analyse`` compares them."""
    options: StabilityOptions = ctx.options
    k = ctx.iterations_of(options.k)
    layer_masks = dict(ctx.masks)
    if options.control == "reinit":
        weights = ctx.weights_at(k, ctx.fresh_parameters(ctx.round_generator))
    else:
        weights = ctx.weights_at(k, None)
    if options.control == "random-prune":
        layer_masks = _random_masks(ctx.masks, ctx.round_generator)
    return BranchStart(layer_masks, weights, start_iteration=k)


def stability_analysis(ctx: AnalysisContext) -> dict[str, list[dict]]:
    """Frankle et al. (2020): for each pair of trained copies, the error along the linear path
    (1-α)W1 + αW2 at ``alphas`` points on the test set and on the training subset; the barrier
    (highest error minus the mean of the ends'), stable when under 2 points; matching when
    the copies' mean final test accuracy is within 0.2 points of the dense network's (the
    trunk's round 0); and the L2 distance between the copies."""
    options: StabilityOptions = ctx.options
    grid = connectivity.alphas(options.alphas)
    dense = next(row for row in ctx.trunk_rows if int(row["round"]) == 0)
    first = ctx.rows[0]
    start_at = int(ctx.config.iterations) - int(first["iterations"])  # k: trained from k to T
    summary, curve = [], []
    count = len(ctx.states)
    for i in range(count):
        for j in range(i + 1, count):
            points = connectivity.path(ctx.states[i], ctx.states[j], options.alphas)
            row: dict = {
                "round": ctx.round_index,
                "remaining": float(first["remaining"]),
                "k": start_at,
                "control": options.control,
                "pair": f"{i}-{j}",
            }
            for split in ("test", "train"):
                results = ctx.evaluate(points, split)
                errors = [100.0 - accuracy for _, accuracy in results]
                row[f"{split}_barrier"] = connectivity.barrier(errors)
                row[f"{split}_error_ends"] = (errors[0] + errors[-1]) / 2.0
                row[f"{split}_error_max"] = max(errors)
                for alpha, error, (loss, _) in zip(grid, errors, results, strict=True):
                    curve.append({"round": ctx.round_index, "k": start_at,
                                  "control": options.control, "pair": f"{i}-{j}",
                                  "split": split, "alpha": alpha, "error": error,
                                  "loss": loss})  # fmt: skip
            accuracy = (float(ctx.rows[i]["final_test"]) + float(ctx.rows[j]["final_test"])) / 2
            row["final_test"] = accuracy
            row["dense_final_test"] = float(dense["final_test"])
            row["stable"] = connectivity.stable(row["test_barrier"])
            row["matching"] = connectivity.matching(accuracy, float(dense["final_test"]))
            row["distance"] = connectivity.distance(ctx.states[i], ctx.states[j])
            summary.append(row)
    return {"stability": summary, "stability_path": curve}


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
    register(
        BranchKind(
            "stability",
            stability,
            StabilityOptions,
            "copies of m_r at iteration k, differing in data order; the linear path between "
            "them (Frankle et al. 2020)",
            analyse=stability_analysis,
            min_trials=2,
        )
    )
