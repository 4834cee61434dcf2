"""The runs of a trials/controls group: which they are, and bringing them further.

A group runs ``trials`` seeded trials of one IMP experiment (trial ``i`` with
``seeds.trial_seed``), each an ordinary run folder under ``runs/imp/trial_<i>/`` (``paths``).
With controls, each trial's run is the trunk of Frankle & Carbin's two controls, run as branches
(``branches``) at every pruned round r once the trunk has finished: ``reinit`` (m_r, a fresh
initialisation) and ``random-prune`` (a random mask with m_r's per-layer counts, θ0). They land
in the trunk's folder, ``runs/imp/trial_<i>/branches/<kind>-<hash>/round_<r>/trial_0/``. At
round 0 the mask is the dense one, so a control's round 0 is the trunk's own dense round
(``group.write_tables`` lists that row under each control). The config's ``branches`` (say
``shuffle``, ``invert``) run the same way, beside or instead of the controls.

Bringing one run further (``advance``) is the unit of the serial executor (``group``); with
the config's ``batched``, the IMP runs go in lockstep (``advance_trials``) and the control
networks train together (``train_controls``). The parallel executor's units are
``group_units``'.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import branch_runs, branches, files, paths, rundir, runs, seeds
from .config import ResolvedConfig, config_of
from .errors import LotteryError
from .experiment import Experiment
from .loading import data_key, load_data
from .lockstep import Lockstep, run_together
from .plugins import Plugins, get_plugins
from .specs import DatasetSplits

MAIN = paths.MAIN
CONTROLS = ("reinit", "random-prune")  # the branch kinds --controls runs at every round
rows = runs.rows  # rounds a run folder has finished: what units and status lines count


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
    finished, trained as batched models across trials and kinds
    (``branch_runs.train_together``): with equal settings, one model. The serial path then
    finds them done and writes the tables."""
    out = Path(out)
    meta = meta or rundir.read_group_meta(out)
    config = config_of(meta, f"{out}/{paths.CONFIG}")
    cache: dict[tuple, DatasetSplits] = {}
    if data is not None:
        cache[data_key(config)] = data  # the trials' seeds do not change the data
    plans = [
        plan
        for trial in trials
        if rows(paths.trial_dir(out, MAIN, trial)) >= config.rounds
        for kind in branch_kinds(meta)
        for plan in [control_plan(out, trial, kind, config.rounds, plugins)]
        if plan.rounds
    ]
    branch_runs.train_together(plans, plugins, cache)


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
