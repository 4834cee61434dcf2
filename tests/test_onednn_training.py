"""Training's large linear layers on oneDNN: a hidden layer's weight gradient is autograd's bits,
an input layer's forward is within float32 rounding of torch's, masks hold, and torch's path
stays wherever a check fails."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from lottery_core import onednn, onednn_training, training
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.grad_masking import masks_on_gradients
from lottery_core.onednn import linear_op

from .conftest import TINY
from .test_onednn import Calls, trained_lenet


class Counted(Calls):
    """``Calls``, also counting each operator's calls."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.name()] = self.counts.get(func.name(), 0) + 1
        return super().__torch_dispatch__(func, types, args, kwargs)


pytestmark = pytest.mark.skipif(linear_op() is None, reason="this torch build has no oneDNN")
ONEDNN = "mkldnn::_linear_pointwise"


@pytest.fixture(autouse=True)
def restore():
    """The paths are on for these tests whatever the CPU (by default only AMD with AVX-512)."""
    threads, enabled, evaluation = (
        torch.get_num_threads(), onednn_training.ENABLED, onednn.ENABLED
    )  # fmt: skip
    onednn_training.ENABLED = onednn.ENABLED = True
    yield
    torch.set_num_threads(threads)
    onednn_training.ENABLED, onednn.ENABLED = enabled, evaluation
    onednn_training._checked.cache_clear()


def gradients(model, x, y, enabled: bool, backwards: int = 1):
    """Every parameter's gradient after ``backwards`` passes in the training block, the ops run,
    and the output of the first pass."""
    onednn_training.ENABLED = enabled
    params = list(model.parameters())
    with masks_on_gradients(model):  # once uncounted: the per-shape checks run here
        F.cross_entropy(model(x), y).backward()
    for p in params:
        p.grad = None
    outputs = []
    with masks_on_gradients(model), Counted() as calls:
        for _ in range(backwards):
            out = model(x)
            outputs.append(out.detach().clone())
            F.cross_entropy(out, y).backward()
    return [p.grad.clone() for p in params], calls.counts, outputs[0]


def half_pruned(module: nn.Linear) -> torch.Tensor:
    prune.identity(module, "weight")
    mask = torch.ones_like(module.weight_mask)
    mask.view(-1)[::2] = 0
    module.weight_mask.copy_(mask)
    return mask


def hidden_layer_model() -> tuple[nn.Module, torch.Tensor]:
    """A small input layer (left to torch) feeding a large hidden one (784x300)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 784), nn.ReLU(), nn.Linear(784, 300), nn.ReLU(),
                          nn.Linear(300, 10))  # fmt: skip
    for layer in (model[0], model[4]):
        prune.identity(layer, "weight")
    return model, half_pruned(model[2])


@pytest.mark.parametrize("backwards", [1, 2])
def test_a_hidden_layer_takes_its_weight_gradient_from_onednn_with_autograd_bits(backwards):
    model, mask = hidden_layer_model()
    x, y = torch.randn(60, 16), torch.arange(60) % 10
    fast, fast_ops, fast_out = gradients(model, x, y, True, backwards)
    plain, plain_ops, plain_out = gradients(model, x, y, False, backwards)
    assert fast_ops[ONEDNN] == backwards and ONEDNN not in plain_ops  # the weight gradient
    assert torch.equal(fast_out, plain_out)  # the hidden layer's forward stays on torch
    for a, b in zip(fast, plain, strict=True):
        assert torch.equal(a, b)
    grad = model[2].weight_orig.grad
    assert bool((grad[mask == 0] == 0).all()) and bool((grad[mask == 1] != 0).any())
    assert not [m for m in model.modules() if "forward" in m.__dict__]  # forwards restored


@pytest.mark.parametrize("backwards", [1, 2])
def test_an_input_layer_runs_forward_and_gradients_on_onednn_within_rounding(
    plugins, sample_data, backwards
):
    model = trained_lenet(plugins, sample_data)
    x, y = sample_data.train_x[:60], sample_data.train_y[:60]
    fast, fast_ops, fast_out = gradients(model, x, y, True, backwards)
    plain, plain_ops, plain_out = gradients(model, x, y, False, backwards)
    assert fast_ops[ONEDNN] == 2 * backwards and ONEDNN not in plain_ops  # forward, weight grad
    assert torch.allclose(fast_out, plain_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast, plain, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    grad = first.weight_orig.grad
    assert bool((grad[first.weight_mask == 0] == 0).all())
    assert bool((grad[first.weight_mask == 1] != 0).any())


def test_the_same_gradients_on_one_thread_as_on_many(plugins, sample_data):
    model = trained_lenet(plugins, sample_data)
    x, y = sample_data.train_x[:60], sample_data.train_y[:60]
    torch.set_num_threads(1)
    one = gradients(model, x, y, True)
    torch.set_num_threads(2)
    many = gradients(model, x, y, True)
    assert ONEDNN in one[1] and ONEDNN in many[1]
    assert torch.equal(one[2], many[2])
    for a, b in zip(one[0], many[0], strict=True):
        assert torch.equal(a, b)


def test_a_run_is_reproducible_and_close_to_torchs_own_gemms(plugins, sample_data, tmp_path):
    def run(enabled: bool, name: str):
        onednn_training.ENABLED = enabled
        config = make_config(**{**TINY, "rounds": 2, "seed": 5})
        exp = Experiment(config, plugins=plugins, data=sample_data)
        result = exp.run(tmp_path / name, progress=False)
        return result.results.drop(columns="time_s"), result.history, exp.model.state_dict()

    first, again, plain = run(True, "a"), run(True, "b"), run(False, "torch")
    pd.testing.assert_frame_equal(first[0], again[0])
    pd.testing.assert_frame_equal(first[1], again[1])
    for key in first[2]:
        assert torch.equal(first[2][key], again[2][key]), key
    # 50 steps apart from torch's GEMMs: rounding, not a different computation
    row, ref = first[1].iloc[0], plain[1].iloc[0]
    assert row["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-4)
    assert row["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-4)


def test_an_input_changed_in_place_after_the_forward_is_an_error_as_in_autograd():
    hidden, _ = hidden_layer_model()
    first = nn.Linear(784, 300)
    half_pruned(first)
    for model, rows in ((first, torch.randn(60, 784)), (hidden, torch.randn(60, 16))):
        for enabled in (True, False):
            onednn_training.ENABLED = enabled
            x = rows.clone()
            with masks_on_gradients(model), pytest.raises(RuntimeError, match="in ?place"):
                h = x if model is first else torch.relu(model[0](x))
                out = model(x) if model is first else model[2](h)
                h.add_(1.0)
                out.sum().backward()


def flawed_op(monkeypatch, where: str):
    real = linear_op()

    def op(x, w, b, *args):
        out = real(x, w, b, *args)
        if where == "everywhere" or b is not None:
            return out + 1e-7 * torch.get_num_threads() * out.abs()
        return out

    monkeypatch.setattr(onednn_training, "linear_op", lambda: op)
    onednn_training._checked.cache_clear()


def test_gemms_whose_sums_depend_on_the_threads_stay_on_torch(monkeypatch):
    layer = nn.Linear(784, 300)
    half_pruned(layer)
    x = torch.randn(60, 784)
    flawed_op(monkeypatch, "forward")
    assert onednn_training.allowed(layer, x) == onednn_training.Allowed(weight_grad=True)
    flawed_op(monkeypatch, "everywhere")
    assert onednn_training.allowed(layer, x) == onednn_training.NOTHING
    with masks_on_gradients(layer), Calls() as calls:
        layer(x).sum().backward()
    assert ONEDNN not in calls.names


def test_small_layers_other_dtypes_and_the_switch_stay_on_torch():
    big, x = nn.Linear(784, 300), torch.randn(60, 784)
    assert onednn_training.allowed(big, x).forward
    assert (
        onednn_training.allowed(nn.Linear(10, 10), torch.randn(60, 10)) == onednn_training.NOTHING
    )
    assert onednn_training.allowed(big.double(), x.double()) == onednn_training.NOTHING
    onednn_training.ENABLED = False
    assert onednn_training.allowed(big.float(), x) == onednn_training.NOTHING


def test_evaluation_inside_the_training_block_still_runs_on_onednn(plugins, sample_data):
    model = trained_lenet(plugins, sample_data)
    with masks_on_gradients(model):
        trained = {m: m.__dict__["forward"] for m in model.modules() if "forward" in m.__dict__}
        assert trained
        with Calls() as calls:
            training.evaluate(model, sample_data.val_x, sample_data.val_y)
        assert "aten::linear" not in calls.names and ONEDNN in calls.names
        assert {m: m.__dict__["forward"] for m in trained} == trained
    assert not [m for m in model.modules() if "forward" in m.__dict__]
