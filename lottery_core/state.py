"""The state of an experiment between rounds: what a checkpoint holds besides the model.

Nothing random is in it: every random choice is drawn from a stream of ``seeds``, derived from
(seed, round), so nothing random has to be carried across a resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RunState:
    """What an experiment needs to continue at ``next_round``.

    ``next_round`` rounds have trained; the model holds the last one's trained weights and
    masks (the next round starts by pruning them). ``masks[r]`` are the masks round r trained
    with; ``initial_state`` is θ0 and ``rewind_state`` θk (θ0 unless ``rewind_iter`` > 0),
    by parameter name; ``initial_buffers`` and ``rewind_buffers`` are the buffers that are not
    masks (BatchNorm's running statistics) at those points, by buffer name (empty for a model
    without BatchNorm).
    """

    next_round: int = 0
    records: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    masks: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    rewind_state: dict[str, torch.Tensor] = field(default_factory=dict)
    initial_state: dict[str, torch.Tensor] = field(default_factory=dict)
    rewind_buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    initial_buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def copy(self) -> RunState:
        """An independent copy (tables and rewind weights), e.g. for a control to branch from."""
        return RunState(
            next_round=self.next_round,
            records=[dict(r) for r in self.records],
            history=[dict(r) for r in self.history],
            layers=[dict(r) for r in self.layers],
            masks=dict(self.masks),
            rewind_state={k: v.clone() for k, v in self.rewind_state.items()},
            initial_state=self.initial_state,
            rewind_buffers={k: v.clone() for k, v in self.rewind_buffers.items()},
            initial_buffers=self.initial_buffers,
        )
