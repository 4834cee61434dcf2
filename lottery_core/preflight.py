"""What can be known before a run trains, checked before its folder exists.

A run whose data, batch size or model cannot work is refused with one line naming the plugin
(or the flag) before anything is written: the data loads, a batch fits in it, and the model has
a prunable layer and gives ``(N, num_classes)`` logits on the data's input shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import guards, masks
from .errors import LotteryError, PluginError

if TYPE_CHECKING:
    from .experiment import Experiment


def validate(experiment: Experiment) -> None:
    """What can be known before training: the data loads, a batch fits in it, and the model
    has a prunable layer and runs on the data's input shape."""
    data = experiment.data
    n = int(data.train_x.shape[0])
    if experiment.config.batch_size > n:
        raise LotteryError(
            f"--batch-size {experiment.config.batch_size} is larger than the {n} training "
            f"examples of {experiment.config.dataset!r}"
        )
    who = experiment.plugins.models.who(experiment.config.model)
    with guards.blame(who, f"building for input shape {tuple(data.input_shape)}"):
        model = experiment.fresh_model(experiment.seeds["init"])
    try:
        masks.prunable_layers(model)
    except LotteryError as exc:
        raise PluginError(f"{who}: {exc}") from None
    try:
        with torch.no_grad():
            out = model.eval()(data.images(data.train_x[:2]))
    except Exception as exc:  # a model that cannot take this input: name both
        raise PluginError(
            f"{who} does not run on dataset {experiment.config.dataset!r} (input shape "
            f"{tuple(data.input_shape)}): {guards.describe_error(exc)}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, data.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PluginError(
            f"{who} returns {shape} for 2 inputs of dataset {experiment.config.dataset!r}; "
            f"expected (2, {data.num_classes}) logits"
        )
