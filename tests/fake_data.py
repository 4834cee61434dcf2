"""Write tiny datasets in the real on-disk formats torchvision reads, for tests.

Every image carries its own id in the first two pixels of channel 0 (``id // 256``, ``id % 256``)
and random noise elsewhere, so a test can tell which written image a loaded row came from.
Training images get ids ``0..n-1``; test images ``TEST_ID_OFFSET + 0..n-1``.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEST_ID_OFFSET = 1000
IDX_UINT8 = 0x08
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CIFAR_FOLDER = "cifar-10-batches-py"


@dataclass
class Written:
    """What was written, as uint8 ``N x C x H x W`` images and int64 labels, in file order."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def make_images(n: int, shape: tuple[int, int, int], first_id: int, rng: np.random.Generator):
    """``n`` random uint8 images of ``shape`` (C, H, W); image ``i`` is stamped ``first_id + i``."""
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    ids = np.arange(first_id, first_id + n)
    images[:, 0, 0, 0] = ids // 256
    images[:, 0, 0, 1] = ids % 256
    return images


def image_ids(images: np.ndarray) -> np.ndarray:
    """The ids stamped by ``make_images``, from uint8 (or 0..255 float) ``N x C x H x W``."""
    pixels = np.rint(np.asarray(images, dtype=np.float64)).astype(np.int64)
    return pixels[:, 0, 0, 0] * 256 + pixels[:, 0, 0, 1]


def make_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Labels covering 0..9 evenly, in random order."""
    return rng.permutation(np.arange(n) % 10).astype(np.int64)


def make_split(n_train: int, n_test: int, shape: tuple[int, int, int], seed: int) -> Written:
    """Train and test images (test ids start at ``TEST_ID_OFFSET``) and labels, from ``seed``."""
    rng = np.random.default_rng(seed)
    return Written(
        train_images=make_images(n_train, shape, 0, rng),
        train_labels=make_labels(n_train, rng),
        test_images=make_images(n_test, shape, TEST_ID_OFFSET, rng),
        test_labels=make_labels(n_test, rng),
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file: magic ``0x0000 08 ndim`` (2049 labels, 2051 images), big-endian dims, bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", (IDX_UINT8 << 8) | array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(
    root: Path, folder: str = "MNIST", n_train: int = 120, n_test: int = 30, seed: int = 0
) -> Written:
    """MNIST-format IDX files in ``root/<folder>/raw/`` (``folder`` is ``FashionMNIST`` too)."""
    written = make_split(n_train, n_test, (1, 28, 28), seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, images, labels in (
        ("train", written.train_images, written.train_labels),
        ("t10k", written.test_images, written.test_labels),
    ):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return written


def _write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A CIFAR-10 python batch: rows of 3072 bytes, the R, G then B planes, row-major.

    The official files are Python 2 pickles whose keys load as ``str`` under torchvision's
    ``encoding="latin1"``; a Python 3 pickle with ``str`` keys loads the same way (``bytes``
    keys would not: torchvision looks up ``entry["data"]``).
    """
    batch = {
        "batch_label": path.name,
        "data": images.reshape(len(images), 3 * 32 * 32),
        "labels": [int(v) for v in labels],
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar(root: Path, n_train: int = 120, n_test: int = 30, seed: int = 0) -> Written:
    """CIFAR-10 python batches in ``root/cifar-10-batches-py/``; ``n_train`` is split over 5."""
    written = make_split(n_train, n_test, (3, 32, 32), seed)
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(n_train), 5)
    for i, part in enumerate(parts, start=1):
        images, labels = written.train_images[part], written.train_labels[part]
        _write_cifar_batch(folder / f"data_batch_{i}", images, labels)
    _write_cifar_batch(folder / "test_batch", written.test_images, written.test_labels)
    meta = {
        "label_names": ["airplane", "automobile", "bird", "cat", "deer"]
        + ["dog", "frog", "horse", "ship", "truck"],
        "num_cases_per_batch": len(parts[0]),
        "num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def md5s(folder: Path, names: tuple[str, ...] = CIFAR_FILES) -> dict[str, str]:
    """The md5 of each named file in ``folder``, as torchvision's integrity check computes it."""
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in names}
