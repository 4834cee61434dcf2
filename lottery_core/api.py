"""The Python API for notebooks and scripts: a config in, tables (and a run folder) out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import checkpoint, rundir
from .config import ExperimentConfig, make_config
from .errors import LotteryError
from .experiment import Experiment, ExperimentResult
from .plugins import Plugins


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
    if config is None:
        config = make_config(**overrides)
    elif overrides:
        config = make_config(**{**config.model_dump(exclude_none=True), **overrides})
    experiment = Experiment(config, plugins=plugins)
    target = Path(out) if out is not None else experiment.config.out
    if target is None:
        target = rundir.default_run_dir(experiment.config.run_name())
    rundir.check_new(Path(target))
    return experiment.run(Path(target), progress=progress)


def resume_experiment(
    run_dir: Path | str, *, progress: bool = True, plugins: Plugins | None = None
) -> ExperimentResult:
    """Continue a stopped run from its last finished round, in the same folder."""
    run_dir = Path(run_dir)
    raw = checkpoint.read(run_dir)
    try:
        config = ExperimentConfig(**raw["config"])
    except Exception as exc:  # a checkpoint from a different config schema
        raise LotteryError(f"the checkpoint in {str(run_dir)!r} has an unusable config: {exc}") from None
    experiment = Experiment(config, plugins=plugins)
    state = checkpoint.restore(experiment, raw)
    if state.next_round >= (experiment.config.rounds or 0):
        raise LotteryError(f"{str(run_dir)!r} is already complete ({state.next_round} rounds)")
    return experiment.run(run_dir, state=state, progress=progress)
