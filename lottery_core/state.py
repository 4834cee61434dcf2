"""The state of an experiment between rounds, and the seeds its random choices come from.

A round's random choices (pruning, reinitialisation, data order) are drawn from generators
derived from (seed, round), so nothing random has to be carried across a resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class RunState:
    """What an experiment needs to continue at ``next_round``.

    ``next_round`` rounds have trained; the model holds the last one's trained weights and
    masks (the next round starts by pruning them). ``masks[r]`` are the masks round r trained
    with; ``initial_state`` is θ0 and ``rewind_state`` θk (θ0 unless ``rewind_iter`` > 0).
    """

    next_round: int = 0
    records: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    masks: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    rewind_state: dict[str, torch.Tensor] = field(default_factory=dict)
    initial_state: dict[str, torch.Tensor] = field(default_factory=dict)

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
        )


def derive_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for initialisation, data order, pruning and reinitialisation."""
    values = np.random.SeedSequence(seed).generate_state(4, dtype=np.uint32)
    return dict(zip(("init", "data_order", "pruning", "reinit"), map(int, values), strict=True))


def round_generator(seed: int, round_index: int) -> torch.Generator:
    """A generator for one round's random choice: no state to carry across rounds or resumes."""
    return torch.Generator().manual_seed(seed * 10_007 + round_index)
