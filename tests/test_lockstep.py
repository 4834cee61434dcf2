"""A group's IMP trials in lockstep (``--trials N --batched``): round r of every trial trained
as one batched model, each trial still an ordinary run. On the CPU, LeNet-300-100's members are
their single runs bit for bit, so the group's tables and every trial's weights are the serial
group's, whatever the trials' progress when it starts, and after a Ctrl-C.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from lottery_core import checkpoint, group_runs, group_units, paths, runs, seeds
from lottery_core.api import run_trials
from lottery_core.config import make_config
from lottery_core.errors import Interrupted, PluginError
from lottery_core.experiment import Experiment
from lottery_core.group import continue_group, run_group
from lottery_core.hookspecs import hookimpl
from lottery_core.lockstep import Lockstep
from lottery_core.plugins import get_plugins
from lottery_core.resolution import resolve

from .conftest import TINY

BUDGET = {**TINY, "rounds": 3, "iterations": 100, "threads": 1, "rewind_iter": 20}
TRIALS = 3


def science(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["time_s"]).reset_index(drop=True)


def weights(out: Path, trial: int) -> dict[str, torch.Tensor]:
    """A trial's saved model state and its rewind point, from its verified checkpoint."""
    model, state = checkpoint.state_of(checkpoint.read(paths.trial_dir(out, "imp", trial)))
    return {**model, **{f"rewind.{k}": v for k, v in state.rewind_state.items()}}


def assert_same_group(one: Path, two: Path) -> None:
    """The same tables (wall times aside) and the same weights, bit for bit."""
    tables = [science(pd.read_csv(folder / paths.RESULTS)) for folder in (one, two)]
    pd.testing.assert_frame_equal(*tables, check_exact=True)
    for trial in range(TRIALS):
        run_one, run_two = (paths.trial_dir(o, "imp", trial) for o in (one, two))
        histories = [pd.read_csv(run / "history.csv") for run in (run_one, run_two)]
        pd.testing.assert_frame_equal(*histories, check_exact=True)
        mine, theirs = weights(one, trial), weights(two, trial)
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), (trial, name)


@pytest.fixture(scope="module")
def serial(tmp_path_factory, plugins) -> Path:
    out = tmp_path_factory.mktemp("serial") / "group"
    run_trials(make_config(**BUDGET), trials=TRIALS, controls=True, out=out, progress=False,
               plugins=plugins)  # fmt: skip
    return out


def test_trials_in_lockstep_are_the_serial_group_bit_for_bit(serial, tmp_path, plugins):
    out = tmp_path / "group"
    run_trials(make_config(**BUDGET, batched=True), trials=TRIALS, controls=True, out=out,
               progress=False, plugins=plugins)  # fmt: skip
    assert_same_group(serial, out)


def test_each_round_is_one_batch_of_every_trial(tmp_path, plugins):
    """What lockstep means: every round's training is one batched model of all trials."""
    config = resolve(make_config(**BUDGET, batched=True), plugins)
    out = tmp_path / "group"
    out.mkdir()
    group_runs.write_group_config(out, config, TRIALS, False)
    lockstep = Lockstep(TRIALS)
    from lottery_core.lockstep import run_together

    def job(trial: int):
        trial_config = config.model_copy(update={"seed": seeds.trial_seed(config.seed, trial)})

        def run(given: Lockstep) -> None:
            experiment = Experiment(trial_config, plugins=plugins)
            experiment.round_trainer = given
            runs.start(experiment, paths.trial_dir(out, "imp", trial), progress=False)

        return run

    assert run_together([job(t) for t in range(TRIALS)], lockstep) == [None] * TRIALS
    assert lockstep.batches == [TRIALS] * BUDGET["rounds"]


def test_on_ray_a_batched_group_is_two_units(tmp_path, plugins):
    """The IMP runs of every trial as one unit (lockstep), then every control network of every
    trial and kind as one unit after it; without ``batched``, a unit per run and network."""
    counts = {}
    for flag in (True, False):
        out = tmp_path / f"group-{flag}"
        out.mkdir()
        config = resolve(make_config(**BUDGET, batched=flag), plugins)
        group_runs.write_group_config(out, config, TRIALS, True)
        counts[flag] = group_units.units(out, out)
    imp, controls = counts[True]
    assert (imp.target, imp.kwargs["trials"], imp.rounds) == (group_units.TRIALS_UNIT,
                                                              [0, 1, 2], 9)  # fmt: skip
    assert controls.target == group_units.CONTROLS_UNIT and controls.after == (imp.key,)
    assert len(controls.kwargs["folders"]) == controls.rounds == TRIALS * 2 * 2
    assert len(counts[False]) == TRIALS + TRIALS * 2 * 2


def test_trials_at_different_rounds_finish_as_the_serial_group(serial, tmp_path, plugins):
    """Resumed with trial 0 one round in, trial 2 finished and trial 1 not begun: each batch
    takes the trials at the same point (the rest train in their own), and the result is the
    serial group's."""
    config = resolve(make_config(**BUDGET, batched=True), plugins)
    out = tmp_path / "group"
    out.mkdir()
    group_runs.write_group_config(out, config, TRIALS, True)
    for trial, rounds in ((0, 1), (2, None)):
        trial_config = config.model_copy(update={"seed": seeds.trial_seed(config.seed, trial)})
        runs.start(Experiment(trial_config, plugins=plugins), paths.trial_dir(out, "imp", trial),
                   progress=False, stop_after=rounds)  # fmt: skip
    assert runs.rows(paths.trial_dir(out, "imp", 0)) == 1
    continue_group(out, plugins, progress=False)
    assert_same_group(serial, out)


class CtrlC:
    """A lifecycle hook that presses Ctrl-C (a real SIGINT to this process) as trial 1's round
    1 ends, while the other trials wait for it or train."""

    def __init__(self) -> None:
        self.pressed = False

    @hookimpl
    def on_round_end(self, round_index, run):
        if round_index == 1 and not self.pressed and run.trial == 1:
            self.pressed = True
            signal.raise_signal(signal.SIGINT)


@pytest.fixture
def with_hook():
    """Register a hook object on the process's plugins for one test, then unregister it (the
    plugin manager is shared by every in-process test)."""
    plugins = get_plugins()
    added: list = []

    def register(hook: object) -> Any:
        plugins.manager.register(hook)
        added.append(hook)
        return plugins

    yield register
    for hook in added:
        plugins.manager.unregister(hook)


def test_a_ctrl_c_keeps_what_each_trial_finished_and_resumes_to_the_same(serial, tmp_path,
                                                                           with_hook):  # fmt: skip
    plugins = with_hook(CtrlC())
    config = resolve(make_config(**BUDGET, batched=True), plugins)
    out = tmp_path / "group"
    with pytest.raises(Interrupted):
        run_group(config, out, plugins, trials=TRIALS, controls=True, progress=False)
    done = [runs.rows(paths.trial_dir(out, "imp", t)) for t in range(TRIALS)]
    assert all(1 <= rounds <= 2 for rounds in done), done  # stopped mid-way, rounds kept
    assert sum(done) < TRIALS * BUDGET["rounds"]
    continue_group(out, get_plugins(), progress=False)
    assert_same_group(serial, out)


def test_on_ray_the_trials_are_one_unit_and_each_row_is_printed(serial, tmp_path, invoke):
    """``run --trials 3 --controls --batched --workers 2``: the trials train in lockstep in one
    unit, then every control network in one; the driver prints each round of each trial and
    each control network as its row, named by its run."""
    out = tmp_path / "group"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in BUDGET.items()]
    done = invoke("run", *flags, "--trials", str(TRIALS), "--controls", "--batched",
                  "--workers", "2", "--quiet", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_same_group(serial, out)
    table = pd.read_csv(out / paths.RESULTS)
    lines = done.stdout.splitlines()
    for experiment in ("imp", "reinit", "random-prune"):
        for trial in range(TRIALS):
            mine = [line for line in lines if f" {experiment} trial {trial} " in line]
            rows = table.query(f"experiment == '{experiment}' and trial == {trial}")
            if experiment != "imp":
                rows = rows[rows["round"] > 0]  # round 0 is the trunk's row
            tests = [f"{t:.2f}" for t in rows.sort_values("round")["test"]]
            assert len(mine) == len(tests), done.stdout
            assert all(t in line for line, t in zip(mine, tests, strict=True)), done.stdout


class Broken:
    """A lifecycle hook that fails as trial 1's round 1 starts."""

    @hookimpl
    def on_round_start(self, round_index, run):
        if round_index == 1 and run.trial == 1:
            raise ValueError("broken on purpose")


def test_a_trial_that_fails_stops_alone_and_the_group_says_why(tmp_path, with_hook):
    """The failing trial's error is the group's (one line naming the hook and the plugin);
    the other trials do not wait for it: they train every round, batched together."""
    plugins = with_hook(Broken())
    config = resolve(make_config(**BUDGET, batched=True), plugins)
    out = tmp_path / "group"
    with pytest.raises(PluginError) as failed:
        run_group(config, out, plugins, trials=TRIALS, progress=False)
    assert "on_round_start" in str(failed.value) and "broken on purpose" in str(failed.value)
    assert "\n" not in str(failed.value)
    done = [runs.rows(paths.trial_dir(out, "imp", t)) for t in range(TRIALS)]
    assert done == [BUDGET["rounds"], 1, BUDGET["rounds"]]
