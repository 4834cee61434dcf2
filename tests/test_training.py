"""The training step as PyTorch ships the re-parametrisation, and the ``threads`` rule."""

from __future__ import annotations

import json
import re

import pandas as pd
import torch
from torch.nn.utils import prune

from lottery_core import masks, runs
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.resolution import default_threads
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
        for name in names:
            assert not re.search(rf"""["']{name}["']""", text), f"{path.name} names {name!r}"
