"""The IMP round loop: train, record, prune, reinitialise, repeat.

Round r trains from the current masks and starting weights, records the share of weights
remaining, the early-stopping iteration and the accuracies there, then (unless it was the last
round) prunes with the chosen strategy and resets the survivors with the chosen policy. The
state lives in ``torch.nn.utils.prune``'s re-parametrisation for the whole experiment, and is
checkpointed after every round so a run can be resumed losing at most the round in progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import checkpoint, masks, rundir
from .config import ExperimentConfig, resolve
from .errors import Interrupted, LotteryError, RunFailed
from .plugins import Plugins, get_plugins
from .progress import Progress
from .specs import DataRequest, DatasetSplits, ReinitContext
from .training import NonFiniteLoss, TrainSettings, train_round

RESULT_COLUMNS = ["round", "remaining", "ES", "val", "test"]


@dataclass
class ExperimentResult:
    """What a run returns to Python: the tables, and where they were written."""

    results: pd.DataFrame
    history: pd.DataFrame
    layers: pd.DataFrame
    config: ExperimentConfig
    run_dir: Path | None
    data_source: str = ""


@dataclass
class RunState:
    """Everything needed to continue an experiment at ``next_round``."""

    next_round: int = 0
    records: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    masks: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    rewind_state: dict[str, torch.Tensor] = field(default_factory=dict)
    initial_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def copy(self, next_round: int | None = None) -> RunState:
        """An independent copy (tables and rewind weights), e.g. for a control to branch from."""
        return RunState(
            next_round=self.next_round if next_round is None else next_round,
            records=[dict(r) for r in self.records],
            history=[dict(r) for r in self.history],
            layers=[dict(r) for r in self.layers],
            masks=dict(self.masks),
            rewind_state={k: v.clone() for k, v in self.rewind_state.items()},
            initial_state=self.initial_state,
        )


def derive_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for initialisation, data order, pruning and reinitialisation."""
    values = np.random.SeedSequence(seed).generate_state(4, dtype=np.uint32)
    return dict(zip(("init", "data_order", "pruning", "reinit"), map(int, values), strict=True))


def round_generator(seed: int, round_index: int) -> torch.Generator:
    """A generator for one round's random choice: no state to carry across rounds or resumes."""
    return torch.Generator().manual_seed(seed * 10_007 + round_index)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise LotteryError(
            f"--device {requested} was requested but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use --device cpu or auto"
        )
    return torch.device(requested)


def load_data(config: ExperimentConfig, plugins: Plugins) -> DatasetSplits:
    """The resolved dataset, loaded once (trials and controls share it)."""
    spec = plugins.datasets.get(config.dataset)  # type: ignore[arg-type]
    request = DataRequest(
        data_dir=Path(config.data_dir),
        seed=config.split_seed,
        validation_size=config.validation_size,
        download=config.download,
    )
    data = spec.load(request)
    if not data.name:
        data.name = spec.name
    return data


class Experiment:
    """One IMP experiment: a resolved config, its plugins, its data and its model."""

    def __init__(
        self,
        config: ExperimentConfig,
        plugins: Plugins | None = None,
        data: DatasetSplits | None = None,
    ):
        self.plugins = plugins or get_plugins()
        self.config = resolve(config, self.plugins)
        self.seeds = derive_seeds(self.config.seed)
        self.device = pick_device(self.config.device)
        self.model_spec = self.plugins.models.get(self.config.model)
        self.strategy = self.plugins.strategies.get(self.config.prune)
        self.reinit = self.plugins.reinits.get(self.config.reinit)
        self._data = data
        self.model: nn.Module | None = None
        self.layers: list[masks.PrunableLayer] = []

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
        self.model_spec.init(model, torch.Generator().manual_seed(seed))
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

    def fresh_parameters(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A fresh initialisation keyed like this model's parameters (weights as weight_orig)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        fresh = dict(self.fresh_model(seed).named_parameters())
        pruned = {f"{layer.name}.weight" for layer in self.layers}
        return {
            (f"{name}_orig" if name in pruned else name): value.detach()
            for name, value in fresh.items()
        }

    # -- one round -------------------------------------------------------------------------

    def rates(self) -> dict[str, float]:
        c = self.config
        return masks.layer_rates(self.layers, c.rate, c.conv_rate, c.output_rate)  # type: ignore[arg-type]

    def prune(self, round_index: int) -> None:
        """Prune the lowest-scoring survivors, as the strategy ranks them, in place."""
        current = masks.current_masks(self.layers)
        generator = round_generator(self.seeds["pruning"], round_index)
        scores = self.strategy.scores(masks.effective_weights(self.layers), generator)
        if self.config.scope == "global":
            new = masks.global_masks(scores, current, self.config.rate)  # type: ignore[arg-type]
        else:
            new = masks.layerwise_masks(scores, current, self.rates())
        masks.apply_masks(self.layers, new)

    def reinitialise(self, state: RunState, round_index: int) -> None:
        context = ReinitContext(
            parameters={k: v.data for k, v in self.parameters().items()},
            rewind_state=state.rewind_state,
            fresh_parameters=self.fresh_parameters,
            generator=round_generator(self.seeds["reinit"], round_index),
            round_index=round_index,
        )
        self.reinit.apply(context)
        for layer in self.layers:
            masks.refresh_weight(layer)
        masks.check_pruned_are_zero(self.layers)
        if self.reinit.name == "rewind":
            check_rewound(self.parameters(), state.rewind_state, self.layers)

    def settings(self, round_index: int) -> TrainSettings:
        c = self.config
        return TrainSettings(
            iterations=c.iterations,  # type: ignore[arg-type]
            batch_size=c.batch_size,  # type: ignore[arg-type]
            lr=c.lr,  # type: ignore[arg-type]
            eval_every=c.eval_every,
            start_iteration=c.rewind_iter if round_index > 0 else 0,
            test_every_eval=c.test_every_eval,
        )

    def train(self, state: RunState, round_index: int, progress: Progress) -> dict:
        """Train one round and return its row of ``results.csv``."""
        assert self.model is not None
        hook = self.plugins.hook
        remaining = masks.remaining_percent(self.layers)
        hook.on_round_start(round_index=round_index, remaining=remaining, model=self.model)
        settings = self.settings(round_index)
        rewind_at = self.config.rewind_iter if round_index == 0 else 0

        def on_iteration(iteration: int) -> None:
            if iteration == rewind_at:
                state.rewind_state = self.snapshot()

        def on_evaluation(row: dict) -> dict:
            progress.describe(round_index, row["val_acc"])
            extra: dict = {}
            for result in hook.on_evaluation(
                round_index=round_index, iteration=row["iteration"], metrics=dict(row)
            ):
                extra.update(result or {})
            return extra

        started = time.perf_counter()
        outcome = train_round(
            self.model,
            self.data,
            settings,
            data_seed=self.seeds["data_order"],
            on_evaluation=on_evaluation,
            on_iteration=on_iteration if rewind_at else None,
            progress=progress.advance,
        )
        counts = masks.remaining_counts(self.layers)
        record = {
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
        for extra in hook.on_round_end(
            round_index=round_index, record=dict(record), model=self.model
        ):
            record.update(extra or {})
        state.history.extend({"round": round_index, **row} for row in outcome.history)
        state.layers.extend(self.layer_rows(round_index))
        state.masks[round_index] = {
            k: v.bool().cpu() for k, v in masks.current_masks(self.layers).items()
        }
        return record

    def layer_rows(self, round_index: int) -> list[dict]:
        rates = self.rates()
        rows = []
        for layer in self.layers:
            kept, total = masks.remaining_counts([layer])[layer.name]
            target = None
            if self.config.scope == "layerwise":
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

    def start(self) -> RunState:
        self.build_model()
        state = RunState()
        state.initial_state = self.snapshot()
        state.rewind_state = state.initial_state
        return state

    def run(
        self,
        run_dir: Path | None = None,
        state: RunState | None = None,
        progress: bool = True,
        stop_after: int | None = None,
        on_trained: Callable[[int, RunState], None] | None = None,
    ) -> ExperimentResult:
        """Run (or continue) every round, writing the run folder after each one.

        ``on_trained(round, state)`` is called after a round trains and before it is pruned
        (controls branch off the dense round through it).
        """
        if state is None:
            state = self.start()
        rounds = self.config.rounds
        assert rounds is not None
        if run_dir is not None and not (run_dir / checkpoint.FILENAME).exists():
            rundir.create(run_dir)
            self.plugins.hook.on_experiment_start(config=self.config, run_dir=run_dir)
            self.write_config(run_dir)
        todo = range(state.next_round, rounds if stop_after is None else min(rounds, stop_after))
        total = sum(self.settings(r).iterations - self.settings(r).start_iteration for r in todo)
        round_index = state.next_round
        try:
            with Progress(total, enabled=progress) as bar:
                for round_index in todo:
                    state.records.append(self.train(state, round_index, bar))
                    if on_trained is not None:
                        on_trained(round_index, state)
                    if round_index + 1 < rounds:
                        self.prune(round_index + 1)
                        self.reinitialise(state, round_index + 1)
                    state.next_round = round_index + 1
                    if run_dir is not None:
                        self.write_round(run_dir, state)
        except KeyboardInterrupt:
            raise Interrupted(run_dir, state.next_round) from None
        except NonFiniteLoss as exc:
            saved = (
                f"rounds 0-{state.next_round - 1} are saved in {run_dir}"
                if (run_dir is not None and state.next_round > 0)
                else "no round had finished"
            )
            raise RunFailed(
                f"round {round_index}: the loss became {exc.value} at iteration {exc.iteration}; "
                f"{saved}; try a lower --lr"
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise RunFailed(
                f"round {round_index}: out of memory on {self.device}; rounds before it are "
                f"saved; try a smaller --batch-size or --device cpu"
            ) from None
        result = self.result(state, run_dir)
        if run_dir is not None and state.next_round >= rounds:
            self.plugins.hook.on_experiment_end(results=result.results, run_dir=run_dir)
        return result

    def result(self, state: RunState, run_dir: Path | None) -> ExperimentResult:
        return ExperimentResult(
            results=results_frame(state.records),
            history=pd.DataFrame(state.history),
            layers=pd.DataFrame(state.layers),
            config=self.config,
            run_dir=run_dir,
            data_source=self.data.source,
        )

    # -- files -----------------------------------------------------------------------------

    def write_config(self, run_dir: Path) -> None:
        rundir.write_json(
            run_dir / "config.json",
            {
                "config": self.config.model_dump(mode="json"),
                "seeds": self.seeds,
                "data_source": self.data.source,
                "data_sizes": {
                    "train": int(self.data.train_x.shape[0]),
                    "val": int(self.data.val_x.shape[0]),
                    "test": int(self.data.test_x.shape[0]),
                },
                "input_shape": list(self.data.input_shape),
                "num_classes": self.data.num_classes,
                "device": str(self.device),
                "versions": versions(),
                "plugins": {
                    "dataset": self.plugins.datasets.sources[self.config.dataset],  # type: ignore[index]
                    "model": self.plugins.models.sources[self.config.model],
                    "prune": self.plugins.strategies.sources[self.config.prune],
                    "reinit": self.plugins.reinits.sources[self.config.reinit],
                },
            },
        )

    def write_round(self, run_dir: Path, state: RunState) -> None:
        """The checkpoint, then the ticket and the per-round tables, and ``results.csv`` last.

        The checkpoint goes first, so the files on disk never claim a round the checkpoint
        lacks: a resume after a kill at any point here repeats at most this round's writes.
        ``results.csv`` goes last, so a round listed there has all its other files in place.
        """
        checkpoint.save(run_dir, self, state)
        rundir.write_csv(run_dir / "history.csv", pd.DataFrame(state.history))
        rundir.write_csv(run_dir / "layers.csv", pd.DataFrame(state.layers))
        last = max(state.masks)
        rundir.write_torch(
            run_dir / "ticket.pt",
            {
                "round": last,
                "masks": state.masks[last],
                "weights": {k: v.cpu() for k, v in state.rewind_state.items()},
                "model": self.config.model,
                "rewind_iter": self.config.rewind_iter,
            },
        )
        rundir.write_csv(run_dir / "results.csv", results_frame(state.records))


def results_frame(records: list[dict]) -> pd.DataFrame:
    """``results.csv``: the seed project's columns first, then the rest."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return frame[RESULT_COLUMNS + [c for c in frame.columns if c not in RESULT_COLUMNS]]


def check_rewound(
    parameters: dict[str, torch.Tensor],
    rewind_state: dict[str, torch.Tensor],
    layers: list[masks.PrunableLayer],
) -> None:
    """Invariant: right after rewinding, every survivor and bias equals its rewind value."""
    mask_of = {f"{layer.name}.weight_orig": layer.mask for layer in layers}
    for name, value in parameters.items():
        expected = rewind_state[name]
        survivors = (
            mask_of[name] > 0 if name in mask_of else torch.ones_like(value, dtype=torch.bool)
        )
        if not torch.equal(value.detach()[survivors], expected[survivors]):
            raise RuntimeError(f"invariant broken: {name} differs from its rewind value")


def versions() -> dict[str, str]:
    import platform

    import pluggy
    import pydantic
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pluggy": pluggy.__version__,
        "pydantic": pydantic.__version__,
        "pandas": pd.__version__,
    }
