"""OpenLTH's CIFAR-10 models (ResNets, VGGs with BatchNorm) and their recipes; BatchNorm's
parameters and running statistics as part of θ0 and θk; evaluation in eval mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lottery_core import checkpoint, masks
from lottery_core.config import make_config
from lottery_core.errors import LotteryError
from lottery_core.experiment import Experiment
from lottery_core.progress import Progress
from lottery_core.resolution import resolve
from lottery_core.training import evaluate
from tests.fake_data import write_cifar
from tests.test_datasets import trust_cifar_files

RESNETS = [f"cifar_resnet_{d}" for d in (20, 32, 44, 56, 110)]
VGGS = [f"cifar_vgg_{d}" for d in (11, 13, 16, 19)]
# A 2-round budget a ResNet-20 trains on the CPU in about a second (tiny CIFAR-format files).
TINY_CIFAR = dict(
    dataset="cifar10", validation_size=20, iterations=4, batch_size=16, eval_every=2,
    milestones=[2], threads=1,
)  # fmt: skip


def openlth_resnet_counts(depth: int, width: int = 16) -> tuple[int, int]:
    """(prunable weights, all parameters) of OpenLTH's ``cifar_resnet_<depth>_<width>``,
    computed from its definition (models/cifar_resnet.py), not from our module: a 3x3 conv
    3 -> W without bias and BatchNorm; per stage (W, 2W, 4W) n = (depth - 2) / 6 blocks of two
    3x3 convs without bias, each with BatchNorm, the first block of stages 2 and 3 with a 1x1
    conv shortcut and BatchNorm; a linear layer 4W -> 10 with bias."""
    n = (depth - 2) // 6
    weights, bn_channels = 3 * width * 9, width
    f_in = width
    for f_out in (width, 2 * width, 4 * width):
        for _ in range(n):
            weights += f_in * f_out * 9 + f_out * f_out * 9
            bn_channels += 2 * f_out
            if f_in != f_out:
                weights += f_in * f_out
                bn_channels += f_out
            f_in = f_out
    weights += 4 * width * 10
    return weights, weights + 2 * bn_channels + 10


def openlth_vgg_counts(plan: list) -> tuple[int, int]:
    """(prunable weights, all parameters) of OpenLTH's ``cifar_vgg_N`` from its plan
    (models/cifar_vgg.py): 3x3 convs with bias, each with BatchNorm; a linear layer 512 -> 10."""
    weights = biases = 0
    f_in = 3
    for spec in plan:
        if spec != "M":
            weights += f_in * spec * 9
            biases += spec + 2 * spec  # the conv's bias, BatchNorm's weight and bias
            f_in = spec
    weights += 512 * 10
    return weights, weights + biases + 10


def counts(model: nn.Module) -> tuple[int, int]:
    layers = masks.prunable_layers(model)
    return sum(layer.module.weight.numel() for layer in layers), sum(
        p.numel() for p in model.parameters()
    )


def build(plugins, name: str, seed: int = 0) -> nn.Module:
    spec = plugins.models.get(name)
    model = spec.build((3, 32, 32), 10)
    spec.init(model, torch.Generator().manual_seed(seed))
    return model


# -- the models ---------------------------------------------------------------------------------


def test_the_openlth_models_are_registered(plugins) -> None:
    names = set(plugins.models.names())
    assert set(RESNETS) | set(VGGS) <= names
    assert {"cifar_resnet_20_32", "cifar_resnet_20_64", "cifar_resnet_110_64"} <= names
    assert {"lenet_fc", "lenet_conv", "conv2", "conv4", "conv6"} <= names  # still there


@pytest.mark.parametrize(
    "name, prunable, total",
    [
        ("cifar_resnet_20", 270_896, 272_474),
        ("cifar_resnet_56", 851_504, 855_770),
        ("cifar_resnet_20_64", 4_321_472, 4_327_754),
        ("cifar_vgg_11", 9_222_848, 9_231_114),
        ("cifar_vgg_16", 14_715_584, 14_728_266),
    ],
)
def test_forward_and_parameter_counts_are_openlths(plugins, name, prunable, total) -> None:
    """ResNet-20 has about 0.27 M parameters: the counts are pinned, and equal OpenLTH's as
    computed from its definition."""
    from plugins.models import VGG_PLANS

    model = build(plugins, name)
    assert counts(model) == (prunable, total)
    parts = name.split("_")
    if parts[1] == "resnet":
        width = int(parts[3]) if len(parts) == 4 else 16
        assert openlth_resnet_counts(int(parts[2]), width) == (prunable, total)
    else:
        assert openlth_vgg_counts(VGG_PLANS[int(parts[2])]) == (prunable, total)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [*RESNETS, *VGGS, "cifar_resnet_20_32"])
def test_every_openlth_model_counts_as_openlth_defines_it(plugins, name) -> None:
    from plugins.models import VGG_PLANS

    model = plugins.models.get(name).build((3, 32, 32), 10)
    parts = name.split("_")
    if parts[1] == "resnet":
        width = int(parts[3]) if len(parts) == 4 else 16
        assert counts(model) == openlth_resnet_counts(int(parts[2]), width)
    else:
        assert counts(model) == openlth_vgg_counts(VGG_PLANS[int(parts[2])])


def test_only_conv_and_linear_weights_are_pruned_batchnorm_never(plugins) -> None:
    for name in ("cifar_resnet_20", "cifar_vgg_11"):
        model = build(plugins, name)
        layers = masks.prunable_layers(model)
        masks.attach_masks(layers)
        modules = dict(model.named_modules())
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        assert [layer.name for layer in layers] == [*convs, "fc"]
        assert [layer.kind for layer in layers] == ["conv"] * len(convs) + ["output"]
        norms = [m for m in modules.values() if isinstance(m, nn.BatchNorm2d)]
        assert norms and not any(hasattr(m, "weight_mask") for m in norms)
        masked = {n.rsplit(".", 1)[0] for n, _ in model.named_buffers() if n.endswith("_mask")}
        assert masked == {layer.name for layer in layers}
        assert set(masks.state_buffers(model)) == {
            f"{n}.{b}" for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)
            for b in ("running_mean", "running_var", "num_batches_tracked")
        }  # fmt: skip


def test_openlths_initialisation(plugins) -> None:
    """He-normal conv weights, BatchNorm weights uniform in [0, 1) and biases zero, from the
    run's generator: the same seed draws the same network."""
    model = build(plugins, "cifar_resnet_56", seed=3)
    again = build(plugins, "cifar_resnet_56", seed=3)
    other = build(plugins, "cifar_resnet_56", seed=4)
    same = [torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)]
    assert all(same)
    assert not torch.equal(model.conv.weight, other.conv.weight)
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Conv2d)
                         and m.weight.shape[1:] == (64, 3, 3)])  # fmt: skip
    assert abs(weights.std().item() - (2 / (64 * 9)) ** 0.5) < 0.002  # fan in, ReLU gain
    gammas = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert 0 <= gammas.min() and gammas.max() < 1 and abs(gammas.mean().item() - 0.5) < 0.05
    assert all(not m.bias.any() for m in model.modules() if isinstance(m, nn.BatchNorm2d))


# -- the recipe ---------------------------------------------------------------------------------


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny CIFAR-10 python batches (120 train, 30 test) that torchvision's class reads."""
    root = tmp_path / "cifar"
    write_cifar(root)
    trust_cifar_files(monkeypatch, root)
    return root


def test_the_recipe_is_openlths(plugins, tmp_path, monkeypatch) -> None:
    """Unset, every field of the recipe is OpenLTH's: cifar10, batch 128, SGD lr 0.1 with
    momentum 0.9 and weight decay 1e-4, 160 epochs, x0.1 at epochs 80 and 120, augmentation
    on; 20% of each conv layer a round; the output layer pruned (ResNet) or dense (VGG)."""
    root = tmp_path / "cifar"
    write_cifar(root, n_train=300)
    trust_cifar_files(monkeypatch, root)
    per_epoch = (300 - 20) // 128
    for name, output_rate in (("cifar_resnet_20", 0.2), ("cifar_vgg_16", 0.0)):
        config = resolve(make_config(model=name, data_dir=root, validation_size=20), plugins)
        assert (config.dataset, config.batch_size, config.lr) == ("cifar10", 128, 0.1)
        assert (config.optimizer, config.momentum, config.weight_decay) == ("sgd", 0.9, 1e-4)
        assert not config.nesterov and config.warmup == 0
        assert (config.schedule, config.gamma) == ("step", 0.1)
        assert config.iterations == 160 * per_epoch
        assert config.milestones == [80 * per_epoch, 120 * per_epoch]
        assert config.steps == {"iterations": "160ep", "milestones": ["80ep", "120ep"]}
        assert config.augment is True
        assert (config.rate, config.conv_rate, config.output_rate) == (0.2, 0.2, output_rate)


def test_what_the_user_sets_wins_over_the_recipe(plugins, cifar_root) -> None:
    def resolved(**values):
        given = {**TINY_CIFAR, **values}
        return resolve(make_config(model="cifar_resnet_20", data_dir=cifar_root, **given),
                       plugins)  # fmt: skip

    assert resolved(momentum=0.5, weight_decay=0.0).momentum == 0.5
    assert resolved(weight_decay=0.0).weight_decay == 0.0
    assert resolved(gamma=0.5).gamma == 0.5
    assert resolved(augment=False).augment is False
    constant = resolved(schedule="constant", milestones=[])
    assert (constant.schedule, constant.milestones, constant.momentum) == ("constant", [], 0.9)
    adam = resolved(optimizer="adam", lr=1e-3)  # another optimizer: none of SGD's settings
    assert (adam.optimizer, adam.momentum, adam.weight_decay) == ("adam", 0.0, 0.0)
    with pytest.raises(LotteryError, match="--optimizer adam needs --lr .* 0.1, is for sgd"):
        resolved(optimizer="adam")
    with pytest.raises(LotteryError, match="--momentum does not apply to optimizer 'adam'"):
        resolved(optimizer="adam", lr=1e-3, momentum=0.9)


def test_a_short_run_is_told_the_models_milestones_do_not_fit(plugins, cifar_root) -> None:
    values = {k: v for k, v in TINY_CIFAR.items() if k != "milestones"}
    config = make_config(model="cifar_resnet_20", **values, data_dir=cifar_root)
    with pytest.raises(LotteryError, match=r"model 'cifar_resnet_20' drops the learning rate "
                       r"at 80ep,120ep \(\[480, 720\] iterations here\), not all below "
                       "--iterations 4; give --milestones, or --schedule constant"):  # fmt: skip
        resolve(config, plugins)


def test_models_without_a_recipe_resolve_as_they_did(plugins) -> None:
    """The paper's models bring no recipe: Adam at a constant rate, no augmentation on MNIST,
    and the folder name every earlier run of this command got."""
    config = resolve(make_config(dataset="mnist-sample"), plugins)
    assert (config.optimizer, config.momentum, config.schedule) == ("adam", 0.0, "constant")
    assert config.augment is False and config.output_rate == 0.1
    assert config.run_name() == "lenet_fc-mnist-sample-magnitude-layerwise-rewind-s0-1015ea51"


def test_an_output_rate_of_zero_keeps_the_output_layer_dense(plugins, sample_data) -> None:
    from tests.conftest import TINY

    config = make_config(**{**TINY, "iterations": 50}, rounds=2, output_rate=0.0, threads=1)
    experiment = Experiment(config, plugins=plugins, data=sample_data)
    result = experiment.run(progress=False)
    layers = result.layers[result.layers["round"] == 1].set_index("layer")
    assert layers.loc["5", "remaining_pct"] == 100.0  # the output layer
    assert layers.loc["1", "remaining_pct"] == pytest.approx(80.0, abs=0.01)


# -- BatchNorm in θ0 and θk -------------------------------------------------------------------


def state_of(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return params, {n: b.clone() for n, b in masks.state_buffers(model).items()}


@pytest.mark.parametrize("rewind_iter", [0, 2])
def test_rewinding_restores_batchnorm_parameters_and_running_statistics(
    plugins, cifar_root, rewind_iter
) -> None:
    """A 2-round ResNet-20 run: round 1 starts from θ0 (θk) exactly, BatchNorm's weights,
    biases, running mean and variance and batch count included, though round 0 moved them."""
    config = make_config(model="cifar_resnet_20", **TINY_CIFAR, data_dir=cifar_root, rounds=2,
                         rewind_iter=rewind_iter)  # fmt: skip
    experiment = Experiment(config, plugins=plugins)
    state = experiment.start()
    assert experiment.model is not None
    theta0, buffers0 = state_of(experiment.model)
    assert buffers0["bn.num_batches_tracked"] == 0 and not buffers0["bn.running_mean"].any()
    with Progress(0, enabled=False) as bar:
        experiment.train(state, 0, bar)
        trained, trained_buffers = state_of(experiment.model)
        assert trained_buffers["bn.num_batches_tracked"] == config.iterations
        assert not torch.equal(trained_buffers["bn.running_mean"], buffers0["bn.running_mean"])
        assert not torch.equal(trained["bn.weight"], theta0["bn.weight"])
        experiment.prune(state, 1)
        experiment.reinitialise(state, 1)
        start, start_buffers = state_of(experiment.model)
        expected, expected_buffers = theta0, buffers0
        if rewind_iter:
            expected, expected_buffers = state.rewind_state, state.rewind_buffers
            assert expected_buffers["bn.num_batches_tracked"] == rewind_iter
            assert not torch.equal(expected_buffers["bn.running_var"], buffers0["bn.running_var"])
        assert start_buffers.keys() == expected_buffers.keys()
        for name, value in start_buffers.items():
            assert torch.equal(value, expected_buffers[name]), name
        survivors = {f"{layer.name}.weight_orig": layer.mask.bool() for layer in experiment.layers}
        for name, value in start.items():
            alive = survivors.get(name, torch.ones_like(value, dtype=torch.bool))
            assert torch.equal(value[alive], expected[name].to(value.device)[alive]), name
        assert "bn.weight" in start and torch.equal(start["bn.weight"], expected["bn.weight"])
        experiment.train(state, 1, bar)  # and round 1 trains from there
    assert [r["round"] for r in state.records] == [0, 1]


def test_the_checkpoint_keeps_batchnorm_statistics_and_a_run_resumes_from_them(
    plugins, cifar_root, invoke, tmp_path
) -> None:
    """The checkpoint holds θ0's and θk's running statistics; extending a 2-round run to 3
    gives what a 3-round run computes."""
    flags = ["--model", "cifar_resnet_20", "--data-dir", cifar_root, "--validation-size", "20",
             "--iterations", "4", "--batch-size", "16", "--eval-every", "2", "--milestones", "2",
             "--rewind-iter", "2", "--threads", "1", "--quiet"]  # fmt: skip
    assert invoke("run", *flags, "--rounds", "2", "--out", "two").returncode == 0
    body = checkpoint.read(tmp_path / "two")
    assert body["initial_buffers"]["bn.num_batches_tracked"] == 0
    assert body["rewind_buffers"]["bn.num_batches_tracked"] == 2
    _, state = checkpoint.state_of(body)
    assert torch.equal(state.rewind_buffers["bn.running_mean"],
                       body["rewind_buffers"]["bn.running_mean"])  # fmt: skip
    recorded = json.loads((tmp_path / "two" / "config.json").read_text())["config"]
    assert recorded["augment"] is True and recorded["optimizer"] == "sgd"
    assert invoke("run", "--resume", "two", "--rounds", "3", "--quiet").returncode == 0
    assert invoke("run", *flags, "--rounds", "3", "--out", "three").returncode == 0
    import pandas as pd

    extended, straight = (pd.read_csv(tmp_path / d / "results.csv") for d in ("two", "three"))
    columns = [c for c in straight.columns if c != "time_s"]
    pd.testing.assert_frame_equal(extended[columns], straight[columns])


def test_a_lenet_checkpoint_holds_no_buffers_as_before(plugins, sample_data, tmp_path) -> None:
    from tests.conftest import TINY

    experiment = Experiment(make_config(**TINY, rounds=1, threads=1), plugins=plugins,
                            data=sample_data)  # fmt: skip
    state = experiment.start()
    assert state.initial_buffers == {} and state.rewind_buffers == {}
    assert experiment.model is not None
    meta = {"config": experiment.config.model_dump(mode="json")}
    checkpoint.save(tmp_path / "checkpoint.pt", meta, experiment.model.state_dict(), state)
    body = checkpoint.read(tmp_path)
    assert "initial_buffers" not in body and "rewind_buffers" not in body
    assert checkpoint.state_of(body)[1].rewind_buffers == {}


# -- evaluation ---------------------------------------------------------------------------------


def test_evaluation_runs_in_eval_mode_and_leaves_the_statistics_alone() -> None:
    """Dropout off and BatchNorm on its running statistics while evaluating, whatever mode the
    model was in; the mode is given back, and the statistics are not updated."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(16, 3),
    )  # fmt: skip
    with torch.no_grad():
        model[2].running_mean.uniform_(-1, 1)
        model[2].running_var.uniform_(0.5, 2)
    x, y = torch.randn(50, 1, 3, 4), torch.randint(0, 3, (50,))
    before = {n: b.clone() for n, b in model.named_buffers()}
    model.train()
    first = evaluate(model, x, y)
    second = evaluate(model, x, y)
    assert model.training
    assert first == second  # no dropout noise
    model.eval()
    with torch.no_grad():
        logits = model(x)
    expected_loss = nn.functional.cross_entropy(logits, y, reduction="sum").double().item() / 50
    expected_acc = 100.0 * (logits.argmax(1) == y).sum().item() / 50
    assert first == pytest.approx((expected_loss, expected_acc))
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name
