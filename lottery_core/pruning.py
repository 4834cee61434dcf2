"""One pruning step: the strategy's context, its scores or masks checked, the masks written.

Under IMP (``prune_at = "imp"``) round r prunes the survivors of round r-1's trained network by
one round's rates. Under ``prune_at = "init"`` round r starts again from the dense network at
θ0 and prunes it to the sparsity IMP would reach at round r (the same per-layer counts, or the
same total under global scope) in ``init_steps`` steps without training, each step's target on a
geometric path, as SynFlow's schedule; the survivors then train from θ0. Either way the
strategy sees a ``PruningContext`` built from what the checkpoint holds, so a resume or a
control gives it the same inputs as an uninterrupted run.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import guards, masks
from .config import ResolvedConfig
from .seeds import round_generator, step_generator
from .specs import DatasetSplits, PruningContext, PruningStrategy
from .state import RunState


@dataclass
class Pruner:
    """What a pruning step works on: the round loop's model and layers, and its plugins."""

    model: nn.Module
    layers: list[masks.PrunableLayer]
    config: ResolvedConfig
    seed: int
    data: DatasetSplits
    strategy: PruningStrategy
    who: str
    device: torch.device

    def rates(self) -> dict[str, float]:
        return masks.layer_rates(self.layers, *self.config.kind_rates())

    def parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())


GLOBAL = "*"


def targets(experiment: Pruner, round_index: int) -> dict[str, int]:
    """Survivors each layer (or ``GLOBAL``) keeps after this round's pruning."""
    layers, config = experiment.layers, experiment.config
    at_init = config.prune_at == "init"
    if config.scope == "global":
        alive = sum((layer.mask.numel() if at_init else int(layer.mask.sum())) for layer in layers)
        return {GLOBAL: masks.survivors_after(alive, config.rate, round_index if at_init else 1)}
    rates = experiment.rates()
    return {
        layer.name: masks.survivors_after(
            layer.mask.numel() if at_init else int(layer.mask.sum()),
            rates[layer.name],
            round_index if at_init else 1,
        )
        for layer in layers
    }


def _step_keep(
    start: dict[str, int], goal: dict[str, int], step: int, steps: int
) -> dict[str, int]:
    """Step ``step`` of ``steps`` on the geometric path from ``start`` to ``goal`` survivors."""
    keep = {}
    for name, first in start.items():
        last = goal[name]
        if step + 1 == steps or first == 0:
            keep[name] = last
        else:
            keep[name] = max(last, round(first * (last / first) ** ((step + 1) / steps)))
    return keep


def _alive(experiment: Pruner) -> dict[str, int]:
    counts = {layer.name: int(layer.mask.sum()) for layer in experiment.layers}
    if experiment.config.scope == "global":
        return {GLOBAL: sum(counts.values())}
    return counts


def prune_round(experiment: Pruner, state: RunState, round_index: int) -> None:
    """Prune for ``round_index`` in place (see the module docstring)."""
    config = experiment.config
    goal = targets(experiment, round_index)
    steps = 1
    if config.prune_at == "init":
        _load(experiment, state.initial_state, state.initial_buffers)
        masks.reset_masks(experiment.layers)
        steps = config.init_steps
    start = _alive(experiment)
    for step in range(steps):
        keep = _step_keep(start, goal, step, steps)
        _one_step(experiment, state, round_index, step, steps, keep)


@torch.no_grad()
def _load(
    experiment: Pruner, values: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]
) -> None:
    """θ0 into the model: its parameters, and its buffers that are not masks (BatchNorm's
    running statistics; none without BatchNorm)."""
    for name, parameter in experiment.parameters().items():
        parameter.copy_(values[name])
    for name, buffer in masks.state_buffers(experiment.model).items():
        if name in buffers:
            buffer.copy_(buffers[name])
    for layer in experiment.layers:
        masks.refresh_weight(layer)


def _one_step(
    experiment: Pruner,
    state: RunState,
    round_index: int,
    step: int,
    steps: int,
    keep: dict[str, int],
) -> None:
    layers, config = experiment.layers, experiment.config
    strategy = experiment.strategy
    who = experiment.who
    current = masks.current_masks(layers)
    alive = _alive(experiment)
    rates = {name: 1.0 - keep[name] / n if n else 0.0 for name, n in alive.items()}
    context = _context(experiment, state, round_index, step, steps, current, rates)
    model = experiment.model
    assert model is not None
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    try:
        if strategy.masks is not None:
            got = guards.call(who, "computing masks", strategy.masks, context)
            new = guards.check_masks(who, got, current)
        else:
            assert strategy.scores is not None
            if _legacy(strategy.scores):
                got = guards.call(
                    who, "scoring", strategy.scores, context.weights, context.generator
                )
            else:
                got = guards.call(who, "scoring", strategy.scores, context)
            scores = guards.check_layer_tensors(who, "scores", got, current, real=True)
            if config.scope == "global":
                new = masks.global_to_count(scores, current, keep[GLOBAL])
            else:
                new = masks.layerwise_to_counts(scores, current, keep)
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
        for parameter in model.parameters():
            parameter.grad = None
    masks.apply_masks(layers, new)


def _legacy(function) -> bool:
    """A ``scores(weights, generator)`` function of the first contract."""
    try:
        return len(inspect.signature(function).parameters) == 2
    except (TypeError, ValueError):
        return False


def _context(
    experiment: Pruner,
    state: RunState,
    round_index: int,
    step: int,
    steps: int,
    current: dict[str, torch.Tensor],
    rates: dict[str, float],
) -> PruningContext:
    layers = experiment.layers
    data = experiment.data
    seed = experiment.seed
    generator = (
        step_generator(seed, round_index, step, 0)
        if steps > 1
        else round_generator(seed, round_index)  # one step: the generator IMP always used
    )
    batch_size = experiment.config.batch_size
    assert batch_size is not None

    def batches(count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = step_generator(seed, round_index, step, 1)
        n = int(data.train_x.shape[0])
        for _ in range(count):
            index = torch.randperm(n, generator=order)[:batch_size].to(data.train_x.device)
            yield data.images(data.train_x[index]), data.train_y[index]

    def layer_values(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {layer.name: source[f"{layer.name}.weight_orig"].clone() for layer in layers}

    return PruningContext(
        model=experiment.model,
        masks=current,
        weights=masks.effective_weights(layers),
        initial=layer_values(state.initial_state),
        rewind=layer_values(state.rewind_state),
        round_index=round_index,
        step=step,
        steps=steps,
        config=experiment.config,
        scope=experiment.config.scope,
        rates=rates,
        kinds={layer.name: layer.kind for layer in layers},
        generator=generator,
        batches=batches,
        loss=F.cross_entropy,
        device=experiment.device,
    )
