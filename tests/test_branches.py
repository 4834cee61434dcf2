"""Branches: each built-in kind's defining property, checked on the networks it writes; the
controls of ``run --controls`` as branches (their masks are the trunk's, bit for bit); the
``branch`` command's refusals and resume; a kept round's trained weights.

Every check reads what the branch wrote to disk (its checkpoint, verified), not what the code
meant to write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from lottery_core import branches, checkpoint, paths, rundir
from lottery_core.api import run_branch, run_experiment, run_trials
from lottery_core.config import make_config

from .conftest import TINY

ROUNDS = 3
BUDGET = {**TINY, "rounds": ROUNDS, "iterations": 100, "threads": 1}


def science(frame: pd.DataFrame) -> pd.DataFrame:
    """A table without its wall times (the one column a rerun may change)."""
    return frame.drop(columns=["time_s"]).reset_index(drop=True)


def network_body(folder: Path) -> dict:
    """A branch network's verified checkpoint body."""
    return rundir.verified(folder, rundir.read_meta(folder))


def network_masks(folder: Path, round_index: int) -> dict[str, torch.Tensor]:
    body = network_body(folder)
    return {k: checkpoint.unpack_mask(v) for k, v in body["masks"][round_index].items()}


def trunk_masks(trunk: Path, round_index: int) -> dict[str, torch.Tensor]:
    return branches.open_trunk(trunk).masks(round_index)


@pytest.fixture(scope="module")
def trunk(tmp_path_factory, plugins) -> Path:
    """A finished 3-round IMP run on the MNIST sample, copied per test that writes into it."""
    out = tmp_path_factory.mktemp("trunk") / "run"
    run_experiment(make_config(**BUDGET), out=out, progress=False, plugins=plugins)
    return out


@pytest.fixture
def own_trunk(trunk, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trunk, copy)
    return copy


@pytest.fixture(scope="module")
def at_init_trunk(tmp_path_factory, plugins) -> Path:
    out = tmp_path_factory.mktemp("init") / "run"
    config = make_config(**BUDGET, prune_at="init")
    run_experiment(config, out=out, progress=False, plugins=plugins)
    return out


def test_rounds_parse_like_openlth_levels():
    assert branches.parse_rounds("1,3-5") == [1, 3, 4, 5]
    assert branches.parse_rounds("2, 2,0") == [0, 2]
    for bad in ("a", "3-1", "-2", "1,,x"):
        with pytest.raises(branches.LotteryError, match="--rounds"):
            branches.parse_rounds(bad)


def test_reinit_keeps_the_tickets_mask_and_draws_a_fresh_init(own_trunk, plugins):
    result = run_branch("reinit", own_trunk, rounds="1-2", progress=False, plugins=plugins)
    body = branches.open_trunk(own_trunk).body
    for r in (1, 2):
        network = paths.branch_dir(result.folder, r, 0)
        got = network_masks(network, r)
        want = trunk_masks(own_trunk, r)
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)  # m_r, bit for bit
        start = network_body(network)["rewind_state"]  # what the network started from
        for name, value in body["initial_state"].items():
            if name.endswith("weight_orig"):
                assert not torch.equal(start[name], value)  # a fresh draw, not θ0
                assert abs(float(start[name].std()) / float(value.std()) - 1) < 0.1  # same law
    rows = pd.read_csv(result.folder / paths.RESULTS)
    assert list(rows["round"]) == [1, 2] and list(rows["trial"]) == [0, 0]
    trunk_rows = pd.read_csv(own_trunk / paths.RESULTS)
    assert list(rows["remaining"]) == list(trunk_rows["remaining"][1:])


def test_random_prune_keeps_each_layers_count_and_theta0(own_trunk, plugins):
    result = run_branch("random-prune", own_trunk, rounds="2", progress=False, plugins=plugins)
    network = paths.branch_dir(result.folder, 2, 0)
    got, want = network_masks(network, 2), trunk_masks(own_trunk, 2)
    for name in want:
        assert int(got[name].sum()) == int(want[name].sum())  # the ticket's count per layer
        assert not torch.equal(got[name], want[name])  # other positions
    start = network_body(network)["rewind_state"]
    initial = branches.open_trunk(own_trunk).body["initial_state"]
    assert all(torch.equal(start[k], initial[k]) for k in initial)  # θ0


def test_shuffle_permutes_each_layers_mask(own_trunk, plugins):
    result = run_branch("shuffle", own_trunk, rounds="2", progress=False, plugins=plugins)
    got = network_masks(paths.branch_dir(result.folder, 2, 0), 2)
    want = trunk_masks(own_trunk, 2)
    for name in want:
        assert int(got[name].sum()) == int(want[name].sum())
        assert not torch.equal(got[name], want[name])


def test_sign_reinit_keeps_theta0s_signs_with_fresh_magnitudes(own_trunk, plugins):
    result = run_branch("sign-reinit", own_trunk, rounds="1", progress=False, plugins=plugins)
    network = paths.branch_dir(result.folder, 1, 0)
    start = network_body(network)["rewind_state"]
    initial = branches.open_trunk(own_trunk).body["initial_state"]
    masks = trunk_masks(own_trunk, 1)
    for layer, mask in masks.items():
        name = f"{layer}.weight_orig"
        alive = mask.bool()
        assert torch.equal(torch.sign(start[name][alive]), torch.sign(initial[name][alive]))
        assert not torch.equal(start[name].abs(), initial[name].abs())
    assert all(torch.equal(network_masks(network, 1)[k], masks[k]) for k in masks)


def test_invert_keeps_the_lowest_scored_weights_of_an_at_init_trunk(at_init_trunk, tmp_path,
                                                                    plugins):  # fmt: skip
    trunk = tmp_path / "run"
    shutil.copytree(at_init_trunk, trunk)
    result = run_branch("invert", trunk, rounds="2", progress=False, plugins=plugins)
    got = network_masks(paths.branch_dir(result.folder, 2, 0), 2)
    want = trunk_masks(trunk, 2)
    initial = branches.open_trunk(trunk).body["initial_state"]
    for layer, mask in want.items():
        magnitude = initial[f"{layer}.weight_orig"].abs()
        assert int(got[layer].sum()) == int(mask.sum())  # the same count per layer
        kept, dropped = magnitude[got[layer]], magnitude[~got[layer]]
        assert float(kept.max()) <= float(dropped.min())  # magnitude scores, inverted
        assert float(magnitude[mask].min()) >= float(magnitude[~mask].max())  # the trunk's


def test_invert_on_an_imp_trunk_is_one_line_and_writes_nothing(own_trunk, invoke):
    result = invoke("branch", "invert", own_trunk, "--rounds", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--prune-at init" in result.stderr
    assert not (own_trunk / paths.BRANCHES).exists()


def test_retrain_without_changes_reproduces_the_trunks_round_bit_for_bit(own_trunk, plugins):
    """The branch engine adds nothing: the ticket retrained as the trunk trained it (θ0/θk,
    the trunk's data order and settings) gives the trunk's row exactly."""
    result = run_branch("retrain", own_trunk, rounds="1-2", progress=False, plugins=plugins)
    trunk_rows = pd.read_csv(own_trunk / paths.RESULTS).set_index("round")
    for row in result.results.itertuples():
        for column in ("remaining", "ES", "val", "test", "val_loss", "final_test"):
            assert getattr(row, column) == trunk_rows.loc[row.round, column], column


def test_retrain_changes_training_settings_and_records_them(own_trunk, plugins):
    result = run_branch("retrain", own_trunk, rounds="1", iterations=60, lr=0.002,
                        progress=False, plugins=plugins)  # fmt: skip
    network = paths.branch_dir(result.folder, 1, 0)
    meta = rundir.read_meta(network)
    assert meta["config"]["iterations"] == 60 and meta["config"]["lr"] == 0.002
    assert meta["branch"]["options"]["iterations"] == 60
    assert meta["branch"]["kind"] == "retrain" and meta["branch"]["round"] == 1
    assert int(result.results["ES"].max()) <= 60


def test_a_branch_is_deterministic_and_its_trials_differ(own_trunk, tmp_path, plugins):
    first = run_branch("reinit", own_trunk, rounds="1", trials=2, progress=False,
                       plugins=plugins)  # fmt: skip
    other = tmp_path / "again"
    shutil.copytree(own_trunk, other, ignore=shutil.ignore_patterns(paths.BRANCHES))
    second = run_branch("reinit", other, rounds="1", trials=2, progress=False, plugins=plugins)
    assert science(first.results).equals(science(second.results))
    a = network_body(paths.branch_dir(first.folder, 1, 0))["rewind_state"]
    b = network_body(paths.branch_dir(first.folder, 1, 1))["rewind_state"]
    assert not torch.equal(a["1.weight_orig"], b["1.weight_orig"])  # trial 1: its own draw
    seeded = run_branch("reinit", other, rounds="1", seed=5, progress=False, plugins=plugins)
    assert seeded.folder != second.folder  # another seed: another folder
    record = json.loads((seeded.folder / paths.BRANCH).read_text())
    assert record == {"kind": "reinit", "options": {}, "seed": 5, "trunk": "../.."}


def test_the_same_branch_again_skips_finished_networks_and_retrains_a_stopped_one(
    own_trunk, plugins
):
    result = run_branch("shuffle", own_trunk, rounds="1", progress=False, plugins=plugins)
    one = paths.branch_dir(result.folder, 1, 0)
    written = (one / paths.CHECKPOINT).stat().st_mtime_ns
    again = run_branch("shuffle", own_trunk, rounds="1-2", progress=False, plugins=plugins)
    assert again.folder == result.folder
    assert (one / paths.CHECKPOINT).stat().st_mtime_ns == written  # not trained again
    assert list(again.results["round"]) == [1, 2]
    two = paths.branch_dir(result.folder, 2, 0)
    rows_before = pd.read_csv(two / paths.RESULTS)
    for name in (*paths.TABLES, paths.CHECKPOINT, paths.PREVIOUS):  # as if killed mid-round
        (two / name).unlink(missing_ok=True)
    third = run_branch("shuffle", own_trunk, rounds="2", progress=False, plugins=plugins)
    assert science(pd.read_csv(two / paths.RESULTS)).equals(science(rows_before))  # the same
    assert science(third.results).equals(science(again.results[again.results["round"] == 2]))


def test_branch_refuses_an_unfinished_round_in_one_line(own_trunk, invoke):
    result = invoke("branch", "reinit", own_trunk, "--rounds", f"1-{ROUNDS}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"round {ROUNDS} is not finished" in result.stderr
    assert not (own_trunk / paths.BRANCHES).exists()


def test_branch_refuses_a_trunk_whose_files_fail_verification(own_trunk, invoke):
    data = bytearray((own_trunk / paths.CHECKPOINT).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (own_trunk / paths.CHECKPOINT).write_bytes(bytes(data))
    result = invoke("branch", "reinit", own_trunk)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "damaged" in result.stderr
    assert not (own_trunk / paths.BRANCHES).exists()


def test_branch_refuses_unknown_kinds_options_and_folders(own_trunk, tmp_path, invoke):
    wrong = invoke("branch", "rinit", own_trunk)
    assert wrong.returncode == 2 and "did you mean 'reinit'" in wrong.stderr
    option = invoke("branch", "reinit", own_trunk, "--lr", "0.1")
    assert option.returncode == 2 and "--lr" in option.stderr
    bad = invoke("branch", "retrain", own_trunk, "--iterations", "0")
    assert bad.returncode == 2 and "iterations" in bad.stderr
    empty = invoke("branch", "reinit", tmp_path / "nothing")
    assert empty.returncode == 2 and "not a lottery run folder" in empty.stderr
    for result in (wrong, option, bad, empty):
        assert result.stderr.strip().count("\n") == 0, result.stderr
    assert not (own_trunk / paths.BRANCHES).exists()


def test_branch_command_prints_the_networks_beside_the_trunk(own_trunk, invoke):
    result = invoke("branch", "random-prune", own_trunk, "--rounds", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "trunk test" in result.stdout and "vs trunk" in result.stdout
    assert "branch written to" in result.stdout
    listing = invoke("plugins")
    for kind in ("reinit", "random-prune", "shuffle", "sign-reinit", "invert", "retrain"):
        assert f"registers branch {kind}" in listing.stdout


def test_keep_trained_writes_each_rounds_trained_weights(tmp_path, plugins):
    out = tmp_path / "kept"
    run_experiment(make_config(**BUDGET, keep_trained=True), out=out, progress=False,
                   plugins=plugins)  # fmt: skip
    body = rundir.verified(out, rundir.read_meta(out))
    for r in range(ROUNDS):
        saved = torch.load(paths.trained_file(out, r), weights_only=True)
        assert saved["round"] == r
    last = torch.load(paths.trained_file(out, ROUNDS - 1), weights_only=True)["state_dict"]
    assert all(torch.equal(last[k], body["model"][k]) for k in body["model"])
    result = run_branch("retrain", out, rounds="1", start="trained", progress=False,
                        plugins=plugins)  # fmt: skip
    start = network_body(paths.branch_dir(result.folder, 1, 0))["rewind_state"]
    trained = torch.load(paths.trained_file(out, 1), weights_only=True)["state_dict"]
    assert all(torch.equal(start[k], trained[k]) for k in start)


def test_retrain_from_trained_weights_that_were_not_kept_is_one_line(own_trunk, invoke):
    result = invoke("branch", "retrain", own_trunk, "--rounds", "1", "--start", "trained")
    assert result.returncode == 2 and "--keep-trained" in result.stderr
    assert not (own_trunk / paths.BRANCHES).exists()


def test_controls_are_branches_with_the_tickets_masks(tmp_path, plugins, capsys):
    """Frankle & Carbin's controls at every round r: ``reinit`` trains m_r itself (the
    winning ticket's mask, bit for bit) from a fresh init; ``random-prune`` a random mask with
    m_r's count in every layer. Neither drifts into an IMP chain of its own."""
    out = tmp_path / "group"
    result = run_trials(make_config(**BUDGET), trials=2, controls=True, out=out,
                        progress=False, plugins=plugins)  # fmt: skip
    assert sorted(set(result.results["experiment"])) == ["imp", "random-prune", "reinit"]
    lines = []
    for trial in range(2):
        trunk = paths.trial_dir(out, "imp", trial)
        for r in range(1, ROUNDS):
            want = trunk_masks(trunk, r)
            for kind in ("reinit", "random-prune"):
                folder = paths.branch_set(trunk, kind, {}, 0)
                got = network_masks(paths.branch_dir(folder, r, 0), r)
                for layer, mask in want.items():
                    same = torch.equal(got[layer], mask)
                    count = int(got[layer].sum()) == int(mask.sum())
                    agree = float((got[layer] == mask).float().mean())
                    lines.append(f"trial {trial} round {r} {kind:12s} layer {layer}: "
                                 f"{int(mask.sum())} kept, same positions {agree:.1%}")
                    assert count
                    assert same if kind == "reinit" else not same
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    table = result.results.set_index(["experiment", "trial", "round"])
    for kind in ("reinit", "random-prune"):  # round 0 is the trunk's dense round
        assert table.loc[(kind, 0, 0), "test"] == table.loc[("imp", 0, 0), "test"]
    remaining = result.results.groupby(["experiment", "round"])["remaining"].mean().unstack()
    assert (remaining.loc["reinit"] == remaining.loc["imp"]).all()
    assert (remaining.loc["random-prune"] == remaining.loc["imp"]).all()


def test_export_trained_writes_the_trained_ticket_of_a_kept_round(tmp_path, plugins, invoke):
    out = tmp_path / "kept"
    run_experiment(make_config(**BUDGET, keep_trained=True), out=out, progress=False,
                   plugins=plugins)  # fmt: skip
    result = invoke("export", out, "--round", "1", "--trained")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("trained ticket of round 1")
    ticket = torch.load(out / "trained_ticket_round1.pt", weights_only=True)
    trained = torch.load(paths.trained_file(out, 1), weights_only=True)["state_dict"]
    assert all(torch.equal(ticket["weights"][k], trained[k]) for k in ticket["weights"])
    assert ticket["trained"] and ticket["start_iteration"] == BUDGET["iterations"]
    assert all(torch.equal(ticket["masks"][k], trunk_masks(out, 1)[k]) for k in ticket["masks"])


def test_export_trained_of_a_round_not_kept_is_one_line(own_trunk, invoke):
    result = invoke("export", own_trunk, "--round", "1", "--trained")
    assert result.returncode == 2 and "--keep-trained" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not list(own_trunk.glob("trained_*"))
    last = invoke("export", own_trunk, "--round", str(ROUNDS - 1), "--trained")
    assert last.returncode == 0, last.stderr  # the checkpoint holds the last round's


def test_a_report_draws_each_branch_beside_its_trunk(own_trunk, plugins):
    from lottery_core.report_inputs import load_series

    run_branch("shuffle", own_trunk, rounds="1-2", progress=False, plugins=plugins)
    run_branch("retrain", own_trunk, rounds="2", iterations=60, trials=2, progress=False,
               plugins=plugins)  # fmt: skip
    series, notes = load_series([own_trunk])
    labels = [s.label for s in series]
    assert labels[1:] == ["retrain (iterations=60)", "shuffle"], labels
    shuffle = series[2]
    trunk_rows = pd.read_csv(own_trunk / paths.RESULTS)
    assert list(shuffle.frame()["round"]) == [0, 1, 2]  # the trunk's dense round, then its own
    assert shuffle.frame()["test"][0] == trunk_rows["test"][0]
    assert len(series[1].trials) == 2  # a branch's trials are the curve's trials
    assert list(series[1].frame()["round"]) == [0, 2, 0, 2]


def test_a_branchs_later_trials_have_their_own_data_order(own_trunk, plugins):
    """Trial 0 trains with the trunk's data order (retrain reproduces the trunk); trial 1 of a
    kind without randomness of its own still differs, through its own data order."""
    result = run_branch("retrain", own_trunk, rounds="1", trials=2, progress=False,
                        plugins=plugins)  # fmt: skip
    first, second = (rundir.read_meta(paths.branch_dir(result.folder, 1, t)) for t in (0, 1))
    assert first["config"]["seed"] == BUDGET.get("seed", 0)  # the trunk's
    assert second["config"]["seed"] != first["config"]["seed"]
    assert second["seeds"]["data_order"] != first["seeds"]["data_order"]
    a, b = (network_body(paths.branch_dir(result.folder, 1, t))["rewind_state"] for t in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same start: only the order differs
    rows = result.results.set_index("trial")
    assert rows.loc[0, "val_loss"] != rows.loc[1, "val_loss"]
