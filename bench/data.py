"""Benchmark data: synthetic in-memory splits, and small on-disk datasets for the DataLoader loop.

Timing does not depend on pixel values, so the in-memory splits are random tensors of the right
shape. The DataLoader baseline needs real files: MNIST IDX files and CIFAR-10 python batches are
written to a temporary folder and read by the ordinary torchvision classes.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets, transforms

import lottery_core.plugins  # noqa: F401  (in a checkout: lottery_plugins is its plugins/)
from lottery_core.specs import DatasetSplits
from lottery_plugins.datasets import Normalise

Shape = tuple[int, int, int]
MNIST_SHAPE: Shape = (1, 28, 28)
CIFAR_SHAPE: Shape = (3, 32, 32)
MNIST_NORM = ((0.1307,), (0.3081,))
CIFAR_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def synthetic_splits(
    shape: Shape, n_train: int, n_val: int, n_test: int, seed: int = 0
) -> DatasetSplits:
    """uint8 images normalised per batch (as the built-in datasets hold them) and int64 labels
    in 10 classes, already in memory."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8)
        return pixels, torch.randint(0, 10, (n,), generator=generator)

    train, val, test = split(n_train), split(n_val), split(n_test)
    channels = shape[0]
    return DatasetSplits(*train, *val, *test, num_classes=10, source="synthetic (bench)",
                         transform=Normalise((0.5,) * channels, (0.25,) * channels))  # fmt: skip


def with_small_eval(data: DatasetSplits, n: int) -> DatasetSplits:
    """The same training tensors with tiny validation and test splits (to time steps alone)."""
    return DatasetSplits(
        data.train_x,
        data.train_y,
        data.val_x[:n],
        data.val_y[:n],
        data.test_x[:n],
        data.test_y[:n],
        num_classes=data.num_classes,
        source=data.source,
        transform=data.transform,
    )


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as torchvision reads it: magic, big-endian dimensions, then uint8 bytes."""
    header = struct.pack(">I", (0x08 << 8) | array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def mnist_dataset(root: Path, n: int, seed: int = 0) -> datasets.MNIST:
    """``n`` random digits written as MNIST IDX files under ``root/MNIST/raw``, read back by
    ``torchvision.datasets.MNIST`` with the usual ToTensor + Normalize transform."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*MNIST_NORM)])
    return datasets.MNIST(str(root), train=True, download=False, transform=transform)


class _UncheckedCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader, minus the md5 checks that only the official files pass."""

    meta = {**datasets.CIFAR10.meta, "md5": None}

    def _check_integrity(self) -> bool:
        return True


def cifar_dataset(root: Path, n: int, seed: int = 0) -> datasets.CIFAR10:
    """``n`` random images written as CIFAR-10 python batches, read back by torchvision's reader
    with the usual ToTensor + Normalize transform."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(n), 5)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, part in zip(names, [*parts, np.arange(10)], strict=True):
        batch = {
            "data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, len(part))],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*CIFAR_NORM)])
    return _UncheckedCIFAR10(str(root), train=True, download=False, transform=transform)
