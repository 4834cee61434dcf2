"""The Python API for notebooks and scripts: a config in, tables (and a run folder) out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import branch_runs, branches, group_runs, paths, rundir, runs
from .branch_runs import BranchResult
from .config import ExperimentConfig, ResolvedConfig, check_trials, config_of, make_config
from .engine import plan
from .errors import LotteryError, command
from .experiment import Experiment, ExperimentResult
from .group import GroupResult, continue_group, group_threads, run_group
from .plugins import Plugins, get_plugins
from .progress import reporting
from .resolution import resolve
from .stability import StabilityResult


def _with_overrides(config: ExperimentConfig | None, overrides: dict[str, Any]) -> ExperimentConfig:
    """``config`` (or the defaults) with keyword ``overrides`` applied and validated."""
    if config is None:
        return make_config(**overrides)
    if overrides:  # the fields the config set, so what it left unset stays the model's
        kept = config.model_dump(exclude_unset=True, exclude_none=True)
        return make_config(**{**kept, **overrides})
    return config


def run_experiment(
    config: ExperimentConfig | None = None,
    *,
    out: Path | str | None = None,
    progress: bool = True,
    plugins: Plugins | None = None,
    log: bool = False,
    **overrides: Any,
) -> ExperimentResult:
    """Run a whole IMP experiment and return its tables.

    ``config`` may be omitted and built from keyword ``overrides`` (the config's field names).
    Results go to ``out`` (which must not exist), or to ``results/<name>`` named from the
    config: if that already holds this very run, its tables are returned (complete) or it is
    continued from its last finished round, not trained again beside it (``find_run``).
    ``progress``: a bar where one can be drawn (a terminal, a notebook with ipywidgets);
    ``log``: print the ``data:`` line and each round's row to stdout as it finishes.
    """
    plugins = plugins or get_plugins()
    config = _with_overrides(config, overrides)
    resolved = config if isinstance(config, ResolvedConfig) else resolve(config, plugins)
    experiment = Experiment(resolved, plugins=plugins)
    target = Path(out) if out is not None else resolved.out
    if target is None:
        found = runs.default_folder(resolved.run_name(), runs.holds_run(experiment))
        if found.same:
            with reporting(lines=log):
                return runs.continue_found(found, plugins, progress=progress)
        target = found.path
    rundir.check_new(Path(target))
    with reporting(lines=log):
        return runs.start(experiment, Path(target), progress=progress)


def run_trials(
    config: ExperimentConfig | None = None,
    *,
    trials: int = 1,
    controls: bool = False,
    out: Path | str | None = None,
    progress: bool = True,
    plugins: Plugins | None = None,
    workers: int | None = None,
    log: bool = False,
    **overrides: Any,
) -> GroupResult:
    """Run ``trials`` seeded trials of an experiment and, with ``controls``, its random-reinit
    and random-pruning controls branching off the same dense round; returns all rows and the
    per-round aggregate (mean, std, min, max). ``workers``: that many at once, on Ray.
    ``log``: print each round's row as it finishes, named by its run, with an estimate for
    the whole group."""
    if trials < 1:
        raise LotteryError(f"invalid config: trials must be at least 1 (got {trials})")
    check_trials(trials)
    plugins = plugins or get_plugins()
    config = _with_overrides(config, overrides)
    engine_plan = None
    if workers is not None:  # each worker's share of the cores, unless the config says
        engine_plan = plan(workers, None, config.threads)
        config = config.model_copy(update={"threads": engine_plan.threads})
    resolved = resolve(config, plugins)
    target = Path(out) if out is not None else resolved.out
    if target is None:
        found = runs.default_folder(
            _group_name(resolved, trials, controls), _holds_group(resolved, trials, controls)
        )
        if found.same:  # the same command again: its tables, or continued where it stopped
            with reporting(lines=log):
                return _continue_found_group(found, plugins, progress, engine_plan)
        target = found.path
    with reporting(lines=log):
        return run_group(
            resolved, Path(target), plugins, trials=trials, controls=controls,
            progress=progress, engine_plan=engine_plan,
        )  # fmt: skip


def resume_experiment(
    run_dir: Path | str,
    *,
    progress: bool = True,
    plugins: Plugins | None = None,
    from_previous: bool = False,
    workers: int | None = None,
    log: bool = False,
    rounds: int | None = None,
) -> ExperimentResult | GroupResult:
    """Continue a stopped run (or trials/controls folder) from its last finished round; with
    ``from_previous``, a run from its previous checkpoint (``checkpoint.pt`` is damaged).
    ``rounds``: first set its rounds to that many (``extend_experiment``), so a finished run
    trains on to ``rounds`` (a complete one returns its tables). ``log``: print each round's
    row as it finishes."""
    with reporting(lines=log):
        return _resume(run_dir, progress, plugins, from_previous, workers, rounds)


def extend_experiment(
    run_dir: Path | str, rounds: int, *, workers: int | None = None
) -> runs.Extension:
    """Set the rounds of a finished or stopped run (or trials/controls folder) to ``rounds``;
    ``resume_experiment`` then trains the rounds it lacks, exactly as a run started with
    ``rounds`` would have (``runs.extend``: ``config.json`` records each extension). What
    ``resume_experiment`` would refuse (``workers`` for one run...) is refused first."""
    _resumable(Path(run_dir), False, workers)
    return runs.extend(Path(run_dir), rounds)


def _resumable(run_dir: Path, from_previous: bool, workers: int | None) -> str:
    """The kind of folder ``run_dir`` is, if it can be continued so; else one line."""
    found = rundir.kind(run_dir)
    if found == "group" and from_previous:
        raise LotteryError(
            f"{str(run_dir)!r} is a trials/controls folder: --from-previous continues one run "
            "folder; give the folder its error named"
        )
    if found == "group":
        return found
    if found == "sweep":
        raise LotteryError(
            f"{str(run_dir)!r} is a sweep folder; continue it with: "
            f"{command('sweep', '--resume', run_dir)}"
        )
    if workers is not None:
        raise LotteryError("--workers runs a trials/controls folder in parallel; this is one run")
    if found != "run":
        rundir.check_not_held(run_dir)  # a run, group or sweep starting there: name it
        raise LotteryError(f"{str(run_dir)!r} is not a lottery run folder (nothing to resume)")
    return found


def _resume(
    run_dir: Path | str,
    progress: bool,
    plugins: Plugins | None,
    from_previous: bool,
    workers: int | None,
    rounds: int | None = None,
) -> ExperimentResult | GroupResult:
    run_dir = Path(run_dir)
    plugins = plugins or get_plugins()
    if rounds is not None and from_previous:
        raise LotteryError(
            "--rounds extends a run from its intact checkpoint.pt: resume it with "
            "--from-previous first, then extend it"
        )
    found = _resumable(run_dir, from_previous, workers)
    if rounds is not None:
        runs.extend(run_dir, rounds)
    if found == "group":
        engine_plan = None if workers is None else plan(workers, None, group_threads(run_dir))
        runs.sync_group(run_dir)  # its IMP runs at the folder's rounds (an extension's)
        return continue_group(run_dir, plugins, progress=progress, engine_plan=engine_plan)
    return runs.resume(
        run_dir, progress=progress, plugins=plugins, from_previous=from_previous,
        complete_ok=rounds is not None,
    )  # fmt: skip


def find_run(
    config: ExperimentConfig | None = None,
    *,
    trials: int = 1,
    controls: bool = False,
    group: bool | None = None,
    plugins: Plugins | None = None,
    **overrides: Any,
) -> runs.Found:
    """Where ``run_experiment`` (or, with ``group``, ``run_trials``) puts ``config`` without
    ``out``: ``results/<name>`` (``-2``, ``-3``... past folders that hold another config), and
    whether it already holds this very experiment (``same``; ``complete``: nothing to train).
    ``group`` defaults to ``trials > 1 or controls`` or the config naming ``branches``."""
    plugins = plugins or get_plugins()
    config = _with_overrides(config, overrides)
    resolved = config if isinstance(config, ResolvedConfig) else resolve(config, plugins)
    if group is None:
        group = trials > 1 or controls or bool(getattr(resolved, "branches", None))
    if group:
        return runs.default_folder(
            _group_name(resolved, trials, controls), _holds_group(resolved, trials, controls)
        )
    experiment = Experiment(resolved, plugins=plugins)
    return runs.default_folder(resolved.run_name(), runs.holds_run(experiment))


def _group_name(resolved: ResolvedConfig, trials: int, controls: bool) -> str:
    return resolved.run_name() + f"-trials{trials}" + ("-controls" if controls else "")


def _holds_group(resolved: ResolvedConfig, trials: int, controls: bool):
    """Whether a folder is a trials/controls folder of this very experiment: the same trials,
    controls, branch kinds and config identity (or so before it was extended)."""
    kinds = list(getattr(resolved, "branches", None) or [])

    def holds(path: Path) -> runs.Found | None:
        if rundir.kind(path) != "group":
            return None
        meta = rundir.read_group_meta(path)
        if meta["group"].get("trials") != trials or bool(meta["group"]["controls"]) != controls:
            return None
        if list(meta["config"].get("branches") or []) != kinds:
            return None
        identity = resolved.identity()
        if all(config_of(m).identity() != identity for m in rundir.as_written(meta)):
            return None
        rounds = config_of(meta).rounds
        trunks = [paths.trial_dir(path, paths.MAIN, t) for t in range(trials)]
        done = min(runs.rows(trunk) for trunk in trunks)
        tables = all((path / name).is_file() for name in (paths.RESULTS, paths.AGGREGATE))
        everything = set(group_runs.all_runs(path, path))
        complete = tables and everything <= set(group_runs.finished_runs(path, path))
        return runs.Found(Path(path), True, done, rounds, complete=complete)

    return holds


def _continue_found_group(
    found: runs.Found, plugins: Plugins, progress: bool, engine_plan: Any
) -> GroupResult:
    """The trials/controls folder ``found`` holds: its tables if it is complete, else
    continued as ``--resume`` continues it."""
    if found.complete:
        source = ""
        for trunk in paths.trial_dirs(found.path, paths.MAIN):
            source = str(rundir.read_meta(trunk).get("data_source", ""))
            break
        return GroupResult(
            pd.read_csv(found.path / paths.RESULTS),
            pd.read_csv(found.path / paths.AGGREGATE),
            found.path,
            source,
        )
    runs.sync_group(found.path)
    return continue_group(found.path, plugins, progress=progress, engine_plan=engine_plan)


def run_branch(
    kind: str,
    run_dir: Path | str,
    *,
    rounds: Sequence[int] | str | None = None,
    trials: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    plugins: Plugins | None = None,
    log: bool = False,
    batched: bool | None = None,
    **options: Any,
) -> BranchResult:
    """Run branch ``kind`` (``reinit``, ``random-prune``, ``shuffle``, ``sign-reinit``,
    ``invert``, ``retrain`` or a plugin's) on ``rounds`` of the finished run in ``run_dir``
    (default: every pruned round it finished), ``trials`` networks a round (default: 1, or
    the kind's least: ``stability`` compares 2); keyword
    ``options`` are the kind's. The networks land in ``run_dir/branches/<kind>-<hash>/``; the
    same call again continues it. ``workers``: that many networks at once, on Ray. ``log``:
    print each network's row as it finishes. ``batched``: train the networks as one batched
    model (default: as the run's config says)."""
    plugins = plugins or get_plugins()
    plan_ = branches.plan_branch(kind, Path(run_dir), rounds, options, plugins, trials, seed,
                                 batched)  # fmt: skip
    with reporting(lines=log) as report:
        _train_plans([plan_], plugins, workers, progress, report)
    return branch_runs.result_of(plan_, branches.table_of(plan_))


def _train_plans(
    plans: list[branches.BranchPlan], plugins: Plugins, workers: int | None, progress: bool,
    report: Any,
) -> None:  # fmt: skip
    """The plans' networks trained and analysed: here, one after another under the estimate of
    every network still to train, or with ``workers`` on Ray."""
    if workers is not None:
        branch_runs.run_plans(plans, plugins, plan(workers, None, None), progress)
        return
    left = [n for p in plans for n in p.networks() if not branches.rows(p.branch.network(*n))]
    cache: dict = {}
    with report.expect(len(left)):
        branch_runs.train_together(plans, plugins, cache)  # batched: across sets, at once
        for plan_ in plans:
            branch_runs.run_serial(plan_, plugins, progress=progress, cache=cache)


def run_stability(
    run_dir: Path | str,
    *,
    k: str | int | Sequence[str | int] = "0,100,500,2000",
    control: str | Sequence[str] | None = None,
    copies: int = 2,
    alphas: int = 30,
    rounds: Sequence[int] | str | None = None,
    between_rounds: bool = False,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    plugins: Plugins | None = None,
    log: bool = False,
    batched: bool | None = None,
) -> StabilityResult:
    """Frankle et al. (2020)'s instability analysis of the finished run in ``run_dir``: for
    each of ``rounds`` (default: every round it finished, the dense round 0 included), each k
    and each ``control`` (default: the ticket itself; ``reinit``, ``random-prune``), ``copies``
    networks from round r's subnetwork at iteration k, trained with different data orders, and
    the linear path between them at ``alphas`` points. ``between_rounds``: also the barrier
    between successive rounds' trained networks (a run with ``keep_trained``). The rows land in
    ``run_dir/stability.csv``; the same call again continues it. ``batched``: each k x control's
    copies train as one batched model, in this process every set of one k together (default:
    as the run's config says)."""
    from . import stability

    plugins = plugins or get_plugins()
    plans = stability.plan_stability(Path(run_dir), plugins, k, control, copies, alphas, rounds,
                                     seed, batched)  # fmt: skip
    between = None
    with reporting(lines=log) as report:
        _train_plans(plans, plugins, workers, progress, report)
        table = stability.table_of(plans)
        if between_rounds:
            between = stability.between_rounds(Path(run_dir), plugins, alphas)
    return StabilityResult(table, between, Path(run_dir))
