"""Training-time data augmentation: CIFAR-10's random crop (zero padding 4) and flip on uint8
batches, seeded by (data order, iteration), training batches only; off for MNIST."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from lottery_core import seeds
from lottery_core.config import make_config
from lottery_core.errors import LotteryError, PluginError
from lottery_core.resolution import resolve
from lottery_core.specs import DatasetSplits
from lottery_core.training import TrainSettings, train_round
from plugins.datasets import CropFlip
from tests.fake_data import write_cifar
from tests.test_datasets import trust_cifar_files


def batch(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Random uint8 CIFAR-shaped images with no zero pixel (so padding is told apart)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)


def reference(image: torch.Tensor, dy: int, dx: int, flip: bool, padding: int = 4):
    """One image padded with zeros, cropped at (dy, dx) to its own size, maybe flipped."""
    _, h, w = image.shape
    padded = torch.zeros(image.shape[0], h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    padded[:, padding : padding + h, padding : padding + w] = image
    crop = padded[:, dy : dy + h, dx : dx + w]
    return crop.flip(-1) if flip else crop


def test_shape_dtype_and_device_are_kept() -> None:
    x = batch(10)
    out = CropFlip()(x, seeds.augment_generator(0, 0))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.is_contiguous()


def test_the_same_seed_and_iteration_give_the_same_bits_on_any_thread_count() -> None:
    x = batch(128)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = CropFlip()(x, seeds.augment_generator(7, 3))
        torch.set_num_threads(2)
        two = CropFlip()(x, seeds.augment_generator(7, 3))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert not torch.equal(one, CropFlip()(x, seeds.augment_generator(7, 4)))  # next iteration
    assert not torch.equal(one, CropFlip()(x, seeds.augment_generator(8, 3)))  # another seed


def test_each_image_is_a_crop_of_its_zero_padded_self_maybe_flipped() -> None:
    """Every output image is exactly one of the 9 x 9 crops of the image padded with 4 zero
    pixels, flipped or not; across a batch every offset occurs."""
    x = batch(400, seed=1)
    out = CropFlip()(x, seeds.augment_generator(0, 0))
    found = set()
    for image, got in zip(x, out, strict=True):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(reference(image, dy, dx, flip), got)]  # fmt: skip
        assert len(matches) == 1
        found.add(matches[0])
    assert {dy for dy, _, _ in found} == set(range(9)) == {dx for _, dx, _ in found}
    zeros = out == 0  # the padding: whole rows or columns of zeros where the crop left the image
    assert zeros.any() and not (x == 0).any()


def test_flips_happen_half_the_time() -> None:
    x = batch(4000, seed=2)
    out = CropFlip(padding=0)(x, seeds.augment_generator(0, 0))  # no crop: flipped or not
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())
    assert 0.47 < flipped.float().mean().item() < 0.53


def splits(x: torch.Tensor, y: torch.Tensor) -> DatasetSplits:
    return DatasetSplits(x, y, x[:32], y[:32], x[:32], y[:32], num_classes=10, source="test",
                         transform=lambda t: t.float() / 255)  # fmt: skip


def test_only_training_batches_are_augmented_each_from_its_iteration() -> None:
    """The round sees crop-flipped training batches drawn from (data-order seed, iteration);
    validation and test images reach the model as stored."""
    x, y = batch(64, seed=3), torch.arange(64) % 10
    seen: list[torch.Tensor] = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 10)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(t.detach().clone())
            return self.fc(t.flatten(1))

    settings = TrainSettings(iterations=3, batch_size=16, lr=1e-3, eval_every=3,
                             augment=CropFlip())  # fmt: skip
    train_round(Probe(), splits(x, y), settings, data_seed=11)
    order = torch.randperm(64, generator=seeds.epoch_generator(11, 0))
    for iteration in range(3):
        stored = x[order[iteration * 16 : (iteration + 1) * 16]]
        expected = CropFlip()(stored, seeds.augment_generator(11, iteration)).float() / 255
        assert torch.equal(seen[iteration], expected)
    evaluated = [t for t in seen[3:] if t.shape[0] == 32]
    assert evaluated and all(torch.equal(t, x[:32].float() / 255) for t in evaluated)


def test_an_augmentation_that_changes_the_batch_shape_is_named() -> None:
    x, y = batch(32), torch.arange(32) % 10
    settings = TrainSettings(iterations=1, batch_size=16, lr=1e-3, eval_every=1,
                             augment=lambda t, g: t[:, :, :30])  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(PluginError, match="augment returned torch.uint8 .16, 3, 30, 32."):
        train_round(model, splits(x, y), settings, data_seed=0)


# -- the config ---------------------------------------------------------------------------------


def test_cifar10_augments_by_default_mnist_never(plugins) -> None:
    assert plugins.datasets.get("cifar10").augment is not None
    for name in ("mnist", "fashion", "mnist-sample"):
        assert plugins.datasets.get(name).augment is None
    sample = resolve(make_config(dataset="mnist-sample"), plugins)
    assert sample.augment is False
    assert resolve(make_config(dataset="mnist-sample", augment=False), plugins).augment is False
    assert "augment" not in sample.identity()  # no augmentation: the name runs always had
    with pytest.raises(LotteryError, match="'mnist-sample' declares no augmentation"):
        resolve(make_config(dataset="mnist-sample", augment=True), plugins)


def test_augment_is_recorded_resolved_and_changes_the_run(
    plugins, invoke, tmp_path, monkeypatch
) -> None:
    """ResNet-20 on tiny CIFAR-10 files: augmentation on by default, recorded in config.json
    (and in the folder's name: another experiment than without); ``--no-augment`` turns it
    off. The paper's Conv-2 keeps training without it, under the name it always had."""
    root = tmp_path / "cifar"
    write_cifar(root)
    trust_cifar_files(monkeypatch, root)
    flags = ["--model", "cifar_resnet_20", "--data-dir", root, "--validation-size", "20",
             "--iterations", "6", "--milestones", "3", "--batch-size", "20", "--eval-every", "3",
             "--rounds", "1", "--threads", "1", "--quiet"]  # fmt: skip
    assert invoke("run", *flags, "--out", "on").returncode == 0
    assert invoke("run", *flags, "--out", "again").returncode == 0
    assert invoke("run", *flags, "--no-augment", "--out", "off").returncode == 0
    config = {d: json.loads((tmp_path / d / "config.json").read_text())["config"]
              for d in ("on", "off")}  # fmt: skip
    assert config["on"]["augment"] is True and config["off"]["augment"] is False
    history = {d: pd.read_csv(tmp_path / d / "history.csv") for d in ("on", "again", "off")}
    pd.testing.assert_frame_equal(history["on"], history["again"])  # seeded
    assert not history["on"]["train_loss"].equals(history["off"]["train_loss"])

    def resolved(**values):
        return resolve(make_config(dataset="cifar10", data_dir=root, **values), plugins)

    on, off = (resolved(model="cifar_resnet_20", validation_size=20, batch_size=20, augment=value)
               for value in (None, False))  # fmt: skip
    assert on.identity()["augment"] is True and "augment" not in off.identity()
    assert on.run_name() != off.run_name()
    conv2 = resolved(model="conv2", seed=3, scope="global")
    assert conv2.augment is False  # the paper's models: off unless asked
    assert conv2.run_name() == "conv2-cifar10-magnitude-global-rewind-s3-2e8b84d2"
    assert resolved(model="conv2", augment=True).augment is True


def test_a_config_file_takes_augment_as_true_or_false(invoke, tmp_path) -> None:
    (tmp_path / "bad.toml").write_text('augment = "no"\n')
    result = invoke("run", "--config", tmp_path / "bad.toml", "--dataset", "mnist-sample")
    assert result.returncode == 2 and "augment must be true or false" in result.stderr
    assert "--augment / --no-augment" in " ".join(invoke("run", "--help").stdout.split())
