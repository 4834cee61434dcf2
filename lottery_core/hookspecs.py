"""Every hook a lottery plugin can implement.

Registration hooks take a ``register`` callback that a plugin may call as often as it likes.
Lifecycle hooks are called with keyword arguments only (an implementation may take any subset)
and let loggers and metric plugins observe a run; they must not change the model: its weights,
biases and masks are compared, bit for bit, before and after each plugin's call, and a change
is one line naming the plugin. An exception in any hook is one line naming the hook and the
plugin; the run's finished rounds stay on disk and ``--resume`` continues them.

Every lifecycle hook also gets ``run_dir`` (the folder of the run the call belongs to) and
``run`` (a ``RunInfo``: that folder, and under ``--trials``/``--controls`` the experiment and
trial). Under ``--controls`` several runs are under way in one process, so an observer that
writes per run must key on these, never on the folder of the last ``on_experiment_start``.

Order for one run: ``on_experiment_start``, then per round ``on_round_start``,
``on_evaluation`` (every ``eval_every`` iterations), ``on_round_end``; ``on_experiment_end``
after the last round. A resumed run gets ``on_resume`` instead of ``on_experiment_start``.
Under ``--trials``/``--controls`` each trial runs in turn: the main (``imp``) run's round 0,
then each control's folder is started from it (``on_experiment_start`` for the control, no
rounds trained), then the main run's remaining rounds, then each control from round 1 (as a
resume: ``on_resume`` with ``next_round=1``), then the next trial.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from .config import ExperimentConfig
    from .specs import (
        BranchKind,
        DatasetSpec,
        ModelSpec,
        OptimizerSpec,
        PruningStrategy,
        ReinitPolicy,
        RunInfo,
        ScheduleSpec,
    )

hookspec = pluggy.HookspecMarker("lottery")
hookimpl = pluggy.HookimplMarker("lottery")


@hookspec
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    """Called once at start-up: call ``register(DatasetSpec(...))`` for each dataset."""


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Called once at start-up: call ``register(ModelSpec(...))`` for each architecture."""


@hookspec
def register_pruning_strategies(register: Callable[[PruningStrategy], None]) -> None:
    """Called once at start-up: call ``register(PruningStrategy(...))`` for each strategy."""


@hookspec
def register_reinit_policies(register: Callable[[ReinitPolicy], None]) -> None:
    """Called once at start-up: call ``register(ReinitPolicy(...))`` for each policy."""


@hookspec
def register_branches(register: Callable[[BranchKind], None]) -> None:
    """Called once at start-up: call ``register(BranchKind(...))`` for each branch kind (an
    experiment on round r of a finished run: ``lottery branch KIND RUN_DIR``)."""


@hookspec
def register_optimizers(register: Callable[[OptimizerSpec], None]) -> None:
    """Called once at start-up: call ``register(OptimizerSpec(...))`` for each optimizer (the
    config's ``optimizer``: ``--optimizer NAME``)."""


@hookspec
def register_schedules(register: Callable[[ScheduleSpec], None]) -> None:
    """Called once at start-up: call ``register(ScheduleSpec(...))`` for each learning-rate
    schedule (the config's ``schedule``: ``--schedule NAME``)."""


@hookspec
def on_experiment_start(config: ExperimentConfig, run_dir: Path, run: RunInfo) -> None:
    """Called once when a run's folder is created, before its first round, with the resolved
    config."""


@hookspec
def on_resume(config: ExperimentConfig, run_dir: Path, next_round: int, run: RunInfo) -> None:
    """Called when a stopped run continues from its checkpoint; ``next_round`` is the first
    round it will train (the rounds before it are already in ``run_dir``)."""


@hookspec
def on_round_start(
    round_index: int, remaining: float, model: nn.Module, run_dir: Path | None, run: RunInfo
) -> None:
    """Called before a round trains, after pruning and reinitialisation, with the share of
    weights remaining (percent of prunable weights) and the model as the round starts from it
    (its masks and starting weights)."""


@hookspec
def on_evaluation(
    round_index: int,
    iteration: int,
    metrics: dict[str, float],
    run_dir: Path | None,
    run: RunInfo,
) -> dict | None:
    """Called after each validation evaluation.

    ``metrics`` holds ``iteration``, ``train_loss``, ``val_loss`` and ``val_acc``; a plugin may
    return a dict of extra metrics, which are added to that row of ``history.csv``.
    """


@hookspec
def on_round_end(
    round_index: int, record: dict[str, Any], model: nn.Module, run_dir: Path | None, run: RunInfo
) -> dict | None:
    """Called after a round's training and evaluation, before the round is saved.

    ``record`` is a copy of the round's row of ``results.csv`` as the core computed it (changing
    it changes nothing): ``round`` (int), ``remaining`` (float, percent of prunable weights
    left), ``ES`` (int, the early-stopping iteration), ``val`` and ``test`` (float, accuracy in
    percent at ES), ``final_test`` (float, test accuracy at the end of training), ``val_loss``
    (float, at ES), ``weights`` (int, surviving prunable weights), ``iterations`` (int, trained
    this round), ``time_s`` (float, seconds) and ``flag`` (str: ``""``, ``"diverged"`` or
    ``"chance"``). A plugin may return a dict of extra columns for that row; other plugins'
    columns are not in ``record``.
    """


@hookspec
def on_experiment_end(results: pd.DataFrame, run_dir: Path, run: RunInfo) -> None:
    """Called once after the last round with the results DataFrame."""
