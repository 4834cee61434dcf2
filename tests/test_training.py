"""The training step as PyTorch ships the re-parametrisation, and the ``threads`` rule."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
from torch.nn.utils import prune

from lottery_core import masks, runs
from lottery_core import threads as threads_module
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.resolution import default_threads
from lottery_core.threads import ThreadRule
from lottery_core.training import TrainSettings, train_round

from .conftest import ROOT, TINY


def test_training_keeps_prunes_pre_hook_and_pruned_weights_at_zero(plugins, sample_data):
    exp = Experiment(make_config(**TINY), plugins=plugins, data=sample_data)
    exp.start()
    new = masks.current_masks(exp.layers)
    for mask in new.values():
        mask.view(-1)[::2] = 0
    masks.apply_masks(exp.layers, new)
    settings = TrainSettings(iterations=60, batch_size=60, lr=1e-3, eval_every=30)
    train_round(exp.model, exp.data, settings, data_seed=1)
    for layer in exp.layers:
        assert prune.is_pruned(layer.module)  # prune's own pre-hook is still in place
        assert torch.equal(layer.module.weight[layer.mask == 0], torch.zeros(()).expand(
            int((layer.mask == 0).sum())))
        assert layer.weight_orig.grad is None or bool(
            (layer.weight_orig.grad[layer.mask == 0] == 0).all()
        )


def test_the_thread_count_changes_no_number_and_is_recorded(plugins, sample_data, tmp_path):
    before = torch.get_num_threads()
    frames = {}
    for threads in (1, 2):
        config = make_config(**{**TINY, "rounds": 3, "threads": threads})
        exp = Experiment(config, plugins=plugins, data=sample_data)
        result = runs.start(exp, tmp_path / f"t{threads}", progress=False)
        frames[threads] = (result.results.drop(columns=["time_s"]), result.history)
        recorded = json.loads((tmp_path / f"t{threads}" / "config.json").read_text())
        assert recorded["config"]["threads"] == threads
        assert recorded["config"]["thread_rule"] == "adaptive"
        assert torch.get_num_threads() == before  # the run gives the caller's setting back
    pd.testing.assert_frame_equal(frames[1][0], frames[2][0])
    pd.testing.assert_frame_equal(frames[1][1], frames[2][1])


def test_the_default_thread_count_is_one_per_usable_core(plugins):
    from lottery_core.resolution import resolve

    assert resolve(make_config(**TINY), plugins).threads == default_threads() >= 1
    assert resolve(make_config(**TINY, threads=1), plugins).threads == 1


def test_the_core_never_names_a_built_in_plugin():
    """Built-ins declare what the core needs (e.g. ``ReinitPolicy.rewinds``); only the config's
    defaults name them."""
    names = ("rewind", "random", "magnitude", "none", "lenet_fc", "mnist")
    for path in sorted((ROOT / "lottery_core").glob("*.py")):
        if path.name == "config.py":
            continue
        text = path.read_text()
        for name in names:  # torch's own keyword values (reduction="none") are not plugins
            found = re.search(rf"""(?<!reduction=)["']{name}["']""", text)
            assert not found, f"{path.name} names {name!r}"


class ProbeAlwaysWins:
    """A clock under which whichever thread count is not the rule's choice looks 2x faster, so
    the rule switches at every probe: the most switching a real clock could cause."""

    def __init__(self) -> None:
        self.now = 0.0
        self.rule: ThreadRule | None = None

    def __call__(self) -> float:
        rule = self.rule
        self.now += 1.0 if rule is None or rule.current == rule.chosen else 0.5
        return self.now


def test_switching_threads_mid_round_changes_no_number(plugins, sample_data, tmp_path, monkeypatch):
    """The adaptive rule may switch between 1 and 2 threads at any segment of any round; the
    results, history and masks are those of a run on one thread, bit for bit."""
    monkeypatch.setattr(threads_module, "SEGMENT_STEPS", 5)
    monkeypatch.setattr(threads_module, "FIRST_GAP", 1)
    monkeypatch.setattr(threads_module, "LONGEST_GAP", 1)
    config = {**TINY, "rounds": 3}
    fixed = Experiment(make_config(**config, threads=1), plugins=plugins, data=sample_data)
    one = runs.start(fixed, tmp_path / "one", progress=False)
    switching = Experiment(make_config(**config, threads=2), plugins=plugins, data=sample_data)
    clock = ProbeAlwaysWins()
    switching.threads = clock.rule = ThreadRule(2, clock=clock)
    both = runs.start(switching, tmp_path / "both", progress=False)
    assert switching.threads.switches >= 20
    assert switching.threads.steps[1] > 100 and switching.threads.steps[2] > 100
    pd.testing.assert_frame_equal(one.results.drop(columns=["time_s"]),
                                  both.results.drop(columns=["time_s"]))  # fmt: skip
    pd.testing.assert_frame_equal(one.history, both.history)
    pd.testing.assert_frame_equal(one.layers, both.layers)


class Clock:
    """A clock whose step time depends on the thread count in use: ``seconds[count]``."""

    def __init__(self, seconds: dict[int, float]) -> None:
        self.now, self.seconds = 0.0, seconds

    def __call__(self) -> float:
        self.now += self.seconds[torch.get_num_threads()]
        return self.now


@pytest.mark.parametrize(("seconds", "best"), [({1: 1.3, 2: 1.0}, 2), ({1: 1.0, 2: 4.0}, 1)])
def test_the_adaptive_rule_settles_on_the_faster_count_and_rarely_probes(seconds, best):
    before = torch.get_num_threads()
    try:
        clock = Clock(seconds)
        rule = ThreadRule(2, clock=clock)
        rule.begin()
        for _ in range(40_000):
            rule.step_done()
        assert rule.chosen == best
        slower = 3 - best
        assert rule.steps[slower] < 0.02 * 40_000  # probes of the slower count: under 2%
    finally:
        torch.set_num_threads(before)


def test_the_rule_leaves_a_count_that_turns_slow_at_once():
    before = torch.get_num_threads()
    try:
        clock = Clock({1: 1.3, 2: 1.0})
        rule = ThreadRule(2, clock=clock)
        rule.begin()
        for _ in range(20_000):
            rule.step_done()
        assert rule.chosen == 2 and rule.gap == threads_module.LONGEST_GAP
        clock.seconds = {1: 1.3, 2: 6.0}  # another process takes a core
        for _ in range(3 * threads_module.SEGMENT_STEPS):
            rule.step_done()
        assert rule.chosen == 1
    finally:
        torch.set_num_threads(before)


def test_fixed_rule_and_one_thread_never_switch():
    before = torch.get_num_threads()
    try:
        for rule in (ThreadRule(2, adaptive=False, clock=Clock({1: 1.0, 2: 9.0})),
                     ThreadRule(1, clock=Clock({1: 1.0, 2: 1.0}))):  # fmt: skip
            rule.begin()
            for _ in range(2_000):
                rule.step_done()
            assert rule.switches == 0 and rule.current == rule.most
    finally:
        torch.set_num_threads(before)


def test_importing_the_package_s_light_modules_loads_no_torch():
    """``lottery_core``'s public names load on first use, so the CLI can start (and answer
    ``--help``) without torch; each public name still resolves."""
    import subprocess
    import sys

    code = ("import sys, lottery_core.errors, lottery_core.config; "
            "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)  # fmt: skip
    assert done.stdout.strip() == "[]", done.stdout
    import lottery_core

    for name in lottery_core.__all__:
        assert getattr(lottery_core, name) is not None


@pytest.mark.parametrize("fused", [True, False])
def test_adam_is_torch_adam_bit_for_bit(fused):
    """lottery_core.optim.Adam makes torch.optim.Adam's update exactly, on a pruned LeNet's
    weight_orig/bias parameters, step after step."""
    from lottery_core.optim import Adam

    from .conftest import pruned_lenet

    ours, theirs = pruned_lenet(), pruned_lenet()
    mine = Adam(list(ours.parameters()), 1.2e-3, fused=fused)
    kind = {"fused": True} if fused else {"foreach": True}
    reference = torch.optim.Adam(theirs.parameters(), lr=1.2e-3, **kind)
    generator = torch.Generator().manual_seed(1)
    for _ in range(30):
        x = torch.randn(60, 784, generator=generator)
        y = torch.randint(0, 10, (60,), generator=generator)
        for model, optimizer in ((ours, mine), (theirs, reference)):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
