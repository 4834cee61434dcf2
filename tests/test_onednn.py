"""Evaluation's linear layers on oneDNN: the same reported numbers, the same bits on any thread
count or pool, and torch's own path wherever the check fails."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lottery_core import onednn, onednn_training, training
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.grad_masking import masks_on_gradients
from lottery_core.progress import Progress

from .conftest import TINY

pytestmark = pytest.mark.skipif(onednn.linear_op() is None, reason="this torch build has no oneDNN")


@pytest.fixture(autouse=True)
def restore():
    """The path is on for these tests whatever the CPU (by default only AMD with AVX-512)."""
    threads, enabled = torch.get_num_threads(), onednn.ENABLED
    onednn.ENABLED = True
    yield
    torch.set_num_threads(threads)
    onednn.ENABLED = enabled


class Calls(TorchDispatchMode):
    """The names of the operators run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def trained_lenet(plugins, sample_data):
    """LeNet-300-100 after one round and one pruning (so the pruning pre-hooks are on)."""
    exp = Experiment(make_config(**TINY, rounds=2), plugins=plugins, data=sample_data)
    state = exp.start()
    exp.train(state, 0, Progress(TINY["iterations"], enabled=False))
    exp.prune(1)
    return exp.model


def test_evaluation_runs_the_linear_layers_on_onednn_only_when_enabled(plugins, sample_data):
    model = trained_lenet(plugins, sample_data)
    x, y = sample_data.val_x, sample_data.val_y
    onednn.ENABLED = True
    with Calls() as calls:
        training.evaluate(model, x, y)
    assert "mkldnn::_linear_pointwise" in calls.names and "aten::linear" not in calls.names
    onednn.ENABLED = False
    with Calls() as calls:
        training.evaluate(model, x, y)
    assert "aten::linear" in calls.names and "mkldnn::_linear_pointwise" not in calls.names
    assert not [m for m in model.modules() if "forward" in m.__dict__]  # layers restored


def test_onednn_evaluation_matches_torch_and_not_the_threads_or_the_pool(plugins, sample_data):
    model = trained_lenet(plugins, sample_data)
    x, y = sample_data.val_x[:501], sample_data.val_y[:501]
    onednn.ENABLED = False
    blas_loss, blas_acc = training.evaluate(model, x, y)
    onednn.ENABLED = True
    torch.set_num_threads(2)
    alone = training.evaluate(model, x, y)
    torch.set_num_threads(1)
    pooled = training.evaluate(model, x, y, training.eval_helpers(1))
    single = training.evaluate(model, x, y)
    assert alone == pooled == single
    assert alone[1] == blas_acc
    assert alone[0] == pytest.approx(blas_loss, rel=1e-6)


def test_every_logit_is_the_same_bits_with_or_without_helper_threads(plugins):
    exp = Experiment(make_config(**TINY), plugins=plugins)
    exp.build_model()
    # 501 rows: with a helper thread the blocks are 500 + a 1-row tail, which must join the
    # block before it (oneDNN computes a lone row with other rounding). Gaussian input: the
    # digits' many equal pixels can hide a difference in rounding.
    noise = torch.randn(501, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with onednn.linears_on_onednn(exp.model, noise) as swapped:
        assert swapped
        torch.set_num_threads(1)
        pooled = training._logits(exp.model, noise, training.eval_helpers(1))
        torch.set_num_threads(2)
        assert torch.equal(pooled, training._logits(exp.model, noise, None))


def test_a_run_reports_the_same_numbers_and_trains_the_same_bits(plugins, sample_data, tmp_path):
    def run(enabled: bool, name: str):
        onednn.ENABLED = enabled
        exp = Experiment(make_config(**{**TINY, "rounds": 3, "seed": 3}), plugins=plugins,
                         data=sample_data)  # fmt: skip
        result = exp.run(tmp_path / name, progress=False)
        return result, exp.model.state_dict()

    (fast, fast_state), (blas, blas_state) = run(True, "onednn"), run(False, "blas")
    reported = ["round", "remaining", "ES", "val", "test", "final_test", "weights"]
    pd.testing.assert_frame_equal(fast.results[reported], blas.results[reported])
    pd.testing.assert_series_equal(fast.history["train_loss"], blas.history["train_loss"])
    pd.testing.assert_series_equal(fast.history["val_acc"], blas.history["val_acc"])
    assert fast.history["val_loss"].to_numpy() == pytest.approx(
        blas.history["val_loss"].to_numpy(), rel=1e-6
    )
    for key in fast_state:  # evaluation never touches training: the weights are the same bits
        assert torch.equal(fast_state[key], blas_state[key]), key


class Shifted(nn.Linear):
    """A linear layer with its own forward: not ours to replace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1.0


def test_layers_with_their_own_forward_are_left_alone_and_all_are_restored_after_errors():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), Shifted(6, 3))
    x = torch.randn(16, 8)
    with onednn.linears_on_onednn(model, x) as swapped:
        assert swapped
        assert "forward" in model[0].__dict__ and "forward" not in model[2].__dict__
    with pytest.raises(KeyError), onednn.linears_on_onednn(model, x):
        raise KeyError("boom")
    assert not [m for m in model.modules() if "forward" in m.__dict__]


@pytest.mark.parametrize("flaw", ["wrong sums", "depends on threads"])
def test_the_check_keeps_torch_linear_when_onednn_disagrees(monkeypatch, flaw):
    real = onednn.linear_op()

    def flawed(x, w, b, *args):
        out = real(x, w, b, *args)
        if flaw == "wrong sums":
            return out + 1e-2
        return out + 1e-7 * torch.get_num_threads() * out.abs()

    monkeypatch.setattr(onednn, "linear_op", lambda: flawed)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    assert not onednn.suitable(model, torch.randn(32, 8))
    with onednn.linears_on_onednn(model, torch.randn(32, 8)) as swapped:
        assert not swapped


def test_other_dtypes_and_tiny_inputs_stay_on_torch():
    model = nn.Sequential(nn.Linear(8, 3))
    assert onednn.suitable(model, torch.randn(32, 8))
    assert not onednn.suitable(model.double(), torch.randn(32, 8, dtype=torch.float64))
    assert not onednn.suitable(nn.Sequential(nn.Linear(8, 3)), torch.randn(3, 8))
    onednn.ENABLED = False
    assert not onednn.suitable(model.float(), torch.randn(32, 8))


def test_onednn_is_preferred_only_where_mkl_leaves_avx512_unused():
    assert onednn.faster_here("AuthenticAMD", "AVX512", blas_is_mkl=True)
    assert not onednn.faster_here("AuthenticAMD", "AVX2", blas_is_mkl=True)  # Zen 3: no gain
    assert not onednn.faster_here("GenuineIntel", "AVX512", blas_is_mkl=True)
    assert not onednn.faster_here("AuthenticAMD", "AVX512", blas_is_mkl=False)


@pytest.mark.parametrize("forced", ["0", "1", None])
def test_the_environment_forces_the_choice_and_otherwise_the_cpu_decides(monkeypatch, forced):
    if forced is None:
        monkeypatch.delenv("LOTTERY_ONEDNN", raising=False)
        expected = onednn.faster_here(
            onednn.cpu_vendor(),
            torch.backends.cpu.get_cpu_capability(),
            torch.backends.mkl.is_available(),
        )
    else:
        monkeypatch.setenv("LOTTERY_ONEDNN", forced)
        expected = forced == "1"
    onednn.preferred.cache_clear()
    try:
        assert onednn.preferred() is expected
        onednn.ENABLED = None
        assert onednn.suitable(nn.Sequential(nn.Linear(8, 3)), torch.randn(32, 8)) is expected
    finally:
        onednn.preferred.cache_clear()


def test_where_onednn_is_not_preferred_training_and_evaluation_keep_torchs_linear(
    plugins, sample_data, monkeypatch
):
    model = trained_lenet(plugins, sample_data)
    monkeypatch.setattr(onednn, "preferred", lambda: False)
    monkeypatch.setattr(onednn, "ENABLED", None)
    monkeypatch.setattr(onednn_training, "ENABLED", None)
    with masks_on_gradients(model), Calls() as calls:
        assert not [m for m in model.modules() if "forward" in m.__dict__]
        model(sample_data.train_x[:60]).sum().backward()
        training.evaluate(model, sample_data.val_x, sample_data.val_y)
    assert "mkldnn::_linear_pointwise" not in calls.names
    monkeypatch.setattr(onednn, "preferred", lambda: True)
    with masks_on_gradients(model), Calls() as calls:
        model(sample_data.train_x[:60]).sum().backward()
        training.evaluate(model, sample_data.val_x, sample_data.val_y)
    assert "mkldnn::_linear_pointwise" in calls.names
