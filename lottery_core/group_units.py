"""The parallel executor's units for a trials/controls group (``group_runs``' runs on Ray).

One unit per run: each trial's IMP run (``advance_unit``), then, after it, each control
network (``branch_runs.branch_unit``). With the config's ``batched``: one unit for the IMP runs
of every trial in lockstep (``advance_trials_unit``), then one for every control network of
every trial and kind, batched (``controls_unit``). Each unit names the run folder(s) it brings
further, so the driver prints their rows (``parallel``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import branch_runs, branches, paths, rundir
from .config import ResolvedConfig, config_of
from .engine import Unit
from .group_runs import (
    MAIN,
    advance,
    advance_trials,
    branch_kinds,
    control_plan,
    rows,
    train_controls,
)  # fmt: skip
from .specs import DatasetSplits

ADVANCE = "lottery_core.group_units:advance_unit"  # what a parallel unit runs in its worker
TRIALS_UNIT = "lottery_core.group_units:advance_trials_unit"  # the trials in lockstep
CONTROLS_UNIT = "lottery_core.group_units:controls_unit"  # every control network, batched

_DATA: dict[tuple, DatasetSplits] = {}  # a worker's data set, kept across its units


def advance_unit(out: str, trial: int, experiment: str, cwd: str) -> int:
    """One unit in a Ray worker (a process of its own: it finds the installed plugins itself):
    ``advance`` with the data loaded once per process. It runs in the driver's folder ``cwd``
    (``engine.call``), so a relative ``data_dir`` means what it means there. Returns the
    rounds the run has finished."""
    from .plugins import get_plugins

    plugins = get_plugins()
    meta = rundir.read_group_meta(Path(out))
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    data = branches.data_for(config, plugins, _DATA)
    advance(Path(out), trial, experiment, plugins, data=data, meta=meta)
    return rows(paths.trial_dir(Path(out), experiment, trial))


def units(out: Path, root: Path) -> list[Unit]:
    """The units a group folder still needs, named by run folder relative to ``root``: each
    trial's IMP run, then (after it) every control network still to train. Batched: one unit
    for the IMP runs (in lockstep), then one for every control network of every trial."""
    out = Path(out).absolute()
    meta = rundir.read_group_meta(out)
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    gpu = config.device != "cpu"
    trials = list(range(meta["group"]["trials"]))
    found: list[Unit] = []
    main_unit: dict[int, str] = {}  # trial -> the unit that brings its IMP run to its end
    together = _lockstep_unit(out, root, config, trials)
    if together is not None:
        found.append(together)
        main_unit.update({int(t): together.key for t in together.kwargs["trials"]})
    for trial in trials:
        main_path = paths.trial_dir(out, MAIN, trial)
        left = config.rounds - rows(main_path)
        if left > 0 and trial not in main_unit:
            main_run = paths.relative(main_path, root)
            kwargs = {"out": str(out), "trial": trial, "experiment": MAIN, "cwd": str(Path.cwd())}
            found.append(Unit(main_run, main_run, ADVANCE, kwargs, (), left,
                              _counter(main_path), gpu, first=True))  # fmt: skip
            main_unit[trial] = main_run
    if config.batched:
        after = tuple(dict.fromkeys(main_unit.values()))
        found += _controls_unit(out, root, meta, trials, after, gpu)
        return found
    for trial in trials:
        after = (main_unit[trial],) if trial in main_unit else ()
        for kind in branch_kinds(meta):
            plan = control_plan(out, trial, kind, config.rounds)
            found += branch_runs.units(plan, root, after, gpu)
    return found


def _controls_unit(out: Path, root: Path, meta: dict[str, Any], trials: list[int],
                   after: tuple[str, ...], gpu: bool) -> list[Unit]:  # fmt: skip
    """Batched: one unit for every control network of the group still to train, across
    trials and kinds (``controls_unit``), after the IMP runs; none when none is left."""
    rounds = config_of(meta).rounds
    left = [
        plan.branch.network(r, t)
        for trial in trials
        for kind in branch_kinds(meta)
        for plan in [control_plan(out, trial, kind, rounds)]
        for r, t in plan.networks()
        if not rows(plan.branch.network(r, t))
    ]
    if not left:
        return []
    name = paths.relative(Path(out) / paths.RUNS, root) + "/controls"
    kwargs = {"out": str(out), "trials": trials, "cwd": str(Path.cwd()),
              "folders": [str(path) for path in left]}  # fmt: skip
    return [Unit(name, name, CONTROLS_UNIT, kwargs, after, len(left),
                 lambda: sum(rows(path) for path in left), gpu)]  # fmt: skip


def controls_unit(out: str, trials: list[int], cwd: str, folders: list[str]) -> int:
    """Every control network of ``trials`` in a Ray worker, batched across trials and kinds
    (``train_controls``), then each set finished and analysed as the serial path does; returns
    the networks of ``folders`` finished."""
    from .plugins import get_plugins

    plugins = get_plugins()
    meta = rundir.read_group_meta(Path(out))
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    data = branches.data_for(config, plugins, _DATA)
    train_controls(Path(out), trials, plugins, data=data, meta=meta)
    for trial in trials:  # any a batched model could not train; the sets' tables, analyses
        for kind in branch_kinds(meta):
            advance(Path(out), trial, kind, plugins, data=data, meta=meta)
    return sum(rows(Path(folder)) for folder in folders)


def _counter(path: Path) -> Callable[[], int]:
    return lambda: rows(path)


def _lockstep_unit(out: Path, root: Path, config: ResolvedConfig, trials: list[int]
                   ) -> Unit | None:  # fmt: skip
    """With the config's ``batched``, one unit for the IMP runs of every trial with rounds
    left, trained in lockstep (``advance_trials``); ``None`` for fewer than two."""
    folders = {t: paths.trial_dir(out, MAIN, t) for t in trials}
    left = [t for t in trials if rows(folders[t]) < config.rounds]
    if not config.batched or len(left) < 2:
        return None
    name = paths.relative(folders[left[0]].parent, root)
    kwargs = {"out": str(out), "trials": left, "experiment": MAIN, "cwd": str(Path.cwd())}
    rounds = sum(config.rounds - rows(folders[t]) for t in left)
    return Unit(name, name, TRIALS_UNIT, kwargs, (), rounds,
                lambda: sum(rows(folders[t]) for t in left), config.device != "cpu",
                first=True)  # fmt: skip


def advance_trials_unit(out: str, trials: list[int], experiment: str, cwd: str) -> int:
    """The IMP runs of ``trials`` in lockstep in a Ray worker (``advance_trials``), as
    ``advance_unit`` brings one run further; returns the rounds they have finished."""
    from .plugins import get_plugins

    plugins = get_plugins()
    meta = rundir.read_group_meta(Path(out))
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    data = branches.data_for(config, plugins, _DATA)
    advance_trials(Path(out), [int(t) for t in trials], plugins, data=data, meta=meta)
    return sum(rows(paths.trial_dir(Path(out), experiment, int(t))) for t in trials)
