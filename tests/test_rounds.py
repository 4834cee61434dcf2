"""The round loop: reinitialisation policies, early-stopping arithmetic, determinism, resume."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from lottery_core import masks, runs
from lottery_core.config import make_config
from lottery_core.errors import PluginError
from lottery_core.experiment import Experiment, RunState
from lottery_core.progress import Progress

from .conftest import TINY


def experiment(plugins, data, **changes) -> Experiment:
    # One thread: on a busy machine two threads a run cost several times the CPU, and the
    # numbers do not depend on it (tests/test_training.py).
    config = make_config(**{**TINY, "rounds": 3, "threads": 1, **changes})
    return Experiment(config, plugins=plugins, data=data)


def trained_round_zero(plugins, data, **changes) -> tuple[Experiment, RunState, dict]:
    """An experiment after its dense round: returns the trained parameters too."""
    exp = experiment(plugins, data, **changes)
    state = exp.start()
    with Progress(0, enabled=False) as bar:
        exp.train(state, 0, bar)
    return exp, state, exp.snapshot()


def survivors_and_biases(exp: Experiment) -> dict[str, torch.Tensor]:
    mask_of = {f"{ly.name}.weight_orig": ly.mask.bool() for ly in exp.layers}
    return {
        name: (p.detach()[mask_of[name]] if name in mask_of else p.detach())
        for name, p in exp.parameters().items()
    }


def test_rewind_resets_every_survivor_and_bias_to_its_initial_value_exactly(plugins, sample_data):
    exp, state, trained = trained_round_zero(plugins, sample_data, reinit="rewind")
    assert not torch.equal(trained["1.weight_orig"], state.initial_state["1.weight_orig"])
    exp.prune(state, 1)
    exp.reinitialise(state, 1)
    for layer in exp.layers:
        alive = layer.mask.bool()
        initial = state.initial_state[f"{layer.name}.weight_orig"]
        assert torch.equal(layer.weight_orig.detach()[alive], initial[alive])
        assert torch.equal(layer.module.bias.detach(), state.initial_state[f"{layer.name}.bias"])
        assert torch.all(layer.module.weight[~alive] == 0)


def test_random_reinit_keeps_masks_and_draws_new_values(plugins, sample_data):
    exp, state, trained = trained_round_zero(plugins, sample_data, reinit="random")
    exp.prune(state, 1)
    pruned_masks = masks.current_masks(exp.layers)
    exp.reinitialise(state, 1)
    after = masks.current_masks(exp.layers)
    for layer in exp.layers:
        key = f"{layer.name}.weight_orig"
        assert torch.equal(after[layer.name], pruned_masks[layer.name])
        alive = layer.mask.bool()
        now = layer.weight_orig.detach()[alive]
        assert not torch.equal(now, state.initial_state[key][alive])
        assert not torch.equal(now, trained[key][alive])
        # Same distribution: Gaussian Glorot, std sqrt(2 / (fan_in + fan_out)).
        fan_out, fan_in = layer.weight_orig.shape[0], layer.weight_orig[0].numel()
        expected_std = (2 / (fan_in + fan_out)) ** 0.5
        assert layer.weight_orig.detach().std().item() == pytest.approx(expected_std, rel=0.1)


def test_none_keeps_the_trained_values(plugins, sample_data):
    exp, state, trained = trained_round_zero(plugins, sample_data, reinit="none")
    exp.prune(state, 1)
    exp.reinitialise(state, 1)
    for name, value in exp.parameters().items():
        assert torch.equal(value.detach(), trained[name])


def test_late_rewinding_resets_to_the_weights_at_iteration_k(plugins, sample_data):
    k = 40
    short = experiment(plugins, sample_data, iterations=k, eval_every=k, rounds=1)
    short_state = short.start()
    with Progress(0, enabled=False) as bar:
        short.train(short_state, 0, bar)
    at_k = short.snapshot()

    exp, state, _ = trained_round_zero(plugins, sample_data, rewind_iter=k)
    for name, value in at_k.items():
        assert torch.equal(state.rewind_state[name], value)
    exp.prune(state, 1)
    exp.reinitialise(state, 1)
    for layer in exp.layers:
        alive = layer.mask.bool()
        expected = at_k[f"{layer.name}.weight_orig"][alive]
        assert torch.equal(layer.weight_orig.detach()[alive], expected)
    assert exp.settings(1).start_iteration == k


@pytest.fixture(scope="module")
def three_rounds(plugins, sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "three"
    exp = experiment(plugins, sample_data, test_every_eval=True)
    return runs.start(exp, out, progress=False)


def test_es_and_accuracies_at_es_follow_from_the_history(three_rounds):
    results, history = three_rounds.results, three_rounds.history
    assert list(results.columns[:5]) == ["round", "remaining", "ES", "val", "test"]
    for _, row in results.iterrows():
        rounds = history[history["round"] == row["round"]]
        assert list(rounds["iteration"]) == [50, 100, 150]
        best = rounds.loc[rounds["val_loss"].idxmin()]
        assert row["ES"] == best["iteration"]
        assert row["val"] == best["val_acc"]
        assert row["val_loss"] == best["val_loss"]
        # Test accuracy at ES, from the snapshot, equals evaluating the test set right there.
        assert row["test"] == pytest.approx(best["test_acc"], abs=1e-9)
        assert row["final_test"] == pytest.approx(rounds.iloc[-1]["test_acc"], abs=1e-9)


def test_remaining_and_masks_across_rounds(three_rounds):
    results, layers = three_rounds.results, three_rounds.layers
    assert [round(x, 1) for x in results["remaining"]] == [100.0, 80.0, 64.1]
    totals = layers.groupby("round")["remaining"].sum()
    assert list(totals) == list(results["weights"])
    output = layers[layers["kind"] == "output"]
    assert list(output["remaining"]) == [1000, 900, 810]
    assert list(output["target_pct"].round(6)) == [100.0, 90.0, 81.0]


def test_same_seed_same_results_and_another_seed_differs(plugins, sample_data, tmp_path):
    def table(seed, name):
        exp = experiment(plugins, sample_data, seed=seed)
        return runs.start(exp, tmp_path / name, progress=False).results.drop(columns=["time_s"])

    first, second, other = table(3, "a"), table(3, "b"), table(4, "c")
    pd.testing.assert_frame_equal(first, second)
    assert not first[["val", "test"]].equals(other[["val", "test"]])
    assert (
        (tmp_path / "a" / "results.csv")
        .read_text()
        .splitlines()[0]
        .startswith("round,remaining,ES,val,test")
    )


def test_a_resumed_run_equals_an_uninterrupted_one(plugins, sample_data, tmp_path):
    from lottery_core.api import resume_experiment

    whole = runs.start(experiment(plugins, sample_data, rounds=4), tmp_path / "whole",
                       progress=False)  # fmt: skip
    runs.start(experiment(plugins, sample_data, rounds=4), tmp_path / "cut", progress=False,
               stop_after=2)  # fmt: skip
    assert len(pd.read_csv(tmp_path / "cut" / "results.csv")) == 2
    resumed = resume_experiment(tmp_path / "cut", progress=False, plugins=plugins)
    columns = [c for c in whole.results.columns if c != "time_s"]
    pd.testing.assert_frame_equal(whole.results[columns], resumed.results[columns])
    pd.testing.assert_frame_equal(whole.history, resumed.history)


def test_the_rewind_invariant_catches_a_survivor_that_moved(plugins, sample_data):
    from lottery_core.invariants import check_rewound

    exp, state, _ = trained_round_zero(plugins, sample_data)
    exp.prune(state, 1)
    exp.reinitialise(state, 1)  # passes: everything was rewound
    layer = exp.layers[0]
    alive = layer.mask.nonzero()[0].tolist()
    with torch.no_grad():
        layer.weight_orig[tuple(alive)] += 1e-7
    with pytest.raises(PluginError, match="differs from its rewind value"):
        check_rewound(exp.parameters(), state.rewind_state, exp.layers)
    dead = (layer.mask == 0).nonzero()[0].tolist()
    with torch.no_grad():
        layer.weight_orig[tuple(alive)] -= 1e-7
        layer.weight_orig[tuple(dead)] += 5.0  # pruned entries of weight_orig may hold anything
    check_rewound(exp.parameters(), state.rewind_state, exp.layers)
