"""Pruning state, held in PyTorch's own re-parametrisation (``weight_orig`` + ``weight_mask``).

``prune.identity`` attaches the re-parametrisation once, before the first round; every later
round writes the new mask into ``weight_mask`` in place. The re-parametrisation is never removed
between rounds (``prune.remove`` would bake zeros in and let them be pruned again), and masks are
never stacked in a ``PruningContainer`` (which keeps a full copy each round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.utils import prune

from .errors import LotteryError
from .specs import LayerKind


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable weight: the module that owns it, its path in the model, and its kind."""

    name: str
    module: nn.Module
    kind: LayerKind

    @property
    def mask(self) -> torch.Tensor:
        return cast(torch.Tensor, self.module.weight_mask)

    @property
    def weight_orig(self) -> nn.Parameter:
        return cast(nn.Parameter, self.module.weight_orig)

    @property
    def weight(self) -> torch.Tensor:
        """The effective (masked) weight the forward pass uses."""
        return cast(torch.Tensor, self.module.weight)


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """Every ``nn.Conv2d`` and ``nn.Linear`` weight; the last ``nn.Linear`` is the output layer.

    Biases are never pruned.
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not found:
        raise LotteryError("the model has no nn.Linear or nn.Conv2d layer to prune")
    last_fc = max((i for i, (_, m) in enumerate(found) if isinstance(m, nn.Linear)), default=-1)
    layers = []
    for i, (name, module) in enumerate(found):
        kind: LayerKind = "conv" if isinstance(module, nn.Conv2d) else "fc"
        if i == last_fc:
            kind = "output"
        layers.append(PrunableLayer(name, module, kind))
    return layers


def state_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's buffers other than the masks, live, by ``named_buffers()`` name: BatchNorm's
    ``running_mean``, ``running_var`` and ``num_batches_tracked``; none for a model without
    BatchNorm. Part of θ0 and θk, so rewinding restores them; never pruned."""
    return {
        name: buffer
        for name, buffer in model.named_buffers()
        if name.rsplit(".", 1)[-1] != "weight_mask"
    }


def attach_masks(layers: list[PrunableLayer]) -> None:
    """Turn each ``weight`` into ``weight_orig`` * ``weight_mask`` with an all-ones mask."""
    for layer in layers:
        if not prune.is_pruned(layer.module):
            prune.identity(layer.module, "weight")


def layer_rates(
    layers: list[PrunableLayer], fc_rate: float, conv_rate: float, output_rate: float
) -> dict[str, float]:
    """The per-round pruning fraction of each layer's survivors, by layer kind."""
    by_kind = {"fc": fc_rate, "conv": conv_rate, "output": output_rate}
    return {layer.name: by_kind[layer.kind] for layer in layers}


def prune_count(rate: float, survivors: int) -> int:
    """How many of ``survivors`` a fraction removes, rounded as ``torch.nn.utils.prune`` does."""
    return round(rate * survivors)


def _lowest(scores: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices of the ``count`` lowest-scoring surviving entries."""
    flat = scores.detach().flatten().to(torch.float64)
    flat = torch.where(mask.flatten() > 0, flat, torch.full_like(flat, float("inf")))
    return torch.topk(flat, count, largest=False, sorted=False).indices


def survivors_after(alive: int, rate: float, rounds: int) -> int:
    """Survivors of ``alive`` after ``rounds`` prunings at ``rate``, rounded each time as IMP
    rounds them: the sparsity pruning at init targets for a round."""
    for _ in range(rounds):
        alive -= prune_count(rate, alive)
    return alive


def layerwise_to_counts(
    scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], keep: dict[str, int]
) -> dict[str, torch.Tensor]:
    """Each layer keeps its ``keep[name]`` highest-scoring survivors."""
    new_masks = {}
    for name, mask in masks.items():
        count = int(mask.sum().item()) - keep[name]
        new = mask.clone()
        if count > 0:
            new.view(-1)[_lowest(scores[name], mask, count)] = 0
        new_masks[name] = new
    return new_masks


def global_to_count(
    scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], keep: int
) -> dict[str, torch.Tensor]:
    """All layers ranked together: the ``keep`` highest-scoring survivors overall stay."""
    names = list(masks)
    flat_scores = torch.cat([scores[n].detach().flatten().to(torch.float64) for n in names])
    flat_mask = torch.cat([masks[n].flatten() for n in names])
    count = int(flat_mask.sum().item()) - keep
    new_flat = flat_mask.clone()
    if count > 0:
        new_flat[_lowest(flat_scores, flat_mask, count)] = 0
    new_masks, start = {}, 0
    for n in names:
        size = masks[n].numel()
        new_masks[n] = new_flat[start : start + size].view_as(masks[n])
        start += size
    return new_masks


def layerwise_masks(
    scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], rates: dict[str, float]
) -> dict[str, torch.Tensor]:
    """Each layer loses ``rate`` of its own survivors: the lowest-scoring ones."""
    keep = {}
    for name, mask in masks.items():
        alive = int(mask.sum().item())
        keep[name] = alive - prune_count(rates[name], alive)
    return layerwise_to_counts(scores, masks, keep)


def global_masks(
    scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], rate: float
) -> dict[str, torch.Tensor]:
    """All layers ranked together: the ``rate`` lowest-scoring survivors overall are pruned."""
    alive = int(sum(int(m.sum().item()) for m in masks.values()))
    return global_to_count(scores, masks, alive - prune_count(rate, alive))


def current_masks(layers: list[PrunableLayer]) -> dict[str, torch.Tensor]:
    return {layer.name: layer.mask.detach().clone() for layer in layers}


def effective_weights(layers: list[PrunableLayer]) -> dict[str, torch.Tensor]:
    """``weight_orig * weight_mask``: what the network actually computes with."""
    return {layer.name: (layer.weight_orig * layer.mask).detach() for layer in layers}


@torch.no_grad()
def apply_masks(layers: list[PrunableLayer], new_masks: dict[str, torch.Tensor]) -> None:
    """Write new masks into ``weight_mask`` in place, refusing any mask that regains a one."""
    for layer in layers:
        new = new_masks[layer.name].to(layer.mask.dtype)
        if bool((new > layer.mask).any()):
            raise RuntimeError(f"invariant broken: the mask of layer {layer.name} regained a one")
        layer.mask.copy_(new)
        refresh_weight(layer)


@torch.no_grad()
def reset_masks(layers: list[PrunableLayer]) -> None:
    """All ones again: pruning at init computes each round's mask from the dense network."""
    for layer in layers:
        layer.mask.fill_(1)
        refresh_weight(layer)


@torch.no_grad()
def refresh_weight(layer: PrunableLayer) -> None:
    """Recompute ``weight`` now, as the forward pre-hook would, so it is never stale."""
    layer.module.weight = layer.weight_orig * layer.mask


def remaining_counts(layers: list[PrunableLayer]) -> dict[str, tuple[int, int]]:
    """(surviving, total) weights per layer; biases are not counted."""
    return {layer.name: (int(layer.mask.sum().item()), layer.mask.numel()) for layer in layers}


def remaining_percent(layers: list[PrunableLayer]) -> float:
    """Surviving prunable weights as a percentage of all prunable weights."""
    counts = remaining_counts(layers).values()
    return 100.0 * sum(k for k, _ in counts) / sum(t for _, t in counts)


def check_pruned_are_zero(layers: list[PrunableLayer]) -> None:
    """Invariant: every pruned entry of the effective weight is exactly zero."""
    for layer in layers:
        refresh_weight(layer)
        if bool((layer.weight[layer.mask == 0] != 0).any()):
            raise RuntimeError(f"invariant broken: a pruned weight of {layer.name} is nonzero")
