"""Trials and controls: several IMP runs that a figure compares, run as one experiment.

A group folder holds ``config.json``, a ``results.csv`` of every run's rows (with ``experiment``
and ``trial`` columns), ``aggregate.csv`` (mean/std/min/max per experiment and round) and the
runs themselves under ``runs/<experiment>/trial_<i>/``, each an ordinary run folder.

Trial ``i`` uses seed ``seed + i`` (init, data order and pruning seeds are derived from it), so
trial 0 equals the single run with the same seed. The controls (random pruning and random
reinitialisation, by default; ``control_prune``/``control_reinit`` choose others) branch off the
main run's trained dense round: when it finishes, each control's folder is written with that
round as its own round 0 (before the main run's own files, so a main run past round 0 always
has its branches on disk), and every control then continues as an ordinary resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import files, rundir, runs
from .config import ExperimentConfig
from .errors import LotteryError
from .experiment import Experiment, load_data
from .plugins import Plugins, get_plugins
from .resolution import resolve
from .specs import DatasetSplits
from .state import RunState, derive_seeds
from .tables import aggregate

MAIN = "imp"


@dataclass
class GroupResult:
    results: pd.DataFrame
    aggregate: pd.DataFrame
    run_dir: Path
    data_source: str


def experiments(config: ExperimentConfig, controls: bool) -> dict[str, ExperimentConfig]:
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


def trial_dir(root: Path, experiment: str, trial: int) -> Path:
    return Path(root) / rundir.RUNS / experiment / f"trial_{trial}"


def run_group(
    config: ExperimentConfig,
    out: Path,
    trials: int = 1,
    controls: bool = False,
    progress: bool = True,
    plugins: Plugins | None = None,
    workers: int | None = None,
) -> GroupResult:
    """Run ``trials`` trials of the experiment and its controls into the group folder ``out``;
    with ``workers``, as that many Ray workers at once (``lottery_core.engine``)."""
    if trials < 1:
        raise LotteryError(f"invalid config: trials must be at least 1 (got {trials})")
    plugins = plugins or get_plugins()
    engine_plan = None
    if workers is not None:
        from .engine import plan

        engine_plan = plan(workers, None, config.threads)
        config = config.model_copy(update={"threads": engine_plan.threads})
    config = resolve(config, plugins)
    out = Path(out)
    rundir.check_new(out)
    rundir.check_writable(out)
    data = load_data(config, plugins)  # before the folder exists: bad data writes nothing
    Experiment(config, plugins=plugins, data=data).validate()
    existed = out.exists()
    rundir.create(out)
    with rundir.locked(out):
        try:
            write_group_config(out, config, trials, controls)
            if engine_plan is not None:
                from .sweep import run_groups

                return run_groups([out], engine_plan, progress, data.source)
            return _continue(out, progress, plugins, data)
        except BaseException as exc:  # nothing saved: the same command can simply run again
            runs.remove_unsaved_group(out, existed)
            raise runs.for_group(exc, out) from None


def write_group_config(out: Path, config: ExperimentConfig, trials: int, controls: bool) -> None:
    """A group folder's ``config.json`` (its resolved config, trials, controls) and ``runs/``."""
    files.write_json(
        Path(out) / rundir.CONFIG,
        {
            "group": {"trials": trials, "controls": controls},
            "config": config.model_dump(mode="json"),
            "trial_seeds": {
                t: {"seed": config.seed + t, **derive_seeds(config.seed + t)}
                for t in range(trials)
            },
        },
    )
    (Path(out) / rundir.RUNS).mkdir(exist_ok=True)


def continue_group(
    out: Path,
    progress: bool = True,
    plugins: Plugins | None = None,
    data: DatasetSplits | None = None,
    workers: int | None = None,
) -> GroupResult:
    """Run whatever the group in ``out`` still lacks: resumes stopped runs, starts missing ones
    (with ``workers``, on that many Ray workers)."""
    with rundir.locked(out):
        if workers is not None:
            from .engine import plan
            from .sweep import run_groups

            threads = ExperimentConfig(**read_group_config(out)["config"]).threads
            return run_groups([Path(out)], plan(workers, None, threads), progress)
        try:
            return _continue(Path(out), progress, plugins or get_plugins(), data)
        except BaseException as exc:
            raise runs.for_group(exc, Path(out)) from None


def read_group_config(out: Path) -> dict:
    meta = rundir.read_meta(out)
    group = meta.get("group")
    if not isinstance(group, dict) or not {"trials", "controls"} <= set(group):
        raise LotteryError(f"{str(out)!r} is not a lottery trials/controls folder")
    return meta


def _continue(
    out: Path, progress: bool, plugins: Plugins, data: DatasetSplits | None
) -> GroupResult:
    meta = read_group_config(out)
    config = ExperimentConfig(**meta["config"])
    trials, controls = meta["group"]["trials"], meta["group"]["controls"]
    if data is None:
        data = load_data(resolve(config, plugins), plugins)
    for trial in range(trials):
        for name in experiments(config, controls):
            advance(out, trial, name, progress=progress, plugins=plugins, data=data, meta=meta)
        write_tables(out)
    frame = pd.read_csv(out / rundir.RESULTS)
    return GroupResult(frame, pd.read_csv(out / rundir.AGGREGATE), out, data.source)


def advance(
    out: Path,
    trial: int,
    experiment: str = MAIN,
    dense_only: bool = False,
    progress: bool = False,
    plugins: Plugins | None = None,
    data: DatasetSplits | None = None,
    meta: dict | None = None,
) -> None:
    """Bring one run of the group further: the main run (writing its controls' branches after
    its dense round; with ``dense_only`` it stops there, or trains on if that round was lost),
    or a control, which continues from its branch. One of these is one unit of the engine."""
    out = Path(out)
    plugins = plugins or get_plugins()
    meta = meta or read_group_config(out)
    config = ExperimentConfig(**meta["config"])
    trial_config = config.model_copy(update={"seed": config.seed + trial})
    variants = experiments(trial_config, meta["group"]["controls"])
    path = trial_dir(out, experiment, trial)
    if experiment != MAIN:
        if rundir.kind(path) in ("missing", "empty"):
            raise LotteryError(
                f"{str(path)!r} is missing although the main run is past its dense round; "
                "the group folder was changed by hand"
            )
        runs.resume(path, progress=progress, plugins=plugins, data=data, complete_ok=True)
        return
    branches = {
        name: (trial_dir(out, name, trial), variant)
        for name, variant in variants.items()
        if name != MAIN
    }
    main = Experiment(variants[MAIN], plugins=plugins, data=data)

    def branch(state: RunState) -> None:
        if state.next_round == 1:
            for branch_path, variant in branches.values():
                _write_branch(main, state, branch_path, variant, plugins, main.data)

    if dense_only and (path / rundir.RESULTS).exists():
        return  # the dense round (and so every branch) is on disk
    _run_or_resume(main, path, progress, branch, stop_after=1 if dense_only else None)


def _run_or_resume(
    experiment: Experiment, path: Path, progress: bool, after_round, stop_after=None
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


def _write_branch(
    main: Experiment,
    state: RunState,
    path: Path,
    config: ExperimentConfig,
    plugins: Plugins,
    data: DatasetSplits,
) -> None:
    """A control's folder holding the main run's trained dense round as its own round 0."""
    assert main.model is not None
    if rundir.kind(path) == "run":  # a branch a killed process left: only its own config
        if rundir.resume_point(path, rundir.read_meta(path)) is not None:
            return
        (path / rundir.CONFIG).unlink()
    control = Experiment(config, plugins=plugins, data=data)
    model_state = {k: v.detach().clone() for k, v in main.model.state_dict().items()}
    branched = control.restore(model_state, state.copy())
    runs.start(control, path, progress=False, state=branched, stop_after=1)


def write_tables(root: Path) -> None:
    """The group's ``results.csv`` (every run's rows) and ``aggregate.csv``."""
    frames = []
    for folder in sorted((Path(root) / rundir.RUNS).glob("*/trial_*")):
        path = folder / rundir.RESULTS
        if path.exists():
            frame = pd.read_csv(path)
            frame["experiment"] = folder.parent.name
            frame["trial"] = int(folder.name.split("_")[1])
            frames.append(frame)
    if not frames:
        return
    combined = pd.concat(frames, ignore_index=True)
    files.write_csv(Path(root) / rundir.RESULTS, combined)
    files.write_csv(Path(root) / rundir.AGGREGATE, aggregate(combined))
