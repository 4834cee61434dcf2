"""Branch networks trained as one batched model (``--batched``, the config's ``batched``): the
same folders and tables as one by one, bit for bit for LeNet-300-100 on the CPU, in this
process, on Ray workers and as a group's controls; what cannot be batched trains alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from lottery_core import batched, branch_runs, paths
from lottery_core.api import run_branch, run_experiment, run_stability, run_trials
from lottery_core.branches import rows
from lottery_core.config import make_config
from lottery_core.stability import plan_stability
from lottery_core.training import TrainSettings

from .conftest import TINY

BUDGET = {**TINY, "rounds": 3, "iterations": 100, "threads": 1}


def science(frame: pd.DataFrame) -> pd.DataFrame:
    """A table without its wall times (the one column batching changes)."""
    return frame.drop(columns=["time_s"]).reset_index(drop=True)


def network_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every branch network's results and history under ``folder``, by relative path."""
    found = {}
    for file in sorted(folder.glob("**/branches/*/round_*/trial_*/*.csv")):
        frame = pd.read_csv(file)
        found[str(file.relative_to(folder))] = science(frame) if "time_s" in frame else frame
    return found


@pytest.fixture(scope="module")
def trunk(tmp_path_factory, plugins) -> Path:
    out = tmp_path_factory.mktemp("trunk") / "run"
    run_experiment(make_config(**BUDGET, rewind_iter=20), out=out, progress=False,
                   plugins=plugins)  # fmt: skip
    return out


def copy_of(trunk: Path, where: Path) -> Path:
    shutil.copytree(trunk, where)
    return where


def test_a_batched_branch_is_its_networks_one_by_one(trunk, tmp_path, plugins):
    single = copy_of(trunk, tmp_path / "single")
    together = copy_of(trunk, tmp_path / "together")
    for folder, flag in ((single, False), (together, True)):
        run_branch("reinit", folder, rounds="1-2", trials=2, progress=False, plugins=plugins,
                   batched=flag)  # fmt: skip
    one, two = network_tables(single), network_tables(together)
    assert len(one) == 12 and one.keys() == two.keys()  # 4 networks x 3 tables
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name], check_exact=True)
    config = next(together.glob("branches/reinit-*/round_1/trial_0")) / paths.CONFIG
    assert json.loads(config.read_text())["config"]["batched"] is True


def test_batched_stability_copies_on_ray_match(trunk, tmp_path, plugins):
    """Two sets (k = 0 and the rewind point) of three rounds x two copies: each set one unit
    on a Ray worker, the analyses the same as one by one."""
    single = copy_of(trunk, tmp_path / "single")
    together = copy_of(trunk, tmp_path / "together")
    kwargs = {"k": "0,20", "rounds": "0-2", "alphas": 5, "progress": False, "plugins": plugins}
    first = run_stability(single, batched=False, **kwargs)
    second = run_stability(together, batched=True, workers=2, **kwargs)
    pd.testing.assert_frame_equal(first.table, second.table, check_exact=True)
    one, two = network_tables(single), network_tables(together)
    assert len(one) == 36  # 12 networks x 3 tables
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name], check_exact=True)


def test_batched_stability_sets_train_together_and_match(trunk, tmp_path, plugins):
    """In this process, the sets of one k (the copy, the reinit and the random-pruning
    control) train as one batched model across sets; the tables are the same as one by one."""
    single = copy_of(trunk, tmp_path / "single")
    together = copy_of(trunk, tmp_path / "together")
    kwargs = {"k": "0", "control": "none,reinit", "rounds": "1-2", "alphas": 5,
              "progress": False, "plugins": plugins}  # fmt: skip
    first = run_stability(single, batched=False, **kwargs)
    second = run_stability(together, batched=True, **kwargs)
    pd.testing.assert_frame_equal(first.table, second.table, check_exact=True)
    one, two = network_tables(single), network_tables(together)
    assert len(one) == 24  # 2 sets x 2 rounds x 2 copies x 3 tables
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name], check_exact=True)
    again = copy_of(trunk, tmp_path / "again")  # what "together" means: one model of 8
    plans = plan_stability(again, plugins, k="0", controls="none,reinit", rounds="1-2",
                           alphas=5, batched=True)  # fmt: skip
    assert branch_runs.train_together(plans, plugins, {}) == [8]
    assert all(rows(plan.branch.network(r, t)) for plan in plans for r, t in plan.networks())
    assert branch_runs.train_together(plans, plugins, {}) == []  # all finished: none trained



def test_a_batched_unit_prints_each_networks_row(trunk, tmp_path, invoke):
    """On Ray, one unit trains a set's networks together; the driver still prints each
    network's row, named by its run."""
    own = copy_of(trunk, tmp_path / "run")
    done = invoke("branch", "reinit", own, "--rounds", "1-2", "--trials", "2", "--batched",
                  "--workers", "2", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "reinit trial" in line]
    assert len(rows) == 4, done.stdout
    table = pd.read_csv(next(own.glob("branches/reinit-*")) / paths.RESULTS)
    for line, test in zip(rows, table.sort_values(["round", "trial"])["test"], strict=True):
        assert f"{test:.2f}" in line


def test_a_groups_controls_batched_match(tmp_path, plugins):
    """``run --controls --batched``: the trunks as ever, the controls batched, the group's
    tables the same as without batching."""
    tables = []
    for flag in (False, True):
        out = tmp_path / f"group-{flag}"
        result = run_trials(make_config(**BUDGET, batched=flag), trials=2, controls=True,
                            out=out, progress=False, plugins=plugins)  # fmt: skip
        tables.append(science(result.results))
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)


def test_what_cannot_be_batched_says_why(plugins):
    resnet = plugins.models.get("cifar_resnet_20").build((3, 32, 32), 10)
    settings = TrainSettings(iterations=1, batch_size=2, lr=0.1, eval_every=1)
    assert "buffers" in (batched.unsupported(resnet, settings) or "")
    lenet = plugins.models.get("lenet_fc").build((1, 28, 28), 10)
    assert batched.unsupported(lenet, settings) is None
    assert torch.get_num_threads() >= 1
