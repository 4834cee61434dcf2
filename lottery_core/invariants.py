"""The round loop's invariants, checked whoever changed the model: one line naming the culprit.

- masks never regain a one: under IMP each round's masks are a subset of the previous
  round's recorded ones (``check_monotone``);
- nothing changes the masks while a round trains or is recorded (``check_unchanged``);
- a policy that declares ``rewinds`` leaves every survivor and bias at its rewind value
  (``check_rewound``), and the buffers that are not masks (BatchNorm's running statistics) at
  theirs (``check_rewound_buffers``);
- pruned weights are zero after reinitialisation (``masks.check_pruned_are_zero``).
"""

from __future__ import annotations

import torch

from . import masks
from .errors import PluginError


def check_monotone(
    layers: list[masks.PrunableLayer],
    previous: dict[str, torch.Tensor] | None,
    round_index: int,
) -> None:
    """No mask regained a one since ``previous`` (the masks round ``round_index - 1`` trained
    with; ``None`` for the first round or a method that prunes afresh at θ0)."""
    if previous is None:
        return
    for layer in layers:
        if bool((layer.mask.bool().cpu() & ~previous[layer.name]).any()):
            raise PluginError(
                f"the mask of layer {layer.name} regained a one between rounds "
                f"{round_index - 1} and {round_index}: a plugin wrote weight_mask; masks "
                "never regain a one"
            )


def check_unchanged(
    layers: list[masks.PrunableLayer], trained_with: dict[str, torch.Tensor], round_index: int
) -> None:
    """No hook may change the masks while a round trains or is recorded."""
    for layer in layers:
        if not torch.equal(layer.mask, trained_with[layer.name]):
            raise PluginError(
                f"the mask of layer {layer.name} changed while round {round_index} trained: "
                "a plugin hook wrote weight_mask; lifecycle hooks must not change the model"
            )


def check_rewound(
    parameters: dict[str, torch.Tensor],
    rewind_state: dict[str, torch.Tensor],
    layers: list[masks.PrunableLayer],
    who: str = "the reinit policy",
) -> None:
    """Invariant of a policy that declares ``rewinds``: right after it ran, every survivor and
    bias equals its rewind value."""
    mask_of = {f"{layer.name}.weight_orig": layer.mask for layer in layers}
    for name, value in parameters.items():
        expected = rewind_state[name]
        survivors = (
            mask_of[name] > 0 if name in mask_of else torch.ones_like(value, dtype=torch.bool)
        )
        if not torch.equal(value.detach()[survivors], expected[survivors]):
            raise PluginError(
                f"{who} declares rewinds=True, but {name} differs from its rewind value"
            )


def check_rewound_buffers(
    buffers: dict[str, torch.Tensor],
    rewind_buffers: dict[str, torch.Tensor],
    who: str = "the reinit policy",
) -> None:
    """Invariant of a policy that declares ``rewinds``: right after it ran, every buffer that is
    not a mask (BatchNorm's running statistics) equals its value at the rewind point."""
    for name, value in buffers.items():
        expected = rewind_buffers.get(name)
        if expected is not None and not torch.equal(value, expected):
            raise PluginError(
                f"{who} declares rewinds=True, but buffer {name} differs from its rewind value"
            )
