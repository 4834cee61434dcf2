"""Many states of one model evaluated together: the points of a linear path (or several
networks) go through the model as one batched forward per chunk of data, not one pass each.

``torch.func.functional_call`` runs the unpruned model with a state's parameters and buffers,
and ``torch.func.vmap`` maps it over states stacked along a new leading axis, so a chunk of
images is read once for all of them and every layer is one batched kernel. The sums follow
``training.evaluate``: each chunk's loss summed in float32, the chunks in float64, in order; a
batched matrix product may add in another order than a single one, so a loss can differ from
the one-at-a-time figure in its last float32 bits (``tests/test_stability.py`` checks the
accuracy exactly and the loss to 1e-6 relative, well past the printed digits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .training import EVAL_CHUNK

Tensors = dict[str, torch.Tensor]

GROUP = 16  # states per batched forward: bounds the activations held at once


@torch.inference_mode()
def evaluate_states(
    model: nn.Module,
    states: Sequence[Tensors],
    x: torch.Tensor,
    y: torch.Tensor,
    images: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    group: int = GROUP,
) -> list[tuple[float, float]]:
    """``(mean cross-entropy, accuracy %)`` of ``model`` with each of ``states`` (keyed like
    ``model.state_dict()``) over the split ``x``, ``y``; ``images`` turns stored rows into
    model input. ``model`` is used in eval mode and left as it was."""
    if not states:
        return []
    was_training = model.training
    model.eval()
    device = x.device
    try:
        out: list[tuple[float, float]] = []
        for begin in range(0, len(states), group):
            chunk_states = states[begin : begin + group]
            stacked = {
                name: torch.stack([s[name].to(device) for s in chunk_states])
                for name in chunk_states[0]
            }
            out.extend(_evaluate_group(model, stacked, len(chunk_states), x, y, images))
        return out
    finally:
        model.train(was_training)


def _evaluate_group(
    model: nn.Module,
    stacked: Tensors,
    count: int,
    x: torch.Tensor,
    y: torch.Tensor,
    images: Callable[[torch.Tensor], torch.Tensor],
) -> list[tuple[float, float]]:
    def one(state: Tensors, batch: torch.Tensor) -> torch.Tensor:
        return functional_call(model, state, (batch,))

    forward = vmap(one, in_dims=(0, None))
    loss_sum = torch.zeros(count, dtype=torch.float64, device=x.device)
    correct = torch.zeros(count, dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], EVAL_CHUNK):
        logits = forward(stacked, images(x[start : start + EVAL_CHUNK]))  # states x rows x C
        target = y[start : start + EVAL_CHUNK]
        for index in range(count):  # torch's own sum per state, as training.evaluate's
            loss_sum[index] += F.cross_entropy(logits[index], target, reduction="sum").double()
        correct += (logits.argmax(dim=2) == target.unsqueeze(0)).sum(dim=1)
    n = x.shape[0]
    return [
        (float(loss_sum[i]) / n, 100.0 * float(correct[i]) / n) for i in range(count)
    ]
