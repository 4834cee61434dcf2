"""The paper's architectures: LeNet-300-100, LeNet-5 and Conv-2/4/6; OpenLTH's CIFAR-10
ResNets (``cifar_resnet_D[_W]``) and VGGs with BatchNorm (``cifar_vgg_{11,13,16,19}``).

Each model takes its input shape and class count from the dataset, so every model runs on every
dataset, and brings its training defaults with it: the paper's (PAPER.md) for the paper's
models, which train without data augmentation unless asked (``--augment``), as every earlier
run of them did; OpenLTH's whole recipe (SGD, momentum, weight decay, step schedule, 160
epochs, the dataset's augmentation: CIFAR-10's crop and flip) for OpenLTH's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


# -- OpenLTH's CIFAR-10 models (facebookresearch/open_lth: models/cifar_resnet.py, cifar_vgg.py) --


class ResNetBlock(nn.Module):
    """Two 3x3 convolutions (no bias), each followed by BatchNorm, around a shortcut: the
    identity, or a strided 1x1 convolution and BatchNorm where the shape changes."""

    def __init__(self, f_in: int, f_out: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = nn.Sequential()
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), nn.BatchNorm2d(f_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """OpenLTH's ``cifar_resnet_D_W``: a 3x3 convolution to W channels and BatchNorm, three
    stages of (D - 2) / 6 blocks at widths W, 2W, 4W (the first block of stages 2 and 3 halves
    the resolution), global average pooling and a linear output layer."""

    def __init__(self, depth: int, width: int, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"a CIFAR ResNet's depth is 6n + 2 with n >= 1, not {depth}")
        per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(input_shape[0], width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks: list[nn.Module] = []
        current = width
        for stage, filters in enumerate((width, 2 * width, 4 * width)):
            for index in range(per_stage):
                blocks.append(ResNetBlock(current, filters, stage > 0 and index == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(current, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        # OpenLTH pools over the whole feature map (a kernel of its width): global average
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


VGG_PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512],
}  # fmt: skip


class VGGConv(nn.Module):
    """A 3x3 convolution (with bias), BatchNorm and ReLU."""

    def __init__(self, f_in: int, f_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """OpenLTH's ``cifar_vgg_N``: its plan of 3x3 convolutions with BatchNorm and 2x2
    max-pools ("M"), average pooling and a linear output layer from 512 channels."""

    def __init__(self, plan: list[int | str], input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(VGGConv(channels, int(spec)))
                channels = int(spec)
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # OpenLTH's 2x2 average pool, which on CIFAR's 2x2 maps is the global one; global here,
        # so the model runs on 28x28 images too
        return self.fc(F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1))


def resnet(depth: int, width: int = 16):
    def build(input_shape: Shape, num_classes: int) -> nn.Module:
        return CifarResNet(depth, width, input_shape, num_classes)

    return build


def vgg(depth: int):
    def build(input_shape: Shape, num_classes: int) -> nn.Module:
        return CifarVGG(VGG_PLANS[depth], input_shape, num_classes)

    return build


@torch.no_grad()
def openlth_init(model: nn.Module, generator: torch.Generator) -> None:
    """OpenLTH's initialisation of its CIFAR models (``kaiming_normal`` with ``batchnorm_init
    = uniform``), drawn from ``generator``: He-normal conv and linear weights (fan in, ReLU
    gain), biases as PyTorch initialises them (uniform in +-1/sqrt(fan in)), BatchNorm weights
    uniform in [0, 1) and biases zero."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, generator=generator)
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight[0].numel())
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator))
            module.bias.zero_()


def openlth_defaults(output_rate_factor: float) -> ModelDefaults:
    """OpenLTH's CIFAR-10 recipe (PAPER.md): batch 128, SGD lr 0.1 with momentum 0.9 and weight
    decay 1e-4, 160 epochs, the rate x0.1 at epochs 80 and 120; 20% of each conv layer's
    survivors pruned a round (OpenLTH prunes 20% globally: ``--scope global --rate 0.2``)."""
    return ModelDefaults(
        dataset="cifar10",
        iterations="160ep",
        batch_size=128,
        lr=0.1,
        fc_rate=0.2,
        conv_rate=0.2,
        output_rate_factor=output_rate_factor,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=1e-4,
        schedule="step",
        milestones=("80ep", "120ep"),
        gamma=0.1,
    )


RESNET_DEPTHS = (20, 32, 44, 56, 110)
RESNET_WIDTHS = (16, 32, 64)  # 16 is OpenLTH's default width: cifar_resnet_D
VGG_DEPTHS = (11, 13, 16, 19)


def openlth_models() -> list[ModelSpec]:
    """``cifar_resnet_D`` (width 16) and ``cifar_resnet_D_W`` (W 32, 64) for the common depths,
    and ``cifar_vgg_N``. OpenLTH prunes a ResNet's output layer (its default ignores no layer)
    and keeps a VGG's dense (``pruning_layers_to_ignore = fc.weight``): output rate 0."""
    specs = []
    for depth in RESNET_DEPTHS:
        for width in RESNET_WIDTHS:
            name = f"cifar_resnet_{depth}" + ("" if width == 16 else f"_{width}")
            n = (depth - 2) // 6
            specs.append(
                ModelSpec(
                    name,
                    resnet(depth, width),
                    openlth_defaults(output_rate_factor=1.0),
                    init=openlth_init,
                    description=f"ResNet-{depth} (OpenLTH's): 3 stages of {n} blocks, widths "
                    f"{width}/{2 * width}/{4 * width}, BatchNorm; SGD, 160 epochs",
                )
            )
    for depth in VGG_DEPTHS:
        specs.append(
            ModelSpec(
                f"cifar_vgg_{depth}",
                vgg(depth),
                openlth_defaults(output_rate_factor=0.0),
                init=openlth_init,
                description=f"VGG-{depth} with BatchNorm (OpenLTH's), output layer kept dense; "
                "SGD, 160 epochs",
            )
        )
    return specs


@hookimpl
def register_models(register) -> None:
    register(
        ModelSpec(
            "lenet_fc",
            lenet_fc,
            ModelDefaults(
                dataset="mnist", iterations=50_000, lr=1.2e-3, fc_rate=0.2, augment=False
            ),
            description="LeNet-300-100 (fc 300, 100, classes)",
        )
    )
    register(
        ModelSpec(
            "lenet_conv",
            lenet_conv,
            ModelDefaults(
                dataset="mnist", iterations=50_000, lr=1.2e-3, conv_rate=0.1, augment=False
            ),
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
                    augment=False,  # as every run of them trained: --augment turns it on
                ),
                description=f"{name.capitalize()}: conv blocks {blocks}, fc 256, 256, classes",
            )
        )
    for spec in openlth_models():
        register(spec)
