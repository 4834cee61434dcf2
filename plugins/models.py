"""The paper's architectures: LeNet-300-100, LeNet-5 and Conv-2/4/6.

Each model takes its input shape and class count from the dataset, so every model runs on every
dataset, and brings the paper's training defaults (PAPER.md) with it.
"""

from __future__ import annotations

import math

from torch import nn

from lottery_core.hookspecs import hookimpl
from lottery_core.specs import ModelDefaults, ModelSpec

Shape = tuple[int, int, int]


def lenet_fc(input_shape: Shape, num_classes: int) -> nn.Module:
    """LeNet-300-100: two hidden fully connected layers."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def lenet_conv(input_shape: Shape, num_classes: int) -> nn.Module:
    """LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, 84, classes."""
    channels, height, width = input_shape
    side_h, side_w = (height - 4) // 2, (width - 4) // 2
    side_h, side_w = (side_h - 4) // 2, (side_w - 4) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side_h * side_w, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def vgg_like(blocks: list[int]):
    """Conv-2/4/6: pairs of 3x3 convolutions (padding 1) each followed by a 2x2 max-pool."""

    def build(input_shape: Shape, num_classes: int) -> nn.Module:
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for width_out in blocks:
            layers += [nn.Conv2d(channels, width_out, 3, padding=1), nn.ReLU()]
            layers += [nn.Conv2d(width_out, width_out, 3, padding=1), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            channels, height, width = width_out, height // 2, width // 2
        layers += [
            nn.Flatten(),
            nn.Linear(channels * height * width, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        ]
        return nn.Sequential(*layers)

    return build


@hookimpl
def register_models(register) -> None:
    register(
        ModelSpec(
            "lenet_fc",
            lenet_fc,
            ModelDefaults(dataset="mnist", iterations=50_000, lr=1.2e-3, fc_rate=0.2),
            description="LeNet-300-100 (fc 300, 100, classes)",
        )
    )
    register(
        ModelSpec(
            "lenet_conv",
            lenet_conv,
            ModelDefaults(dataset="mnist", iterations=50_000, lr=1.2e-3, conv_rate=0.1),
            description="LeNet-5 (conv 6@5x5, pool, conv 16@5x5, pool, fc 120, 84, classes)",
        )
    )
    paper = {
        "conv2": ([64], 20_000, 2e-4, 0.10),
        "conv4": ([64, 128], 25_000, 3e-4, 0.10),
        "conv6": ([64, 128, 256], 30_000, 3e-4, 0.15),
    }
    for name, (blocks, iterations, lr, conv_rate) in paper.items():
        register(
            ModelSpec(
                name,
                vgg_like(blocks),
                ModelDefaults(
                    dataset="cifar10",
                    iterations=iterations,
                    lr=lr,
                    conv_rate=conv_rate,
                    fc_rate=0.2,
                    rounds=20,
                ),
                description=f"{name.capitalize()}: conv blocks {blocks}, fc 256, 256, classes",
            )
        )
