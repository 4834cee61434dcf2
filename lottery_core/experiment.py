"""The IMP round loop: prune, reinitialise, train, record, repeat.

Round 0 trains the dense network. Every later round r first prunes the trained survivors of
round r-1 with the chosen strategy and resets them with the chosen policy, then trains. Each
round records the share of weights remaining, the early-stopping iteration and the accuracies
there. The state lives in ``torch.nn.utils.prune``'s re-parametrisation for the whole
experiment. The loop does no file I/O: ``after_round`` (the run folder's writer, see
``rundir``) is called once a round has trained, while the model still holds its trained
weights, so what a checkpoint holds is what the next round's pruning reads.

The loop and nothing else: what ``config.json`` records is ``runs.run_record``'s, what is
checked before a run's folder exists ``preflight``'s, and the words a failed run ends with
(``--lr``, ``--batch-size``) ``runs``'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import invariants, masks, seeds
from .config import ExperimentConfig, ResolvedConfig
from .divergence import round_flag
from .errors import Interrupted, LotteryError
from .loading import load_data
from .plugins import Plugins, get_plugins
from .progress import Progress, reporting, run_name
from .pruning import Pruner, prune_round
from .records import identify, results_frame
from .reinit import Reinitialiser, reinit_round
from .resolution import resolve
from .specs import DatasetSplits, RunInfo
from .state import RunState
from .threads import ThreadRule, use_threads
from .training import RoundOutcome, TrainSettings, recipe_of, train_round


@dataclass
class ExperimentResult:
    """What a run returns to Python: the tables, and where they were written."""

    results: pd.DataFrame
    history: pd.DataFrame
    layers: pd.DataFrame
    config: ExperimentConfig
    run_dir: Path | None
    data_source: str = ""


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise LotteryError(
            f"--device {requested} was requested but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use --device cpu or auto"
        )
    return torch.device(requested)


@dataclass
class Trained:
    """A round trained elsewhere, for ``Experiment.train`` to record as its own: the trained
    parameters (keyed like ``named_parameters()``), the round's outcome, the parameters at the
    rewind point (round 0 with late rewinding) and the network's share of the wall time."""

    parameters: dict[str, torch.Tensor]
    outcome: RoundOutcome
    snapshot: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0


class Experiment:
    """One IMP experiment: a resolved config, its plugins, its data and its model.

    Its public steps (``start``/``restore``, ``prune``, ``reinitialise``, ``train``) are what
    ``run`` loops over; a branch (``branches.BranchExperiment``) is the same loop started from a
    state its kind chose.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        plugins: Plugins | None = None,
        data: DatasetSplits | None = None,
    ):
        self.plugins = plugins or get_plugins()  # the Python API's default: the installed set
        if not isinstance(config, ResolvedConfig):  # a config straight from a notebook
            config = resolve(config, self.plugins)
        self.config: ResolvedConfig = config
        self.seeds = seeds.derive_seeds(self.config.seed)
        self.device = pick_device(self.config.device)
        self.model_spec = self.plugins.models.get(self.config.model)
        self.strategy = self.plugins.strategies.get(self.config.prune)
        self.reinit = self.plugins.reinits.get(self.config.reinit)
        self._data = data
        self.model: nn.Module | None = None
        self.layers: list[masks.PrunableLayer] = []
        self.threads: ThreadRule | None = None
        self.run_info = RunInfo()  # which run the lifecycle hooks are told about (``run``)
        self.given: dict[int, Trained] = {}  # rounds a batched unit trained: train() records them
        # trains a round elsewhere when asked (a group's trials in lockstep); None: train it here
        self.round_trainer: Callable[[Experiment, int], Trained | None] | None = None

    @property
    def data(self) -> DatasetSplits:
        if self._data is None:
            self._data = load_data(self.config, self.plugins)
        if self._data.train_x.device != self.device:
            self._data = self._data.to(self.device)
        return self._data

    # -- model -----------------------------------------------------------------------------

    def fresh_model(self, seed: int) -> nn.Module:
        """A new, unpruned model with weights drawn from ``seed``."""
        model = self.model_spec.build(self.data.input_shape, self.data.num_classes)
        self.model_spec.init(model, seeds.generator(seed))
        return model.to(self.device)

    def build_model(self) -> None:
        self.model = self.fresh_model(self.seeds["init"])
        self.layers = masks.prunable_layers(self.model)
        masks.attach_masks(self.layers)

    def parameters(self) -> dict[str, torch.Tensor]:
        assert self.model is not None
        return dict(self.model.named_parameters())

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.parameters().items()}

    def buffer_snapshot(self) -> dict[str, torch.Tensor]:
        """The buffers that are not masks (BatchNorm's running statistics), copied: with the
        parameters (``snapshot``) they make θ0 and θk; empty for a model without BatchNorm."""
        assert self.model is not None
        return {name: b.detach().clone() for name, b in masks.state_buffers(self.model).items()}

    def fresh_parameters(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A fresh initialisation keyed like this model's parameters (weights as weight_orig)."""
        fresh = dict(self.fresh_model(seeds.fresh_seed(generator)).named_parameters())
        pruned = {f"{layer.name}.weight" for layer in self.layers}
        return {
            (f"{name}_orig" if name in pruned else name): value.detach()
            for name, value in fresh.items()
        }

    def start(self) -> RunState:
        """A fresh model (θ0 from the init seed) and an empty state."""
        self.build_model()
        state = RunState()
        state.initial_state = self.snapshot()
        state.rewind_state = state.initial_state
        state.initial_buffers = self.buffer_snapshot()
        state.rewind_buffers = state.initial_buffers
        return state

    def restore(self, model_state: dict[str, torch.Tensor], state: RunState) -> RunState:
        """Continue from a saved (or another run's) trained model and state."""
        self.build_model()
        assert self.model is not None
        try:
            self.model.load_state_dict({k: v.to(self.device) for k, v in model_state.items()})
        except RuntimeError as exc:
            raise LotteryError(
                f"the saved state does not fit model {self.config.model!r}: {exc}"
            ) from None
        for layer in self.layers:
            masks.refresh_weight(layer)
        state.rewind_state = {k: v.to(self.device) for k, v in state.rewind_state.items()}
        state.initial_state = {k: v.to(self.device) for k, v in state.initial_state.items()}
        state.rewind_buffers = {k: v.to(self.device) for k, v in state.rewind_buffers.items()}
        state.initial_buffers = {k: v.to(self.device) for k, v in state.initial_buffers.items()}
        return state

    # -- the steps of a round --------------------------------------------------------------

    def rates(self) -> dict[str, float]:
        return masks.layer_rates(self.layers, *self.config.kind_rates())

    def prune(self, state: RunState, round_index: int) -> None:
        """Prune for ``round_index`` with the strategy, in place (``lottery_core.pruning``)."""
        assert self.model is not None
        pruner = Pruner(
            self.model,
            self.layers,
            self.config,
            self.seeds["pruning"],
            self.data,
            self.strategy,
            self.plugins.strategies.who(self.strategy.name),
            self.device,
        )
        prune_round(pruner, state, round_index)

    def reinitialise(self, state: RunState, round_index: int) -> None:
        """Set the survivors' starting values for ``round_index`` with the reinit policy, in
        place (``lottery_core.reinit``)."""
        assert self.model is not None
        step = Reinitialiser(
            self.model,
            self.layers,
            self.seeds["reinit"],
            self.reinit,
            self.plugins.reinits.who(self.reinit.name),
            self.fresh_parameters,
        )
        reinit_round(step, state, round_index)

    def settings(self, round_index: int) -> TrainSettings:
        """How round ``round_index`` trains. A pruned round trains from iteration k (the rewind
        point) to T, replaying the schedule (``--retrain weights`` and ``lr``), or at the
        schedule's final rate throughout (``--retrain finetune``)."""
        c = self.config
        finetune = round_index > 0 and c.retrain == "finetune"
        return TrainSettings(
            iterations=c.iterations,
            batch_size=c.batch_size,
            lr=c.lr,
            eval_every=c.eval_every,
            start_iteration=c.rewind_iter if round_index > 0 else 0,
            test_every_eval=c.test_every_eval,
            recipe=recipe_of(c, self.plugins, hold=c.iterations - 1 if finetune else None),
            augment=self.plugins.datasets.get(c.dataset).augment if c.augment else None,
        )

    def batch_key(self, round_index: int) -> str:
        """What networks trained as one batched model must share (``batched``): the config but
        its seed (so the data, the recipe and the budget) and its rounds (how many rounds a run
        has does not change how one trains: a branch network's config ends at its round), the
        round's starting iteration and whether it is the first (late rewinding's snapshot, the
        pruned rounds' recipe)."""
        config = self.config.model_dump(mode="json", exclude={"seed", "out", "rounds"})
        start = self.settings(round_index).start_iteration
        return json.dumps([config, start, round_index > 0], sort_keys=True, default=str)

    def train(self, state: RunState, round_index: int, progress: Progress) -> dict:
        """Train one round, record it in ``state`` and return its row of ``results.csv``."""
        assert self.model is not None
        model = self.model
        run = self.run_info

        def notify(hook_name: str, **kwargs: object) -> list:  # the run's identity, watched
            return self.plugins.notify(
                hook_name, watch=model, run_dir=run.run_dir, run=run, **kwargs
            )

        self.check_masks(state, round_index)
        trained_with = masks.current_masks(self.layers)
        remaining = masks.remaining_percent(self.layers)
        notify("on_round_start", round_index=round_index, remaining=remaining, model=model)
        settings = self.settings(round_index)
        rewind_at = self.config.rewind_iter if round_index == 0 else 0

        def on_iteration(iteration: int) -> None:
            if iteration == rewind_at:
                state.rewind_state = self.snapshot()
                state.rewind_buffers = self.buffer_snapshot()

        def on_evaluation(row: dict) -> dict:
            progress.describe(round_index, row["val_acc"])
            extra: dict = {}
            for result in notify(
                "on_evaluation",
                round_index=round_index,
                iteration=row["iteration"],
                metrics=dict(row),
            ):
                extra.update(result or {})
            return extra

        given = self.given.pop(round_index, None)
        if given is None and self.round_trainer is not None:
            given = self.round_trainer(self, round_index)
        started = time.perf_counter()
        if given is None:
            outcome = train_round(
                self.model,
                self.data,
                settings,
                data_seed=self.seeds["data_order"],
                on_evaluation=on_evaluation,
                on_iteration=on_iteration if rewind_at else None,
                progress=progress.advance,
                threads=self.threads,
            )
        else:
            outcome = self.absorb(given, state, rewind_at, on_evaluation)
            progress.advance(settings.iterations - settings.start_iteration)
            started -= given.seconds
        record = self.record(round_index, remaining, outcome, settings, started)
        for extra in notify(
            "on_round_end", round_index=round_index, record=dict(record), model=self.model
        ):
            record.update(extra or {})
        invariants.check_unchanged(self.layers, trained_with, round_index)
        state.records.append(record)
        state.history.extend({"round": round_index, **row} for row in outcome.history)
        state.layers.extend(self.layer_rows(round_index))
        state.masks[round_index] = {k: v.bool().cpu() for k, v in trained_with.items()}
        state.next_round = round_index + 1
        return record

    @torch.no_grad()
    def absorb(
        self,
        given: Trained,
        state: RunState,
        rewind_at: int,
        on_evaluation: Callable[[dict], dict],
    ) -> RoundOutcome:
        """A round trained elsewhere (``given``, by a batched unit) as if trained here: its
        parameters into the model, its rewind snapshot into ``state``, each history row through
        the ``on_evaluation`` hooks (their columns added, after the fact)."""
        for name, parameter in self.parameters().items():
            parameter.copy_(given.parameters[name].to(parameter.device))
        for layer in self.layers:
            masks.refresh_weight(layer)
        if rewind_at and given.snapshot is not None:  # None: the round began past it
            state.rewind_state = {k: v.to(self.device).clone() for k, v in given.snapshot.items()}
            state.rewind_buffers = self.buffer_snapshot()
        outcome = given.outcome
        for row in outcome.history:
            row.update(on_evaluation(row) or {})
        return outcome

    def record(
        self,
        round_index: int,
        remaining: float,
        outcome: RoundOutcome,
        settings: TrainSettings,
        started: float,
    ) -> dict:
        """A trained round's row of ``results.csv`` (before the hooks add their columns)."""
        counts = masks.remaining_counts(self.layers)
        record: dict[str, Any] = {
            "round": round_index,
            "remaining": remaining,
            "ES": outcome.es_iteration,
            "val": outcome.es_val_acc,
            "test": outcome.es_test_acc,
            "final_test": outcome.final_test_acc,
            "val_loss": outcome.es_val_loss,
            "weights": sum(k for k, _ in counts.values()),
            "iterations": settings.iterations - settings.start_iteration,
            "time_s": time.perf_counter() - started,
        }
        record["flag"] = round_flag(outcome.history, outcome.es_val_acc, self.data.num_classes)
        return record

    def check_masks(self, state: RunState, round_index: int) -> None:
        """Masks never regain a one, whoever changed them (``invariants.check_monotone``)."""
        if self.config.prune_at == "imp":
            invariants.check_monotone(self.layers, state.masks.get(round_index - 1), round_index)

    def layer_rows(self, round_index: int) -> list[dict]:
        rates = self.rates() if self.config.scope == "layerwise" else {}
        rows = []
        for layer in self.layers:
            kept, total = masks.remaining_counts([layer])[layer.name]
            target = None
            if layer.name in rates:
                target = 100.0 * (1 - rates[layer.name]) ** round_index
            rows.append(
                {
                    "round": round_index,
                    "layer": layer.name,
                    "kind": layer.kind,
                    "total": total,
                    "remaining": kept,
                    "remaining_pct": 100.0 * kept / total,
                    "target_pct": target,
                }
            )
        return rows

    # -- the whole experiment --------------------------------------------------------------

    def run(
        self,
        state: RunState | None = None,
        progress: bool = True,
        stop_after: int | None = None,
        after_round: Callable[[RunState], None] | None = None,
        run_dir: Path | None = None,
    ) -> ExperimentResult:
        """Run (or continue) the rounds from ``state.next_round``; ``after_round(state)`` is
        called after each round trains (the run folder's writer). ``run_dir`` is named in
        messages, the result and every lifecycle hook call (``run_dir``, ``run``)."""
        self.run_info = identify(run_dir)
        if state is None:
            state = self.start()
        rounds = self.config.rounds
        assert rounds is not None
        last = rounds if stop_after is None else min(rounds, stop_after)
        todo = range(state.next_round, last)
        total = sum(self.settings(r).iterations - self.settings(r).start_iteration for r in todo)
        round_index = state.next_round
        threads_before = torch.get_num_threads()
        if self.threads is None:  # one rule for the run: what it measured carries across rounds
            self.threads = ThreadRule(
                self.config.threads,
                adaptive=self.config.thread_rule == "adaptive" and self.device.type == "cpu",
            )
        try:
            self.threads.begin()
            name = run_name(run_dir)  # what its rows and bar call it (trials, controls)
            with (
                reporting() as report,
                report.expect(len(todo)) as own,
                Progress(
                    total, enabled=progress, name=name, overall=None if own else report
                ) as bar,
            ):
                report.data(self.data.source)  # before the first round trains
                for round_index in todo:
                    if round_index > 0:
                        self.prune(state, round_index)
                        self.reinitialise(state, round_index)
                    record = self.train(state, round_index, bar)
                    if after_round is not None:
                        after_round(state)
                    report.round(record, name)  # once saved: its row, printed at once
        except KeyboardInterrupt:
            raise Interrupted(run_dir, state.next_round) from None
        finally:
            use_threads(threads_before)
        return self.result(state, run_dir)

    def result(self, state: RunState, run_dir: Path | None) -> ExperimentResult:
        return ExperimentResult(
            results=results_frame(state.records),
            history=pd.DataFrame(state.history),
            layers=pd.DataFrame(state.layers),
            config=self.config,
            run_dir=run_dir,
            data_source=self.data.source,
        )
