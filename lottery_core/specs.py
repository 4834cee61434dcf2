"""The value types plugins register and the core consumes.

Plugins hand the core one of these objects through a registration hook; the core never imports a
plugin module by path. Each type is a small frozen dataclass so a plugin is just data plus a
function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class DataRequest:
    """What the core asks of a dataset plugin."""

    data_dir: Path
    seed: int
    validation_size: int = 5000
    download: bool = True


@dataclass
class DatasetSplits:
    """A dataset held in memory as tensors, ready to be indexed by batch.

    Images are float32 ``N x C x H x W`` and already normalised; labels are int64. ``source``
    says where the data came from (written to ``config.json``) so a sample is never mistaken for
    the full dataset.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str
    name: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> DatasetSplits:
        """Move every tensor to ``device`` once, so the training loop never copies per step."""
        moved = {
            k: getattr(self, k).to(device)
            for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return DatasetSplits(
            **moved, num_classes=self.num_classes, source=self.source, name=self.name
        )


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset. ``load`` reads (or downloads) it and returns in-memory splits."""

    name: str
    load: Callable[[DataRequest], DatasetSplits]
    description: str = ""


@dataclass(frozen=True)
class ModelDefaults:
    """Hyperparameters a model brings with it (the paper's, where the paper has them).

    ``fc_rate`` and ``conv_rate`` are the fractions of surviving weights pruned each round in
    fully connected and convolutional layers; the output layer is pruned at ``fc_rate *
    output_rate_factor``.
    """

    dataset: str | None = None  # the dataset a run uses when none is given
    iterations: int = 50_000
    batch_size: int = 60
    lr: float = 1.2e-3
    fc_rate: float = 0.2
    conv_rate: float = 0.1
    output_rate_factor: float = 0.5
    rounds: int = 19


def glorot_init(model: nn.Module, generator: torch.Generator) -> None:
    """Gaussian Glorot (Xavier normal) weights and zero biases, drawn from ``generator``."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class ModelSpec:
    """A named architecture.

    ``build(input_shape, num_classes)`` returns an untrained module; ``init(model, generator)``
    draws its initial weights. Every ``nn.Linear`` and ``nn.Conv2d`` weight is prunable; the last
    ``nn.Linear`` is the output layer.
    """

    name: str
    build: Callable[[tuple[int, int, int], int], nn.Module]
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    init: Callable[[nn.Module, torch.Generator], None] = glorot_init
    description: str = ""


@dataclass(frozen=True)
class PruningStrategy:
    """A named way to rank weights.

    ``scores(weights, generator)`` receives the effective (masked, trained) weight of every
    prunable layer and returns a same-shaped importance score for each; the core prunes the
    lowest-scoring survivors through ``torch.nn.utils.prune``. Scores of already-pruned entries
    are ignored.
    """

    name: str
    scores: Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]
    description: str = ""


@dataclass
class ReinitContext:
    """What a reinitialisation policy may read and write between rounds.

    ``parameters`` are the live trainable tensors keyed by ``named_parameters()`` names (pruned
    weights appear as ``<layer>.weight_orig``); ``rewind_state`` holds their values at the rewind
    point; ``fresh_parameters(generator)`` draws a new initialisation of the same distribution,
    keyed the same way.
    """

    parameters: dict[str, torch.Tensor]
    rewind_state: dict[str, torch.Tensor]
    fresh_parameters: Callable[[torch.Generator], dict[str, torch.Tensor]]
    generator: torch.Generator
    round_index: int


@dataclass(frozen=True)
class ReinitPolicy:
    """A named way to set the surviving weights before the next round trains."""

    name: str
    apply: Callable[[ReinitContext], None]
    description: str = ""
    rewinds: bool = False
    """True if the policy sets every survivor and bias to its rewind value exactly: the core then
    checks that invariant after every reinitialisation, and exported tickets need no caveat."""
