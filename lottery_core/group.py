"""Trials and controls: several IMP runs that a figure compares, run as one experiment.

A group folder holds ``config.json``, a ``results.csv`` of every run's rows (with ``experiment``
and ``trial`` columns), ``aggregate.csv`` (mean/std/min/max per experiment and round) and the
runs themselves under ``runs/<experiment>/trial_<i>/``, each an ordinary run folder
(``group_runs`` says which runs and how one is brought further). They run one after another here,
or with ``workers`` as units of the parallel executor (``parallel``, on Ray).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import branches, files, group_runs, group_units, paths, preflight, rundir, runs
from .config import ResolvedConfig, config_of
from .engine import Engine, Event, Plan
from .errors import LotteryError, RunFailed, Stopped, command
from .experiment import Experiment
from .loading import load_data
from .parallel import execute
from .plugins import Plugins
from .progress import current, reporting
from .specs import DatasetSplits
from .tables import aggregate


@dataclass
class GroupResult:
    results: pd.DataFrame
    aggregate: pd.DataFrame
    run_dir: Path
    data_source: str


def run_group(
    config: ResolvedConfig,
    out: Path,
    plugins: Plugins,
    trials: int = 1,
    controls: bool = False,
    progress: bool = True,
    engine_plan: Plan | None = None,
) -> GroupResult:
    """Run ``trials`` trials of the experiment and its controls into the new group folder
    ``out``; with ``engine_plan``, as that many Ray workers at once."""
    out = Path(out)
    rundir.check_new(out)
    rundir.check_writable(out)
    data = load_data(config, plugins)  # before the folder exists: bad data writes nothing
    preflight.validate(Experiment(config, plugins=plugins, data=data))
    existed = out.exists()
    rundir.create(out)
    with rundir.locked(out):
        try:
            group_runs.write_group_config(out, config, trials, controls)
            if engine_plan is not None:
                return run_parallel([out], engine_plan, progress, data.source)
            return _continue(out, progress, plugins, data)
        except BaseException as exc:  # nothing saved: the same command can simply run again
            runs.remove_unsaved_group(out, existed)
            raise runs.for_group(exc, out) from None


def continue_group(
    out: Path,
    plugins: Plugins,
    progress: bool = True,
    engine_plan: Plan | None = None,
) -> GroupResult:
    """Run whatever the group in ``out`` still lacks: resumes stopped runs, starts missing ones
    (with ``engine_plan``, on Ray workers)."""
    with rundir.locked(out):
        if engine_plan is not None:
            return run_parallel([Path(out)], engine_plan, progress)
        try:
            return _continue(Path(out), progress, plugins, None)
        except BaseException as exc:
            raise runs.for_group(exc, Path(out)) from None


def group_threads(out: Path) -> int:
    """The threads a group's runs were resolved with (``--workers`` keeps them on resume)."""
    return config_of(rundir.read_group_meta(out)).threads


def _continue(
    out: Path, progress: bool, plugins: Plugins, data: DatasetSplits | None
) -> GroupResult:
    """The serial executor: every run of every trial, one after another."""
    meta = rundir.read_group_meta(out)
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    if data is None:
        data = load_data(config, plugins)
    trials = range(meta["group"]["trials"])
    with reporting() as report, report.expect(rounds_left(out)):  # the estimate: all runs'
        if config.batched:  # the IMP runs in lockstep, then every control network batched
            group_runs.advance_trials(out, list(trials), plugins, data=data, meta=meta,
                                      progress=progress)  # fmt: skip
            write_tables(out)
            group_runs.train_controls(out, list(trials), plugins, data=data, meta=meta)
        later = group_runs.branch_kinds(meta) if config.batched else group_runs.series(meta)
        for trial in trials:  # batched: the IMP runs are done, the sets' tables still to write
            for name in later:
                group_runs.advance(out, trial, name, plugins, data=data, meta=meta,
                                   progress=progress)  # fmt: skip
            write_tables(out)
    return _result(out, data.source)


def rounds_left(out: Path) -> int:
    """Rounds the group's runs still have to train (a control network is one)."""
    rounds = config_of(rundir.read_group_meta(out)).rounds
    left = 0
    for run in group_runs.all_runs(out, out):
        path = Path(out) / run
        left += max(0, (group_runs.needed_rows(path) or rounds) - group_runs.rows(path))
    return left


def _result(out: Path, data_source: str) -> GroupResult:
    frame = pd.read_csv(out / paths.RESULTS)
    return GroupResult(frame, pd.read_csv(out / paths.AGGREGATE), out, data_source)


def run_parallel(
    groups: list[Path], engine_plan: Plan, progress: bool = True, data_source: str | None = None
) -> GroupResult:
    """The parallel executor for groups (``run --trials/--controls --workers``): their runs as
    units on Ray; the first group's tables, or ``RunFailed`` listing the failures and the
    resume command."""
    groups = [Path(g) for g in groups]
    root = groups[0]
    units = [u for g in groups for u in group_units.units(g, root)]
    workers = engine_plan.workers
    again = command("run", "--resume", root, *(["--workers", workers] if workers else []))
    failures: dict[str, str] = {}
    if units:  # a finished group needs no Ray
        report = current()
        if report is not None:  # the data line first, as a run in this process prints it
            report.data(data_source if data_source is not None else _data_source(root))
        with Engine(engine_plan) as engine:
            outcomes = execute(engine, units, _recorder(groups, failures), progress)
        if outcomes is None:
            write_all_tables(groups)
            raise Stopped(
                f"\nInterrupted: finished rounds are saved in {root}. Resume with: {again}"
            )
    write_all_tables(groups)
    if failures:
        listed = "; ".join(f"{run}: {error}" for run, error in failures.items())
        raise RunFailed(f"{len(failures)} run(s) failed: {listed}. Resume with: {again}")
    return _result(root, data_source if data_source is not None else _data_source(root))


def _recorder(groups: list[Path], failures: dict[str, str]) -> Callable[[Event], None]:
    """Tables rewritten as each unit ends; a run's own failure noted (a cancel is not one)."""

    def on_event(event: Event) -> None:
        if event.outcome is not None and event.unit is not None:
            write_all_tables(groups)
            if not event.outcome.ok and event.outcome.error != "cancelled":
                failures[event.unit.run] = event.outcome.error

    return on_event


def _data_source(root: Path) -> str:
    for run in paths.group_runs(root):
        try:
            return str(rundir.read_meta(run).get("data_source", ""))
        except LotteryError:
            continue
    return ""


def write_tables(root: Path) -> None:
    """The group's ``results.csv`` (every run's rows, then each control's: the trunk's dense
    round as its round 0, then its networks) and ``aggregate.csv``."""
    frames = []
    for folder in paths.group_runs(root):
        path = folder / paths.RESULTS
        if path.exists():
            frame = pd.read_csv(path)
            frame["experiment"] = folder.parent.name
            frame["trial"] = paths.trial_number(folder)
            frames.append(frame)
    meta = rundir.read_group_meta(root)
    for kind in group_runs.branch_kinds(meta):
        for trunk in paths.trial_dirs(root, group_runs.MAIN):
            trial = paths.trial_number(trunk)
            assert trial is not None
            control = control_rows(trunk, group_runs.control_set(root, trial, kind).folder)
            if control is not None:
                frames.append(control.assign(experiment=kind, trial=trial))
    if not frames:
        return
    combined = pd.concat(frames, ignore_index=True)
    files.write_csv(Path(root) / paths.RESULTS, combined)
    files.write_csv(Path(root) / paths.AGGREGATE, aggregate(combined))


def write_all_tables(groups: list[Path]) -> None:
    """Every group's tables from its runs' own results."""
    for group in groups:
        write_tables(group)


def control_rows(trunk: Path, branch_set: Path) -> pd.DataFrame | None:
    """A control's rows in its trunk's trial: the trunk's dense round (every control's round
    0: the dense mask, the trunk's θ0), then each finished network's row, by round."""
    dense = trunk / paths.RESULTS
    networks = branches.write_table(branch_set) if branch_set.is_dir() else pd.DataFrame()
    if not dense.exists() or networks.empty:
        return None
    first = pd.read_csv(dense)
    rows = networks[networks["trial"] == 0].drop(columns=["trial"])
    return pd.concat([first[first["round"] == 0], rows], ignore_index=True)
