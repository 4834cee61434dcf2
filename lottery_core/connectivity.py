"""Linear mode connectivity (Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and
the Lottery Ticket Hypothesis", ICML 2020): the straight path between two trained networks and
the rise in error along it.

Two networks W1 and W2 are compared on the points (1-α)W1 + αW2 for α evenly spaced from 0 to 1
(30 in the paper). The *barrier* (the paper's "instability") is the highest error on the path
minus the mean of the two ends' errors; the pair is *stable* when it is under 2 percentage
points. A subnetwork is *matching* when its accuracy is within 0.2 points of the dense
network's (Paul et al., ICLR 2023, use the same barrier between the trained solutions of
successive IMP rounds). Pure functions over states of one model, so the built-in ``stability``
branch kind and ``lottery stability --between-rounds`` share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensors = dict[str, torch.Tensor]

ALPHAS = 30  # points on the path, the paper's
STABLE_BELOW = 2.0  # percentage points of barrier: under it, stable
MATCHING_WITHIN = 0.2  # percentage points of accuracy below the dense network's: matching


def alphas(count: int = ALPHAS) -> list[float]:
    """``count`` evenly spaced α from 0 to 1, both ends included."""
    if count < 2:
        raise ValueError(f"a path needs at least 2 points (got {count})")
    return [float(a) for a in torch.linspace(0.0, 1.0, count, dtype=torch.float64)]


def interpolate(first: Tensors, second: Tensors, alpha: float) -> Tensors:
    """(1-α)·first + α·second, entry by entry; an integer entry (BatchNorm's batch count) is
    the first's. α = 0 and α = 1 give the ends exactly."""
    if set(first) != set(second):
        raise ValueError("the two states are not keyed alike")
    out: Tensors = {}
    for name, a in first.items():
        b = second[name]
        if not a.is_floating_point():
            out[name] = a.clone()
        elif alpha == 0.0:
            out[name] = a.clone()
        elif alpha == 1.0:
            out[name] = b.clone()
        else:
            out[name] = torch.lerp(a, b.to(a.dtype), alpha)
    return out


def path(first: Tensors, second: Tensors, count: int = ALPHAS) -> list[Tensors]:
    """The ``count`` states on the straight path from ``first`` to ``second``."""
    return [interpolate(first, second, a) for a in alphas(count)]


def barrier(errors: Sequence[float]) -> float:
    """The highest error on the path minus the mean of its two ends' errors (points of error
    when the errors are percentages): 0 when no point is worse than the ends' mean."""
    if len(errors) < 2:
        raise ValueError("a barrier needs the errors of at least the two ends")
    return float(max(errors) - (errors[0] + errors[-1]) / 2.0)


def stable(barrier_points: float) -> bool:
    """Frankle et al. (2020): stable when the barrier is under 2 percentage points."""
    return barrier_points < STABLE_BELOW


def matching(accuracy: float, dense_accuracy: float) -> bool:
    """Frankle et al. (2020): a subnetwork matches the dense network when its accuracy is no
    more than 0.2 percentage points below the dense network's."""
    return accuracy >= dense_accuracy - MATCHING_WITHIN


def distance(first: Tensors, second: Tensors) -> float:
    """The L2 distance between two states' floating-point entries (all of them, as one
    vector)."""
    total = torch.zeros((), dtype=torch.float64)
    for name, a in first.items():
        if a.is_floating_point():
            total += (a.double() - second[name].double()).pow(2).sum()
    return float(total.sqrt())


def function_state(state: Tensors, layer_masks: dict[str, torch.Tensor]) -> Tensors:
    """A pruned model's state (``weight_orig`` and, or without, ``weight_mask``) as the
    unpruned model's (``<layer>.weight`` = weight_orig x mask): the network's function,
    which two networks with different masks share a key set for."""
    out: Tensors = {}
    for name, value in state.items():
        if name.endswith(".weight_mask"):
            continue
        if name.endswith(".weight_orig"):
            layer = name[: -len(".weight_orig")]
            mask = layer_masks[layer].to(value.dtype)
            out[f"{layer}.weight"] = value * mask
        else:
            out[name] = value
    return out
