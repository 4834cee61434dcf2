"""Every hook a lottery plugin can implement.

Registration hooks take a ``register`` callback that a plugin may call as often as it likes.
Lifecycle hooks are called with keyword arguments only and let loggers and metric plugins
observe a run; they must not change the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("lottery")
hookimpl = pluggy.HookimplMarker("lottery")


@hookspec
def register_datasets(register: Callable[[Any], None]) -> None:
    """Called once at start-up: call ``register(DatasetSpec(...))`` for each dataset."""


@hookspec
def register_models(register: Callable[[Any], None]) -> None:
    """Called once at start-up: call ``register(ModelSpec(...))`` for each architecture."""


@hookspec
def register_pruning_strategies(register: Callable[[Any], None]) -> None:
    """Called once at start-up: call ``register(PruningStrategy(...))`` for each strategy."""


@hookspec
def register_reinit_policies(register: Callable[[Any], None]) -> None:
    """Called once at start-up: call ``register(ReinitPolicy(...))`` for each policy."""


@hookspec
def on_experiment_start(config: Any, run_dir: Any) -> None:
    """Called before the first round, with the resolved config and the run folder."""


@hookspec
def on_round_start(round_index: int, remaining: float, model: Any) -> None:
    """Called before a round trains, with the share of weights remaining (percent)."""


@hookspec
def on_evaluation(round_index: int, iteration: int, metrics: dict) -> dict | None:
    """Called after each validation evaluation.

    ``metrics`` holds ``val_loss`` and ``val_acc``; a plugin may return a dict of extra metrics,
    which are added to that row of ``history.csv``.
    """


@hookspec
def on_round_end(round_index: int, record: dict, model: Any) -> dict | None:
    """Called after a round's training and evaluation, before pruning.

    A plugin may return a dict of extra columns for that row of ``results.csv``.
    """


@hookspec
def on_experiment_end(results: Any, run_dir: Any) -> None:
    """Called once after the last round with the results DataFrame."""
