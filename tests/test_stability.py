"""Stability (Frankle et al. 2020): the definitions (barrier, stable, matching), the batched
evaluation against one-at-a-time evaluation, the replay of the dense weights at iteration k,
the copies' defining property (same start, own data order), the tables, resume, the refusals and
the barrier between successive rounds.

Every check reads what the analysis wrote to disk (checkpoints verified, CSV files), not what
the code meant to write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from lottery_core import (
    branch_analysis,
    branches,
    checkpoint,
    connectivity,
    paths,
    rundir,
    stability,
)
from lottery_core.api import run_stability
from lottery_core.batched_eval import evaluate_states
from lottery_core.errors import LotteryError, PluginError
from lottery_core.training import evaluate

from .conftest import TINY, run_into

BUDGET = {**TINY, "rounds": 3, "iterations": 100, "threads": 1}


# -- the definitions ------------------------------------------------------------------------


def test_the_barrier_is_the_highest_error_minus_the_ends_mean():
    assert connectivity.barrier([10.0, 12.0, 30.0, 14.0]) == pytest.approx(18.0)
    assert connectivity.barrier([10.0, 11.0, 12.0]) == pytest.approx(1.0)  # the end is the max
    assert connectivity.barrier([10.0, 5.0, 10.0]) == 0.0  # a dip is no barrier
    assert connectivity.stable(1.99) and not connectivity.stable(2.0)
    assert connectivity.matching(97.8, 98.0) and not connectivity.matching(97.79, 98.0)


def test_the_path_has_evenly_spaced_points_and_exact_ends():
    grid = connectivity.alphas(30)
    assert len(grid) == 30 and grid[0] == 0.0 and grid[-1] == 1.0
    steps = [b - a for a, b in zip(grid, grid[1:], strict=False)]
    assert max(steps) - min(steps) < 1e-12
    one = {"w": torch.randn(4, 3), "n": torch.tensor(7)}
    two = {"w": torch.randn(4, 3), "n": torch.tensor(9)}
    points = connectivity.path(one, two, 5)
    assert torch.equal(points[0]["w"], one["w"]) and torch.equal(points[-1]["w"], two["w"])
    assert torch.allclose(points[2]["w"], (one["w"] + two["w"]) / 2)
    assert all(int(p["n"]) == 7 for p in points)  # an integer buffer is the first's
    assert connectivity.distance(one, two) == pytest.approx(float((one["w"] - two["w"]).norm()))


def test_a_function_state_is_the_masked_weight():
    weight = torch.randn(3, 4)
    mask = torch.rand(3, 4) > 0.5
    state = {"fc.weight_orig": weight, "fc.weight_mask": mask.float(), "fc.bias": torch.ones(3)}
    got = connectivity.function_state(state, {"fc": mask})
    assert set(got) == {"fc.weight", "fc.bias"}
    assert torch.equal(got["fc.weight"], weight * mask)


# -- batched evaluation ---------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["lenet_fc", "conv2"])
def test_batched_evaluation_equals_one_at_a_time(plugins, sample_data, model_name):
    """Every point of a path evaluated in batched forwards gives the one-at-a-time figure: the
    accuracy exactly, the loss to 1e-6 relative (to the last printed digit)."""
    spec = plugins.models.get(model_name)
    data = sample_data
    if model_name == "conv2":  # a 3-channel 32x32 model: the sample's digits padded and tiled
        pad = torch.nn.functional.pad(data.test_x[:300], (2, 2, 2, 2)).repeat(1, 3, 1, 1)
        x, y, images = pad, data.test_y[:300], lambda t: t.float() / 255.0
        model = spec.build((3, 32, 32), 10)
    else:
        x, y, images = data.test_x, data.test_y, data.images
        model = spec.build(data.input_shape, data.num_classes)
    ends = []
    for seed in (1, 2):
        spec.init(model, torch.Generator().manual_seed(seed))
        ends.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    points = connectivity.path(ends[0], ends[1], 7)
    batched = evaluate_states(model, points, x, y, images, group=3)  # groups of 3, 3 and 1
    for state, (loss, accuracy) in zip(points, batched, strict=True):
        model.load_state_dict(state)
        one_loss, one_accuracy = evaluate(model, x, y, images)
        assert accuracy == one_accuracy
        assert loss == pytest.approx(one_loss, rel=1e-6)
        assert f"{100 - accuracy:.2f} {loss:.4f}" == f"{100 - one_accuracy:.2f} {one_loss:.4f}"


# -- the copies ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trunk(tmp_path_factory) -> Path:
    """A finished 3-round IMP run on the MNIST sample that rewinds to iteration 40 and keeps
    every round's trained weights; copied per test that writes into it."""
    return run_into(tmp_path_factory.mktemp("trunk") / "run", BUDGET, rewind_iter=40,
                    keep_trained=True)  # fmt: skip


@pytest.fixture
def own_trunk(trunk, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trunk, copy)
    return copy


def body_of(folder: Path) -> dict:
    return rundir.verified(folder, rundir.read_meta(folder))


def test_the_weights_at_k_are_the_trunks_own_replayed(tmp_path, plugins, sample_data, trunk):
    """weights_at(40) on a run that never rewound replays round 0 to iteration 40: the θk a
    run that rewinds to 40 saved, bit for bit."""
    plain = run_into(tmp_path / "plain", {**BUDGET, "rounds": 1}, data=sample_data)
    replay = branches._replay(branches.open_trunk(plain), plugins, sample_data)
    replayed = replay(40, None)
    saved = body_of(trunk)["rewind_state"]
    assert set(replayed) == set(saved)
    assert all(torch.equal(replayed[k], saved[k]) for k in saved)
    first = next(k for k in saved if k.endswith("weight_orig"))
    assert not torch.equal(replayed[first], body_of(plain)["initial_state"][first])


def test_copies_start_alike_and_differ_only_in_data_order(own_trunk, plugins):
    run_stability(own_trunk, k="40", control="none,reinit,random-prune", copies=2, rounds=[1],
                  progress=False, plugins=plugins)  # fmt: skip
    trunk_masks = branches.open_trunk(own_trunk).masks(1)
    for folder in paths.branch_sets(own_trunk):
        control = json.loads((folder / paths.BRANCH).read_text())["options"]["control"]
        bodies = [body_of(paths.branch_dir(folder, 1, t)) for t in (0, 1)]
        metas = [rundir.read_meta(paths.branch_dir(folder, 1, t)) for t in (0, 1)]
        starts = [b["rewind_state"] for b in bodies]  # what each copy trained from
        assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])
        masks = [{k: checkpoint.unpack_mask(v) for k, v in b["masks"][1].items()} for b in bodies]
        assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
        assert metas[0]["config"]["seed"] != metas[1]["config"]["seed"]  # own data order
        first = next(k for k in bodies[0]["model"] if k.endswith("weight_orig"))
        ends = [b["model"][first] for b in bodies]
        assert not torch.equal(ends[0], ends[1])
        same = all(torch.equal(masks[0][k], trunk_masks[k]) for k in trunk_masks)
        assert same == (control != "random-prune")
        for name, mask in trunk_masks.items():  # a random mask keeps m_r's count per layer
            assert int(masks[0][name].sum()) == int(mask.sum())
        theta_k = body_of(own_trunk)["rewind_state"][first]
        assert torch.equal(starts[0][first], theta_k) == (control != "reinit")


def test_copy_zero_at_the_rewind_point_is_the_trunks_round(own_trunk, plugins):
    """k = the trunk's rewind point, trial 0 (the trunk's data order): the trunk's round r."""
    result = run_stability(own_trunk, k=40, copies=2, rounds=[2], progress=False,
                           plugins=plugins)  # fmt: skip
    folder = Path(own_trunk) / "branches" / result.table["branch"].iloc[0]
    row = pd.read_csv(paths.branch_dir(folder, 2, 0) / paths.RESULTS).iloc[0]
    trunk_row = pd.read_csv(own_trunk / paths.RESULTS).iloc[2]
    for column in ("remaining", "ES", "val", "test", "final_test", "val_loss", "iterations"):
        assert row[column] == trunk_row[column], column


def test_the_tables_agree_with_the_path_and_resume(own_trunk, plugins):
    result = run_stability(own_trunk, k="0,40", copies=2, rounds="0-1", progress=False,
                           plugins=plugins)  # fmt: skip
    table = pd.read_csv(own_trunk / "stability.csv")
    assert len(table) == 4 and sorted(set(table["k"])) == [0, 40]
    assert len(result.table) == 4
    curve = pd.read_csv(own_trunk / "stability_path.csv")
    for _, row in table.iterrows():
        for split in ("test", "train"):
            points = curve[(curve["branch"] == row["branch"]) & (curve["round"] == row["round"])
                           & (curve["split"] == split)].sort_values("alpha")  # fmt: skip
            assert len(points) == connectivity.ALPHAS
            assert row[f"{split}_barrier"] == pytest.approx(
                connectivity.barrier(list(points["error"])))
        assert row["stable"] == (row["test_barrier"] < 2.0)
        assert row["matching"] == (row["final_test"] >= row["dense_final_test"] - 0.2)
    dense = pd.read_csv(own_trunk / paths.RESULTS).iloc[0]["final_test"]
    assert (table["dense_final_test"] == dense).all()
    markers = sorted(own_trunk.glob("branches/*/round_*/" + paths.ANALYSIS))
    assert len(markers) == 4
    before = {m: m.stat().st_mtime_ns for m in markers}
    checkpoints = {c: c.stat().st_mtime_ns for c in own_trunk.glob("branches/**/checkpoint*")}
    again = run_stability(own_trunk, k="0,40", copies=2, rounds="0-1", progress=False,
                          plugins=plugins)  # fmt: skip
    assert {m: m.stat().st_mtime_ns for m in markers} == before  # nothing analysed again
    assert {c: c.stat().st_mtime_ns for c in checkpoints} == checkpoints  # nothing trained
    pd.testing.assert_frame_equal(again.table, result.table)
    lines = stability.verdict(table)
    assert len(lines) == 2 and all("stable" in line for line in lines)  # a line a subnetwork


def test_refusals_are_one_line_and_write_nothing(own_trunk, plugins):
    def refused(match: str, **kwargs) -> None:
        with pytest.raises(LotteryError, match=match):
            run_stability(own_trunk, progress=False, plugins=plugins, **kwargs)
        assert not (own_trunk / paths.BRANCHES).exists()

    refused("--copies must be at least 2", copies=1)
    refused("not within the trunk's training", k="100")  # the trunk trains 100 iterations
    refused("'sideways'", control="sideways")
    refused("round 3 is not finished", rounds=[3])
    refused("steps '2xs'", k="2xs")
    with pytest.raises(LotteryError, match="at least 2 .*compares its trials"):
        branches.plan_branch("stability", own_trunk, [1], {}, plugins, trials=1)


def test_an_analysis_hands_back_plain_tables():
    ok = {"mine": [{"a": 1, "b": "x", "c": None, "d": True}]}
    assert branch_analysis.check_tables("p", ok) is ok
    for bad, match in [
        ([], "expected a dict"),
        ({"results": []}, "table name 'results'"),
        ({"Bad Name": []}, "table name"),
        ({"mine": [1]}, "not a list of rows"),
        ({"mine": [{"a": torch.ones(1)}]}, "holds a Tensor"),
    ]:
        with pytest.raises(PluginError, match=match):
            branch_analysis.check_tables("p", bad)


def test_the_barrier_between_successive_rounds(own_trunk, plugins, tmp_path, sample_data):
    table = stability.between_rounds(own_trunk, plugins, alphas=5)
    assert list(table["round"]) == [0, 1] and list(table["next_round"]) == [1, 2]
    saved = pd.read_csv(own_trunk / paths.BETWEEN_ROUNDS)
    assert saved["test_barrier"].tolist() == pytest.approx(table["test_barrier"].tolist())
    assert (table["distance"] > 0).all()
    unkept = run_into(tmp_path / "unkept", BUDGET, data=sample_data)
    with pytest.raises(LotteryError, match="--keep-trained"):
        stability.between_rounds(unkept, plugins)


def test_the_command_prints_the_barriers_and_the_verdict(own_trunk, invoke):
    done = invoke("stability", own_trunk, "--k", "0", "--rounds", "1", "--alphas", "5",
                  "--between-rounds", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "test barrier" in done.stdout and "IMP round 1" in done.stdout
    assert "between successive" in done.stdout
    refused = invoke("stability", own_trunk, "--copies", "1")
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "--copies" in refused.stderr
