"""The Python API for notebooks and scripts: a config in, tables (and a run folder) out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import branches, rundir, runs
from .branches import BranchResult
from .config import ExperimentConfig, ResolvedConfig, check_trials, make_config
from .engine import plan
from .errors import LotteryError, command
from .experiment import Experiment, ExperimentResult
from .group import GroupResult, continue_group, group_threads, run_group
from .plugins import Plugins, get_plugins
from .resolution import resolve


def _with_overrides(config: ExperimentConfig | None, overrides: dict[str, Any]) -> ExperimentConfig:
    """``config`` (or the defaults) with keyword ``overrides`` applied and validated."""
    if config is None:
        return make_config(**overrides)
    if overrides:
        return make_config(**{**config.model_dump(exclude_none=True), **overrides})
    return config


def run_experiment(
    config: ExperimentConfig | None = None,
    *,
    out: Path | str | None = None,
    progress: bool = True,
    plugins: Plugins | None = None,
    **overrides: Any,
) -> ExperimentResult:
    """Run a whole IMP experiment and return its tables.

    ``config`` may be omitted and built from keyword ``overrides`` (the config's field names).
    Results go to ``out``, or to a new folder under ``results/`` named from the config.
    """
    plugins = plugins or get_plugins()
    config = _with_overrides(config, overrides)
    resolved = config if isinstance(config, ResolvedConfig) else resolve(config, plugins)
    experiment = Experiment(resolved, plugins=plugins)
    target = Path(out) if out is not None else resolved.out
    if target is None:
        target = rundir.default_run_dir(resolved.run_name())
    rundir.check_new(Path(target))
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
    **overrides: Any,
) -> GroupResult:
    """Run ``trials`` seeded trials of an experiment and, with ``controls``, its random-reinit
    and random-pruning controls branching off the same dense round; returns all rows and the
    per-round aggregate (mean, std, min, max). ``workers``: that many at once, on Ray."""
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
        suffix = f"-trials{trials}" + ("-controls" if controls else "")
        target = rundir.default_run_dir(resolved.run_name() + suffix)
    return run_group(
        resolved, Path(target), plugins, trials=trials, controls=controls, progress=progress,
        engine_plan=engine_plan,
    )  # fmt: skip


def resume_experiment(
    run_dir: Path | str,
    *,
    progress: bool = True,
    plugins: Plugins | None = None,
    from_previous: bool = False,
    workers: int | None = None,
) -> ExperimentResult | GroupResult:
    """Continue a stopped run (or trials/controls folder) from its last finished round; with
    ``from_previous``, a run from its previous checkpoint (``checkpoint.pt`` is damaged)."""
    run_dir = Path(run_dir)
    plugins = plugins or get_plugins()
    found = rundir.kind(run_dir)
    if found == "group" and from_previous:
        raise LotteryError(
            f"{str(run_dir)!r} is a trials/controls folder: --from-previous continues one run "
            "folder; give the folder its error named"
        )
    if found == "group":
        engine_plan = None if workers is None else plan(workers, None, group_threads(run_dir))
        return continue_group(run_dir, plugins, progress=progress, engine_plan=engine_plan)
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
    return runs.resume(run_dir, progress=progress, plugins=plugins, from_previous=from_previous)


def run_branch(
    kind: str,
    run_dir: Path | str,
    *,
    rounds: Sequence[int] | str | None = None,
    trials: int = 1,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    plugins: Plugins | None = None,
    **options: Any,
) -> BranchResult:
    """Run branch ``kind`` (``reinit``, ``random-prune``, ``shuffle``, ``sign-reinit``,
    ``invert``, ``retrain`` or a plugin's) on ``rounds`` of the finished run in ``run_dir``
    (default: every pruned round it finished), ``trials`` networks a round; keyword
    ``options`` are the kind's. The networks land in ``run_dir/branches/<kind>-<hash>/``; the
    same call again continues it. ``workers``: that many networks at once, on Ray."""
    plugins = plugins or get_plugins()
    plan_ = branches.plan_branch(kind, Path(run_dir), rounds, options, plugins, trials, seed)
    if workers is None:
        table = branches.run_serial(plan_, plugins, progress=progress)
    else:
        table = branches.run_parallel(plan_, plugins, plan(workers, None, None), progress)
    return branches.result_of(plan_, table)
