"""Using a ticket in your own code (``lottery_core.tickets``), checked against real runs: the
run's own split, its recorded accuracies, its masks, and torch's thread count given back."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn.utils import prune

import lottery_core
from lottery_core import masks
from lottery_core.config import config_of
from lottery_core.errors import LotteryError
from lottery_core.export import export_ticket, load_ticket
from lottery_core.loading import load_data
from lottery_core.rundir import read_meta
from lottery_core.tickets import (
    TicketData,
    evaluate,
    thread_rule,
    ticket_data,
    train_ticket,
    use_tool_threads,
)
from lottery_core.training import EVAL_CHUNK
from lottery_core.training import evaluate as run_evaluate
from tests.conftest import TINY, run_into

BUDGET = dict(TINY, rounds=2, seed=3, threads=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_data) -> Path:
    return run_into(tmp_path_factory.mktemp("tickets") / "run", BUDGET, sample_data)


@pytest.fixture(scope="module")
def other_split(tmp_path_factory) -> Path:
    """A run on another validation split (its own seed and size): loads its own data."""
    return run_into(
        tmp_path_factory.mktemp("split") / "run",
        BUDGET,
        rounds=1,
        iterations=20,
        eval_every=10,
        split_seed=7,
        validation_size=300,
    )


def digest(data) -> dict[str, str]:
    """A checksum of every split's images and labels."""
    return {
        name: hashlib.sha256(
            getattr(data, f"{name}_x").numpy().tobytes()
            + getattr(data, f"{name}_y").numpy().tobytes()
        ).hexdigest()
        for name in ("train", "val", "test")
    }


def sizes(data) -> dict[str, int]:
    return {name: len(getattr(data, f"{name}_x")) for name in ("train", "val", "test")}


# --- ticket_data ------------------------------------------------------------------------------


def test_ticket_data_is_the_runs_own_split(run, other_split, plugins, tmp_path):
    for folder in (run, other_split):
        meta = read_meta(folder)
        expected = load_data(config_of(meta), plugins)
        export_ticket(folder, 0, tmp_path / "t.pt")
        for source in (folder, tmp_path / "t.pt", folder / "ticket.pt"):
            data = ticket_data(source)
            assert isinstance(data, TicketData) and isinstance(data, lottery_core.DatasetSplits)
            assert sizes(data) == meta["data_sizes"]
            assert digest(data) == digest(expected)
            assert data.source == meta["data_source"]
            assert (
                data.config is not None and data.config.split_seed == meta["config"]["split_seed"]
            )
    assert sizes(ticket_data(other_split))["val"] == 300
    assert digest(ticket_data(other_split))["val"] != digest(ticket_data(run))["val"]


def test_stored_images_and_the_float_views(run):
    data = ticket_data(run)
    assert data.test_x.dtype == torch.uint8  # the built-ins store pixels; the views normalise
    x, y = data.normalised("test")
    assert x.dtype == torch.float32 and torch.equal(x, data.images(data.test_x))
    assert torch.equal(y, data.test_y)
    batches = list(data.batches("val", batch_size=128))
    assert [len(b[0]) for b in batches] == [128, 128, 128, 116]
    assert torch.equal(torch.cat([b[0] for b in batches]), data.normalised("val")[0])
    shuffled = list(data.batches("val", batch_size=128, seed=1))
    labels = torch.cat([b[1] for b in shuffled])
    assert not torch.equal(labels, data.val_y)
    assert torch.equal(labels.sort().values, data.val_y.sort().values)
    assert isinstance(data.to("cpu"), TicketData) and data.to("cpu").config == data.config
    with pytest.raises(LotteryError, match="unknown split 'validation'"):
        data.normalised("validation")
    with pytest.raises(LotteryError, match="unknown split 'valid'"):
        data.batches("valid")


def test_ticket_data_says_what_is_wrong(run, tmp_path):
    with pytest.raises(LotteryError, match="does not exist"):
        ticket_data(tmp_path / "nowhere.pt")
    shutil.copy(run / "ticket.pt", tmp_path / "moved.pt")
    with pytest.raises(LotteryError, match="records no config"):
        ticket_data(tmp_path / "moved.pt")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "config.json").read_text())
    meta["data_sizes"]["val"] += 1
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LotteryError, match="not what its run trained on"):
        ticket_data(copy)


# --- evaluate ---------------------------------------------------------------------------------


def test_a_trained_ticket_evaluates_to_the_runs_final_test(run, tmp_path):
    results = pd.read_csv(run / "results.csv").set_index("round")
    last = int(results.index.max())
    export_ticket(run, last, tmp_path / "trained.pt", trained=True)
    model = load_ticket(tmp_path / "trained.pt").train()
    data = ticket_data(tmp_path / "trained.pt")
    got = evaluate(model, data, "test")
    assert got["accuracy"] == results.loc[last, "final_test"]  # CSV keeps full precision
    assert got["examples"] == len(data.test_x)
    loss, accuracy = run_evaluate(model, data.test_x, data.test_y, data.images)
    assert (got["loss"], got["accuracy"]) == (loss, accuracy)
    assert model.training  # its mode is given back
    small = evaluate(model, data, "test", batch_size=EVAL_CHUNK // 8)
    assert small["accuracy"] == got["accuracy"]
    assert small["loss"] == pytest.approx(got["loss"], rel=1e-6)


# --- train_ticket -----------------------------------------------------------------------------


def test_training_a_round_0_ticket_gives_the_runs_round_0(run, tmp_path):
    results = pd.read_csv(run / "results.csv").set_index("round")
    history = pd.read_csv(run / "history.csv")
    export_ticket(run, 0, tmp_path / "r0.pt")
    config = read_meta(run)["config"]
    outcome = train_ticket(
        load_ticket(tmp_path / "r0.pt"), ticket_data(run), iterations=config["iterations"]
    )
    assert outcome.settings["seed"] == config["seed"]
    assert outcome.settings["batch_size"] == config["batch_size"]
    assert (
        outcome.es_iteration,
        outcome.es_val_acc,
        outcome.es_test_acc,
        outcome.final_test_acc,
    ) == tuple(results.loc[0, ["ES", "val", "test", "final_test"]])
    round_0 = history[history["round"] == 0].reset_index(drop=True)
    assert outcome.history["val_loss"].tolist() == round_0["val_loss"].tolist()
    assert outcome.flag == ""


def test_training_keeps_pruned_weights_at_zero_and_the_masks(run, tmp_path):
    export_ticket(run, 1, tmp_path / "r1.pt")
    model = load_ticket(tmp_path / "r1.pt")
    layers = masks.prunable_layers(model)
    before_masks = masks.current_masks(layers)
    before_orig = {layer.name: layer.weight_orig.detach().clone() for layer in layers}
    outcome = train_ticket(model, ticket_data(run), iterations=60, eval_every=30, seed=11)
    assert len(outcome.history) == 2 and outcome.remaining < 100.0
    changed = False
    for layer in layers:
        pruned = before_masks[layer.name] == 0
        assert pruned.any()
        assert torch.equal(layer.mask, before_masks[layer.name])
        assert prune.is_pruned(layer.module)
        assert bool((layer.weight[pruned] == 0).all())
        assert torch.equal(layer.weight_orig[pruned], before_orig[layer.name][pruned])
        changed |= not torch.equal(layer.weight_orig, before_orig[layer.name])
    assert changed  # it did train


def test_a_model_without_masks_is_refused(run, tmp_path):
    export_ticket(run, 1, tmp_path / "plain.pt", pruned=True)
    plain = torch.load(tmp_path / "plain.pt", weights_only=False)
    with pytest.raises(LotteryError, match="carry no mask"):
        train_ticket(plain, ticket_data(run), iterations=10)


# --- the thread rule --------------------------------------------------------------------------


@pytest.fixture
def three_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def test_the_thread_rule_is_given_back(three_threads, run, tmp_path):
    with use_tool_threads(2) as rule:
        assert torch.get_num_threads() == 1  # the adaptive rule starts on one thread
        assert rule.most == 2
    assert torch.get_num_threads() == 3
    with use_tool_threads(2, adaptive=False):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 3
    with pytest.raises(RuntimeError), use_tool_threads():
        raise RuntimeError("a failing loop")
    assert torch.get_num_threads() == 3
    export_ticket(run, 1, tmp_path / "r1.pt")
    model = load_ticket(tmp_path / "r1.pt")
    data = ticket_data(run)
    evaluate(model, data, "val")
    assert torch.get_num_threads() == 3
    train_ticket(model, data, iterations=20, eval_every=10)
    assert torch.get_num_threads() == 3
    with pytest.raises(LotteryError, match="threads must be a positive integer"):
        thread_rule(0)


def test_the_helpers_are_public_names():
    for name in (
        "ticket_data",
        "evaluate",
        "train_ticket",
        "use_tool_threads",
        "thread_rule",
        "load_ticket",
        "get_plugins",
        "DataRequest",
        "DatasetSplits",
        "TicketData",
    ):
        assert name in lottery_core.__all__
        assert getattr(lottery_core, name) is not None
