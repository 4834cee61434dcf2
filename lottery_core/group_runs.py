"""The runs of a trials/controls group: which they are, and bringing one of them further.

A group runs ``trials`` seeded trials of one IMP experiment (trial ``i`` with
``seeds.trial_seed``), each an ordinary run folder under ``runs/imp/trial_<i>/`` (``paths``).
With controls, each trial's run is the trunk of Frankle & Carbin's two controls, run as branches
(``branches``) at every pruned round r once the trunk has finished: ``reinit`` (m_r, a fresh
initialisation) and ``random-prune`` (a random mask with m_r's per-layer counts, θ0). They land
in the trunk's folder, ``runs/imp/trial_<i>/branches/<kind>-<hash>/round_<r>/trial_0/``. At
round 0 the mask is the dense one, so a control's round 0 is the trunk's own dense round
(``group.write_tables`` lists that row under each control). The config's ``branches`` (say
``shuffle``, ``invert``) run the same way, beside or instead of the controls.

Bringing one run further (``advance``) is the unit of the serial executor (``group``); the
parallel one sends the trunk's ``advance_unit`` and each control network's
``branch_runs.branch_unit`` to Ray workers (``engine``), ordered by ``units``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import branch_runs, branches, files, paths, rundir, runs, seeds
from .branch_batch import train_batched
from .config import ResolvedConfig, config_of
from .engine import Unit
from .errors import LotteryError
from .experiment import Experiment
from .loading import data_key, load_data
from .lockstep import Lockstep, run_together
from .plugins import Plugins, get_plugins
from .specs import DatasetSplits

MAIN = paths.MAIN
CONTROLS = ("reinit", "random-prune")  # the branch kinds --controls runs at every round
ADVANCE = "lottery_core.group_runs:advance_unit"  # what a parallel unit runs in its worker
TRIALS_UNIT = "lottery_core.group_runs:advance_trials_unit"  # the trials in lockstep
CONTROLS_UNIT = "lottery_core.group_runs:controls_unit"  # every control network, batched


def branch_kinds(meta: dict[str, Any]) -> list[str]:
    """The branch kinds a group runs at every pruned round of each trial: the controls (with
    ``controls``), then the config's ``branches``, each once."""
    kinds = list(CONTROLS) if meta["group"]["controls"] else []
    kinds += list(meta["config"].get("branches") or [])
    return list(dict.fromkeys(kinds))


def series(meta: dict[str, Any]) -> list[str]:
    """A group's experiments: the IMP runs, then each branch kind."""
    return [MAIN, *branch_kinds(meta)]


def control_set(out: Path, trial: int, kind: str, plugins: Plugins | None = None
                ) -> branches.BranchSet:  # fmt: skip
    """Trial ``trial``'s branch ``kind`` (default options, seed 0): a branch set of its IMP
    run, batched as the group's config says (known before its IMP runs exist)."""
    plugins = plugins or get_plugins()
    options = branches.validate_options(plugins.branches.get(kind), plugins.branches.who(kind),
                                        {})  # fmt: skip
    batched = bool(rundir.read_group_meta(out)["config"].get("batched", False))
    return branches.BranchSet(paths.trial_dir(out, MAIN, trial), kind, options, 0, batched)


def control_plan(out: Path, trial: int, kind: str, rounds: int, plugins: Plugins | None = None
                 ) -> branches.BranchPlan:  # fmt: skip
    """Every pruned round of trial ``trial``'s IMP run, branched as ``kind``."""
    return branches.BranchPlan(control_set(out, trial, kind, plugins), list(range(1, rounds)), 1)


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


# -- one run brought further ---------------------------------------------------------------


def advance(
    out: Path,
    trial: int,
    experiment: str,
    plugins: Plugins,
    data: DatasetSplits | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> None:
    """Bring one experiment of one trial further: the IMP run, or (once it has finished) every
    network of one control."""
    out = Path(out)
    meta = meta or rundir.read_group_meta(out)
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    trial_config = config.model_copy(update={"seed": seeds.trial_seed(config.seed, trial)})
    if experiment == MAIN:
        main = Experiment(trial_config, plugins=plugins, data=data)
        _run_or_resume(main, paths.trial_dir(out, MAIN, trial), progress)
        return
    if experiment not in branch_kinds(meta):
        raise LotteryError(f"{experiment!r} is not an experiment of the group in {str(out)!r}")
    cache: dict[tuple, DatasetSplits] = {}
    if data is not None:
        cache[data_key(trial_config)] = data
    plan = control_plan(out, trial, experiment, config.rounds, plugins)
    if plan.rounds:
        branch_runs.run_serial(plan, plugins, progress=progress, cache=cache)


def advance_trials(
    out: Path,
    trials: list[int],
    plugins: Plugins,
    data: DatasetSplits | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> None:
    """Bring the IMP runs of ``trials`` to their end: with the config's ``batched``, those
    with rounds left in lockstep (``lockstep``: round r of every trial as one batched model),
    else one after another."""
    out = Path(out)
    meta = meta or rundir.read_group_meta(out)
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    left = [t for t in trials if rows(paths.trial_dir(out, MAIN, t)) < config.rounds]
    if not config.batched or len(left) < 2:
        for trial in trials:
            advance(out, trial, MAIN, plugins, data=data, meta=meta, progress=progress)
        return
    if data is None:
        data = load_data(config, plugins)  # one data set: the members share its device copy
    shared = data

    def job(trial: int) -> Callable[[Lockstep], None]:
        trial_config = config.model_copy(update={"seed": seeds.trial_seed(config.seed, trial)})

        def run(lockstep: Lockstep) -> None:
            main = Experiment(trial_config, plugins=plugins, data=shared)
            _run_or_resume(main, paths.trial_dir(out, MAIN, trial), False, None, lockstep)

        return run

    errors = run_together([job(t) for t in left])
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


def train_controls(
    out: Path,
    trials: list[int],
    plugins: Plugins,
    data: DatasetSplits | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Every branch network of ``trials`` (each kind, each pruned round) whose trunk has
    finished, trained as batched models across trials and kinds (``branch_batch``): with
    equal settings, one model. The serial path then finds them done and writes the tables."""
    out = Path(out)
    meta = meta or rundir.read_group_meta(out)
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    cache: dict[tuple, DatasetSplits] = {}
    if data is not None:
        cache[data_key(config)] = data  # the trials' seeds do not change the data
    work = []
    for trial in trials:
        if rows(paths.trial_dir(out, MAIN, trial)) < config.rounds:
            continue
        for kind in branch_kinds(meta):
            plan = control_plan(out, trial, kind, config.rounds, plugins)
            if plan.rounds:
                branches.preflight(plan, plugins, cache)
                plan.branch.write()
                work.append((plan.branch, plan.networks()))
    train_batched(work, plugins, cache)


def _run_or_resume(
    experiment: Experiment,
    path: Path,
    progress: bool,
    after_round: Callable[[Any], None] | None = None,
    round_trainer: Lockstep | None = None,
) -> None:
    if rundir.kind(path) in ("missing", "empty"):
        experiment.round_trainer = round_trainer
        runs.start(experiment, path, progress=progress, after_round=after_round)
    else:
        runs.resume(
            path,
            progress=progress,
            plugins=experiment.plugins,
            data=experiment.data,
            after_round=after_round,
            complete_ok=True,
            round_trainer=round_trainer,
        )


# -- the units of the parallel executor ----------------------------------------------------


rows = runs.rows  # rounds a run folder has finished: what units and status lines count


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


def all_runs(out: Path, root: Path) -> list[str]:
    """Every run folder a group folder will hold (each control network one), relative to
    ``root``."""
    meta = rundir.read_group_meta(out)
    rounds = config_of(meta).rounds
    found = []
    for trial in range(meta["group"]["trials"]):
        found.append(paths.relative(paths.trial_dir(out, MAIN, trial), root))
        for kind in branch_kinds(meta):
            plan = control_plan(out, trial, kind, rounds)
            found += [paths.relative(plan.branch.network(r, t), root) for r, t in plan.networks()]
    return found


def needed_rows(run: Path) -> int | None:
    """Rows a finished run of a group has: 1 for a control network, else ``None`` (its
    config's rounds)."""
    return 1 if paths.branch_of(run) is not None else None


def finished_runs(out: Path, root: Path) -> list[str]:
    """The run folders of a group that have trained all their rounds, relative to ``root``."""
    rounds = config_of(rundir.read_group_meta(out)).rounds
    return [
        run
        for run in all_runs(out, root)
        if rows(Path(root) / run) >= (needed_rows(Path(root) / run) or rounds)
    ]


def series_folders(out: Path) -> list[tuple[str, list[Path]]]:
    """Each experiment of a group folder with the folders of its trials, the IMP runs first:
    a run folder per trial, or for a control its branch set in each trial's IMP run (a report
    reads it with the trunk's dense round as its round 0). Only what exists is listed."""
    found = []
    names = sorted(p.name for p in (Path(out) / paths.RUNS).glob("*") if p.is_dir())
    names.sort(key=lambda name: name != MAIN)
    for name in names:
        trials = paths.trial_dirs(out, name)
        if trials:
            found.append((name, trials))
    meta = rundir.read_group_meta(out)
    for kind in branch_kinds(meta):
        sets = []
        for trunk in paths.trial_dirs(out, MAIN):
            trial = paths.trial_number(trunk)
            assert trial is not None
            folder = control_set(out, trial, kind).folder
            if (folder / paths.RESULTS).exists():
                sets.append(folder)
        if sets:
            found.append((kind, sets))
    return found
