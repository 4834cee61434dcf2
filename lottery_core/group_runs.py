"""The runs of a trials/controls group: which they are, and bringing one of them further.

A group runs ``trials`` seeded trials of one experiment (trial ``i`` with ``seeds.trial_seed``)
and, with controls, the random-reinit and random-pruning controls of each trial, every run an
ordinary run folder under ``runs/<experiment>/trial_<i>/`` (``paths``). The controls branch off
the main run's trained dense round: when it finishes, each control's folder is written with
that round as its own round 0 (before the main run's own files, so a main run past round 0
always has its branches on disk), and every control then continues as an ordinary resume.

Bringing one run further (``advance``) is the unit of both executors: the serial one
(``group``) calls it run after run, the parallel one sends ``advance_unit`` to Ray workers
(``engine``), ordered by ``units``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import files, paths, rundir, runs, seeds
from .config import ExperimentConfig, ResolvedConfig, config_of
from .engine import Unit
from .errors import LotteryError
from .experiment import Experiment
from .plugins import Plugins
from .specs import DatasetSplits
from .state import RunState

MAIN = "imp"
ADVANCE = "lottery_core.group_runs:advance_unit"  # what a parallel unit runs in its worker
C = TypeVar("C", bound=ExperimentConfig)


def experiments(config: C, controls: bool) -> dict[str, C]:
    """The main experiment and, if asked, its controls (skipping one the main run already is)."""
    found = {MAIN: config}
    if controls:
        changes = {
            "reinit-random": {"reinit": config.control_reinit},
            "prune-random": {"prune": config.control_prune},
        }
        for name, change in changes.items():
            if all(getattr(config, k) == v for k, v in change.items()):
                continue
            found[name] = config.model_copy(update=change)
    return found


# -- the group's config.json ---------------------------------------------------------------


def write_group_config(out: Path, config: ResolvedConfig, trials: int, controls: bool) -> None:
    """A group folder's ``config.json`` (its resolved config, trials, controls) and ``runs/``."""
    files.write_json(
        Path(out) / paths.CONFIG,
        {
            "group": {"trials": trials, "controls": controls},
            "config": config.model_dump(mode="json"),
            "trial_seeds": {
                t: {
                    "seed": seeds.trial_seed(config.seed, t),
                    **seeds.derive_seeds(seeds.trial_seed(config.seed, t)),
                }
                for t in range(trials)
            },
        },
    )
    (Path(out) / paths.RUNS).mkdir(exist_ok=True)


def read_group_config(out: Path) -> dict[str, Any]:
    """A group folder's ``config.json`` (``rundir.read_meta``), checked to be a group's."""
    meta = rundir.read_meta(out)
    group = meta.get("group")
    if not isinstance(group, dict) or not {"trials", "controls"} <= set(group):
        raise LotteryError(f"{str(out)!r} is not a lottery trials/controls folder")
    return meta


# -- one run brought further ---------------------------------------------------------------


def advance(
    out: Path,
    trial: int,
    experiment: str,
    plugins: Plugins,
    data: DatasetSplits | None = None,
    meta: dict[str, Any] | None = None,
    dense_only: bool = False,
    progress: bool = False,
) -> None:
    """Bring one run of the group further: the main run (writing its controls' branches after
    its dense round; with ``dense_only`` it stops there, or trains on if that round was lost),
    or a control, which continues from its branch."""
    out = Path(out)
    meta = meta or read_group_config(out)
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    trial_config = config.model_copy(update={"seed": seeds.trial_seed(config.seed, trial)})
    variants = experiments(trial_config, meta["group"]["controls"])
    path = paths.trial_dir(out, experiment, trial)
    if experiment != MAIN:
        if rundir.kind(path) in ("missing", "empty"):
            raise LotteryError(
                f"{str(path)!r} is missing although the main run is past its dense round; "
                "the group folder was changed by hand"
            )
        runs.resume(path, progress=progress, plugins=plugins, data=data, complete_ok=True)
        return
    branches = {
        paths.trial_dir(out, name, trial): variant
        for name, variant in variants.items()
        if name != MAIN
    }
    main = Experiment(variants[MAIN], plugins=plugins, data=data)

    def branch(state: RunState) -> None:
        if state.next_round == 1:
            for branch_path, variant in branches.items():
                _write_branch(main, state, branch_path, variant)

    if dense_only and (path / paths.RESULTS).exists():
        return  # the dense round (and so every branch) is on disk
    _run_or_resume(main, path, progress, branch, stop_after=1 if dense_only else None)


def _run_or_resume(
    experiment: Experiment,
    path: Path,
    progress: bool,
    after_round: Callable[[RunState], None],
    stop_after: int | None = None,
) -> None:
    if rundir.kind(path) in ("missing", "empty"):
        runs.start(
            experiment, path, progress=progress, after_round=after_round, stop_after=stop_after
        )
    else:
        runs.resume(
            path,
            progress=progress,
            plugins=experiment.plugins,
            data=experiment.data,
            after_round=after_round,
            complete_ok=True,
        )


def _write_branch(main: Experiment, state: RunState, path: Path, config: ResolvedConfig) -> None:
    """A control's folder holding the main run's trained dense round as its own round 0."""
    assert main.model is not None
    if rundir.kind(path) == "run":  # a branch a killed process left: only its own config
        if rundir.resume_point(path, rundir.read_meta(path)) is not None:
            return
        (path / paths.CONFIG).unlink()
    control = Experiment(config, plugins=main.plugins, data=main.data)
    model_state = {k: v.detach().clone() for k, v in main.model.state_dict().items()}
    branched = control.restore(model_state, state.copy())
    runs.start(control, path, progress=False, state=branched, stop_after=1)


# -- the units of the parallel executor ----------------------------------------------------


def rows(run_dir: Path) -> int:
    """Rounds a run folder has finished (the rows of its ``results.csv``)."""
    try:
        with open(Path(run_dir) / paths.RESULTS) as handle:
            return max(0, sum(1 for _ in handle) - 1)
    except OSError:
        return 0


_DATA: dict[tuple, DatasetSplits] = {}  # a worker's data set, kept across its units


def advance_unit(out: str, trial: int, experiment: str, dense_only: bool, cwd: str) -> int:
    """One unit in a Ray worker (a process of its own: it finds the installed plugins itself):
    ``advance`` with the data loaded once per process. A relative ``data_dir`` is taken from
    the driver's folder ``cwd``. Returns the rounds the run has finished."""
    from .loading import data_key, load_data
    from .plugins import get_plugins

    plugins = get_plugins()
    meta = read_group_config(Path(out))
    data_dir = Path(meta["config"].get("data_dir") or "data")
    if not data_dir.is_absolute():
        meta["config"]["data_dir"] = str(Path(cwd) / data_dir)
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    key = data_key(config)
    if key not in _DATA:
        _DATA.clear()  # one data set per worker at a time: memory stays one copy
        _DATA[key] = load_data(config, plugins)
    advance(Path(out), trial, experiment, plugins, data=_DATA[key], meta=meta,
            dense_only=dense_only)  # fmt: skip
    return rows(paths.trial_dir(Path(out), experiment, trial))


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (a unit's and a status line's name for a run)."""
    try:
        return str(Path(path).absolute().relative_to(Path(root).absolute()))
    except ValueError:
        return str(path)


def units(out: Path, root: Path) -> list[Unit]:
    """The units a group folder still needs, named by run folder relative to ``root``: each
    trial's dense round first (it writes the controls' branches), then the rest of its main
    run and every control at once."""
    out = Path(out).absolute()
    meta = read_group_config(out)
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    names = list(experiments(config, meta["group"]["controls"]))
    found = []
    for trial in range(meta["group"]["trials"]):
        found += _trial_units(out, root, config, names, trial)
    return found


def _trial_units(
    out: Path, root: Path, config: ResolvedConfig, names: list[str], trial: int
) -> list[Unit]:
    main_path = paths.trial_dir(out, MAIN, trial)
    main_run = relative(main_path, root)
    kwargs = {"out": str(out), "trial": trial, "experiment": MAIN, "cwd": str(Path.cwd())}
    gpu = config.device != "cpu"
    found: list[Unit] = []
    after: tuple[str, ...] = ()
    main_done = rows(main_path)
    if main_done == 0:
        key = f"{main_run}#dense"
        found.append(Unit(key, main_run, ADVANCE, {**kwargs, "dense_only": True}, (), 1,
                          _counter(main_path), gpu, first=True))  # fmt: skip
        after = (key,)
    left = config.rounds - max(main_done, 1)
    if left > 0:
        found.append(Unit(main_run, main_run, ADVANCE, {**kwargs, "dense_only": False}, after,
                          left, _counter(main_path), gpu))  # fmt: skip
    for name in names[1:]:
        path = paths.trial_dir(out, name, trial)
        left = config.rounds - max(rows(path), 1)
        if left > 0:
            run = relative(path, root)
            found.append(Unit(run, run, ADVANCE, {**kwargs, "experiment": name,
                              "dense_only": False}, after, left, _counter(path), gpu))  # fmt: skip
    return found


def _counter(path: Path) -> Callable[[], int]:
    return lambda: rows(path)


def all_runs(out: Path, root: Path) -> list[str]:
    """Every run folder a group folder will hold, relative to ``root``."""
    meta = read_group_config(out)
    names = list(experiments(config_of(meta), meta["group"]["controls"]))
    return [
        relative(paths.trial_dir(out, name, trial), root)
        for trial in range(meta["group"]["trials"])
        for name in names
    ]


def finished_runs(out: Path, root: Path) -> list[str]:
    """The run folders of a group that have trained all their rounds, relative to ``root``."""
    rounds = config_of(read_group_config(out)).rounds
    return [run for run in all_runs(out, root) if rows(Path(root) / run) >= rounds]
