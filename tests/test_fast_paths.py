"""The training loop's fast paths change no number: masks on gradients instead of the pruning
pre-hook, and intra-op threads chosen by speed (with oneDNN's training GEMMs too)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from lottery_core import masks, onednn_training, threads, training
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.grad_masking import masks_on_gradients

from .conftest import TINY


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(plugins, data, tmp_path, name: str):
    """A 3-round run; returns its results (time aside), history and final state_dict."""
    config = make_config(**{**TINY, "rounds": 3, "seed": 5})
    exp = Experiment(config, plugins=plugins, data=data)
    result = exp.run(tmp_path / name, progress=False)
    return result.results.drop(columns=["time_s"]), result.history, exp.model.state_dict()


def assert_same_run(first, second) -> None:
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])
    assert first[2].keys() == second[2].keys()
    for key in first[2]:
        assert torch.equal(first[2][key], second[2][key]), key


def test_masks_on_gradients_trains_to_the_bits_of_the_pruning_pre_hook(
    plugins, sample_data, tmp_path, monkeypatch
):
    # torch's own GEMMs on both sides (oneDNN's forward rounds differently: test_onednn_training)
    monkeypatch.setattr(onednn_training, "ENABLED", False)
    fast = run(plugins, sample_data, tmp_path, "fast")
    monkeypatch.setattr(training, "masks_on_gradients", lambda model: contextlib.nullcontext())
    hooked = run(plugins, sample_data, tmp_path, "hooked")
    assert_same_run(fast, hooked)


def pruned_lenet(plugins):
    exp = Experiment(make_config(**TINY), plugins=plugins)
    exp.build_model()
    layer = exp.layers[0]
    new = masks.current_masks(exp.layers)
    new[layer.name].view(-1)[::3] = 0
    masks.apply_masks(exp.layers, new)
    return exp.model, layer


def hooks(module):
    return module._forward_pre_hooks.values()


def test_the_block_computes_with_weight_orig_and_masks_its_gradient(plugins):
    model, layer = pruned_lenet(plugins)
    module, mask = layer.module, layer.mask
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 784), torch.arange(8)
    with masks_on_gradients(model):
        assert module.weight is layer.weight_orig
        assert not any(isinstance(h, prune.BasePruningMethod) for h in hooks(module))
        assert bool((layer.weight_orig[mask == 0] == 0).all())
        F.cross_entropy(model(x), y).backward()
        grad = layer.weight_orig.grad
        assert bool((grad[mask == 0] == 0).all()) and bool((grad[mask == 1] != 0).any())
    assert any(isinstance(h, prune.BasePruningMethod) for h in hooks(module))
    assert torch.equal(module.weight, layer.weight_orig * mask)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # pruned entries of weight_orig restored


def test_the_reparametrisation_is_restored_after_an_error(plugins):
    model, layer = pruned_lenet(plugins)
    before = layer.weight_orig.detach().clone()
    with pytest.raises(ValueError), masks_on_gradients(model):
        raise ValueError("boom")
    assert torch.equal(layer.weight_orig, before)
    assert layer.module.weight is not layer.weight_orig
    model(torch.randn(2, 784)).sum().backward()  # the pre-hook path works again
    assert bool((layer.weight_orig.grad[layer.mask == 0] == 0).all())


class Flipping(threads.ThreadGovernor):
    """Changes the thread count after every single step."""

    def step_done(self) -> None:
        self._use(1 if self.threads > 1 else self.many, 1)


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
def test_the_thread_count_cannot_change_the_numbers(plugins, sample_data, tmp_path, monkeypatch):
    x, y = sample_data.train_x[:60], sample_data.train_y[:60]
    probe = Experiment(make_config(**TINY), plugins=plugins)
    probe.build_model()
    model = probe.model
    if not threads.same_bits(model, x, y, torch.get_num_threads()):
        pytest.skip("this machine's GEMMs are not reproducible across thread counts")
    monkeypatch.setattr(training, "ADAPTIVE_THREADS", False)
    fixed = run(plugins, sample_data, tmp_path, "fixed")
    assert training.last_plan.train_threads == 1
    monkeypatch.setattr(training, "ADAPTIVE_THREADS", True)
    monkeypatch.setattr(threads, "ThreadGovernor", Flipping)
    flipping = run(plugins, sample_data, tmp_path, "flipping")
    assert training.last_plan.governor.switches > 100
    assert_same_run(fixed, flipping)


# -- the governor, on a clock that advances by the cost of a step on the current count --------


class Machine:
    def __init__(self, cost: dict[int, float]):
        self.cost = dict(cost)
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def steps(self, governor: threads.ThreadGovernor, count: int) -> list[int]:
        used = []
        for _ in range(count):
            used.append(governor.threads)
            self.now += self.cost[governor.threads]
            governor.step_done()
        return used


def test_an_idle_machine_ends_on_many_threads():
    machine = Machine({1: 1.0e-3, 2: 0.7e-3})
    governor = threads.ThreadGovernor(2, machine.clock)
    used = machine.steps(governor, 5000)
    assert governor.threads == 2 and torch.get_num_threads() == 2
    assert used.count(2) > 0.95 * len(used)


def test_a_busy_machine_keeps_one_thread_and_probes_less_and_less():
    machine = Machine({1: 1.0e-3, 2: 2.0e-3})
    governor = threads.ThreadGovernor(2, machine.clock)
    used = machine.steps(governor, 20_000)
    assert governor.threads == 1
    assert used.count(2) < 0.03 * len(used)  # each probe: two windows, gaps doubling
    assert governor.gap > threads.FIRST_PROBE
    later = machine.steps(governor, 20_000)
    assert later.count(2) <= used.count(2)


def test_a_stalled_step_sends_it_back_to_one_thread_at_once():
    machine = Machine({1: 1.0e-3, 2: 0.7e-3})
    governor = threads.ThreadGovernor(2, machine.clock)
    machine.steps(governor, 500)
    assert governor.threads == 2
    machine.cost[2] = 0.2  # another process took the second core
    used = machine.steps(governor, 1)
    assert used == [2] and governor.threads == 1


def test_evaluation_is_not_charged_to_a_step_and_restores_the_threads():
    machine = Machine({1: 1.0e-3, 2: 0.7e-3})
    governor = threads.ThreadGovernor(2, machine.clock)
    plan = training.ThreadPlan(governor=governor, eval_threads=1)
    machine.steps(governor, 500)
    for _ in range(20):
        with plan.evaluating():
            assert torch.get_num_threads() == 2  # on many threads, evaluation stays there
            machine.now += 5.0  # a long evaluation
        assert torch.get_num_threads() == 2
        machine.steps(governor, 10)
    assert governor.threads == 2
    fixed = training.ThreadPlan(eval_threads=1)  # no governor: torch's count for training
    with fixed.evaluating():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


DETECTOR = """
import torch, torch.nn.functional as F
from torch import nn
import lottery_core
from lottery_core import threads
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                      nn.Linear(100, 10))
x, y = torch.randn(60, 784), torch.randint(0, 10, (60,))
direct = []
for count in (1, 2):
    torch.set_num_threads(count)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    direct.append([p.grad.clone() for p in model.parameters()])
agree = all(torch.equal(a, b) for a, b in zip(*direct))
print(agree, threads.same_bits(model, x, y, 2))
"""


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
@pytest.mark.parametrize("mode", ["AUTO,STRICT", ""])
def test_same_bits_tells_whether_the_thread_count_changes_the_gradients(mode):
    """With MKL's strict CNR mode (what ``lottery_core`` sets) the check passes; with it
    switched off, MKL sums the output layer's gradient by thread count, and the check must
    say so, whatever this machine's BLAS does."""
    env = {**os.environ, "MKL_CBWR": mode}
    out = subprocess.run(
        [sys.executable, "-c", DETECTOR], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == out[1]
    if mode:
        assert out == ["True", "True"]


def test_one_slow_window_on_many_threads_is_not_enough_to_leave_them():
    machine = Machine({1: 1.0e-3, 2: 0.7e-3})
    governor = threads.ThreadGovernor(2, machine.clock)
    machine.steps(governor, 500)
    assert governor.threads == 2
    machine.cost[2] = 1.5e-3  # a burst of load for one window
    machine.steps(governor, threads.WINDOW)
    machine.cost[2] = 0.7e-3
    machine.steps(governor, 500)
    assert governor.threads == 2 and governor.switches == 1
    machine.cost[2] = 1.5e-3  # lasting load: two windows lost in a row
    used = machine.steps(governor, 3 * threads.WINDOW)
    assert governor.threads == 1 and threads.WINDOW < used.count(2) <= 2 * threads.WINDOW


def test_many_threads_stay_when_they_are_only_within_the_margin_slower():
    machine = Machine({1: 1.0e-3, 2: 1.05e-3})
    governor = threads.ThreadGovernor(2, machine.clock)
    used = machine.steps(governor, 5000)
    assert governor.threads == 2 and used.count(2) > 0.95 * len(used)
    machine.cost[2] = 1.2e-3  # clearly slower: it leaves
    machine.steps(governor, 3 * threads.WINDOW)
    assert governor.threads == 1
