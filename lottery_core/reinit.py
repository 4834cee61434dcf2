"""One reinitialisation step: the policy's context, its writes checked, the survivors reset.

Every round after the dense one resets the survivors of its pruning before training: the
policy (``rewind`` to θ0 or θk, ``random``, ``none`` or a plugin's) gets a ``ReinitContext``
built from what the checkpoint holds, so a resume or a control gives it the same inputs as an
uninterrupted run. It writes ``ctx.parameters`` in place or rebinds their ``.data`` to values
of the same dtype and shape, which are then copied in (``guards.check_reinit``); the round's
invariants (``invariants``) are checked after it.

Buffers that are not masks (BatchNorm's running statistics) are part of the starting state: for
a policy that declares ``rewinds`` the core sets them to the rewind point's before the policy
runs (so a rewinding policy written before they existed rewinds them too), and checks them
after; any other policy finds them as training left them, live in ``ctx.buffers``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import guards, invariants, masks
from .seeds import round_generator
from .specs import ReinitContext, ReinitPolicy
from .state import RunState


@dataclass
class Reinitialiser:
    """What a reinitialisation step works on: the round loop's model, layers and policy."""

    model: nn.Module
    layers: list[masks.PrunableLayer]
    seed: int  # the run's reinit stream (``seeds``)
    policy: ReinitPolicy
    who: str
    fresh_parameters: Callable[[torch.Generator], dict[str, torch.Tensor]]

    def parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    def buffers(self) -> dict[str, torch.Tensor]:
        return masks.state_buffers(self.model)


def _context(
    step: Reinitialiser, state: RunState, round_index: int, given: dict[str, torch.Tensor]
) -> ReinitContext:
    layers = step.layers
    return ReinitContext(
        parameters=dict(given),
        rewind_state=state.rewind_state,
        fresh_parameters=step.fresh_parameters,
        generator=round_generator(step.seed, round_index),
        round_index=round_index,
        initial_state=state.initial_state,
        masks=masks.current_masks(layers),
        kinds={layer.name: layer.kind for layer in layers},
        buffers={k: v.data for k, v in step.buffers().items()},
        rewind_buffers=state.rewind_buffers,
        initial_buffers=state.initial_buffers,
    )


def reinit_round(step: Reinitialiser, state: RunState, round_index: int) -> None:
    """Set the survivors' starting values for ``round_index`` in place (module docstring)."""
    if step.policy.rewinds:
        _rewind_buffers(step, state)
    live = step.parameters()
    given = {k: v.data for k, v in live.items()}
    context = _context(step, state, round_index, given)
    survivors = {f"{name}.weight_orig": mask for name, mask in context.masks.items()}
    handed = {k: guards.where(v) for k, v in given.items()}
    returned = guards.call(
        step.who, f"reinitialising round {round_index}", step.policy.apply, context
    )
    guards.check_reinit(step.who, returned, given, handed, context.parameters, live, survivors)
    for layer in step.layers:
        masks.refresh_weight(layer)
    masks.check_pruned_are_zero(step.layers)
    if step.policy.rewinds:
        invariants.check_rewound(step.parameters(), state.rewind_state, step.layers, step.who)
        invariants.check_rewound_buffers(step.buffers(), state.rewind_buffers, step.who)


@torch.no_grad()
def _rewind_buffers(step: Reinitialiser, state: RunState) -> None:
    """The buffers that are not masks back to the rewind point (θ0's or θk's)."""
    for name, buffer in step.buffers().items():
        if name in state.rewind_buffers:
            buffer.copy_(state.rewind_buffers[name])
