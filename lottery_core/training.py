"""One round of training: minibatches indexed from in-memory tensors, periodic validation.

The pruning re-parametrisation is used as PyTorch ships it: each forward's pre-hook computes
``weight = weight_orig * weight_mask`` and autograd masks the gradient on the way back, so pruned
weights get no gradient and stay pruned. The speed comes from public PyTorch alone (measured by
``python -m bench``): the whole dataset is a tensor on the run's device and a batch is one
``index_select``; Adam and SGD are torch's fused kernels (``lottery_core.optim``); the step never
waits for the device (the training loss is summed on it and read only at evaluations).

How the weights move is the run's ``Recipe``: an optimizer plugin (a fresh state every round,
so moments from before pruning never move pruned weights) and a learning rate that is a pure
function of the iteration (``lr x warmup x schedule``, OpenLTH's habit), set before every step,
so nothing about it is carried across rounds or a resume.

The early-stopping iteration is found after the fact: training always runs its whole budget,
the parameters at the best validation loss so far are kept in preallocated buffers, and the test
set is evaluated once at that snapshot (and once at the end), which gives the test accuracy at
ES exactly without evaluating the test set at every evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from . import guards, masks, optim, seeds
from .errors import PluginError
from .specs import Augment, DatasetSplits, OptimizerSpec, ScheduleSpec
from .threads import ThreadRule

if TYPE_CHECKING:
    from .config import ResolvedConfig
    from .plugins import Plugins

EVAL_CHUNK = 1000


@dataclass(frozen=True)
class Recipe:
    """How a round moves the weights: the optimizer plugin, and the learning rate of the step
    from ``iteration`` as ``lr x warmup x schedule`` (``factor``)."""

    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    config: ResolvedConfig  # what the plugins read: momentum, milestones, warmup, iterations
    optimizer_who: str = "optimizer"
    schedule_who: str = "schedule"
    hold: int | None = None  # every step at this iteration's factor (fine-tuning: the last)

    def factor(self, iteration: int) -> float:
        """The multiple of ``lr`` for the step from ``iteration`` to ``iteration + 1``: linear
        warmup (the ``warmup``-th step is the first at the full rate; no step at 0) times the
        schedule's factor, which must be a finite number of at least 0. With ``hold`` set,
        every step's factor is that iteration's (``--retrain finetune``: the final rate)."""
        if self.hold is not None:
            iteration = self.hold
        config = self.config
        warmup = min(1.0, (iteration + 1) / config.warmup) if config.warmup else 1.0
        try:
            value = self.schedule.factor(iteration, config.iterations, config)
        except Exception:
            with guards.blame(self.schedule_who, f"at iteration {iteration}"):
                raise
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PluginError(
                f"{self.schedule_who} returned a {type(value).__name__} at iteration "
                f"{iteration}; expected a float"
            )
        if not 0.0 <= value < math.inf:
            raise PluginError(
                f"{self.schedule_who} returned {value} at iteration {iteration}; a factor is a "
                "finite number of at least 0"
            )
        return warmup * float(value)


def recipe_of(config: ResolvedConfig, plugins: Plugins, hold: int | None = None) -> Recipe:
    """The config's optimizer and schedule, from the plugins; ``hold``: ``Recipe.hold``."""
    return Recipe(
        plugins.optimizers.get(config.optimizer),
        plugins.schedules.get(config.schedule),
        config,
        plugins.optimizers.who(config.optimizer),
        plugins.schedules.who(config.schedule),
        hold,
    )


@dataclass(frozen=True)
class TrainSettings:
    iterations: int
    batch_size: int
    lr: float
    eval_every: int
    start_iteration: int = 0
    test_every_eval: bool = False
    recipe: Recipe | None = None  # None: Adam at the constant ``lr`` (``optim.Adam``)
    augment: Augment | None = None  # the dataset's, on training batches (``DatasetSpec``)


@dataclass
class RoundOutcome:
    """What one round of training produced."""

    history: list[dict] = field(default_factory=list)
    es_iteration: int = 0
    es_val_loss: float = float("inf")
    es_val_acc: float = 0.0
    es_test_acc: float = 0.0
    final_test_acc: float = 0.0


class NonFiniteLoss(RuntimeError):
    """The training or validation loss became NaN or infinite."""

    def __init__(self, iteration: int, value: float):
        super().__init__(f"loss became {value} by iteration {iteration}")
        self.iteration = iteration
        self.value = value


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    images: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) over a whole split.

    The split goes through the model in chunks of ``EVAL_CHUNK`` rows; each chunk's loss is
    summed in float32, the chunks in float64, in order, so the figure does not depend on how
    many rows the split has beyond the chunking. ``images`` turns a stored chunk into model
    input (``DatasetSplits.images``).
    """
    was_training = model.training
    model.eval()
    try:
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        for start in range(0, x.shape[0], EVAL_CHUNK):
            logits = model(images(x[start : start + EVAL_CHUNK]))
            target = y[start : start + EVAL_CHUNK]
            loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
            correct += (logits.argmax(dim=1) == target).sum()
    finally:
        model.train(was_training)
    n = x.shape[0]
    return loss_sum.item() / n, 100.0 * correct.item() / n


def epoch_permutation(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """The example order of one epoch (``seeds.epoch_generator``)."""
    return torch.randperm(n, generator=seeds.epoch_generator(seed, epoch)).to(device)


class _Updater:
    """A round's optimizer: the recipe's state, made as the round starts (moments from before
    pruning must not move pruned weights), and one step at the iteration's learning rate.
    Without a recipe, Adam at a constant rate (``optim.Adam``: torch.optim.Adam's update, bit
    for bit, without its imports)."""

    def __init__(self, params: list[torch.Tensor], settings: TrainSettings) -> None:
        self.params = params
        self.lr = settings.lr
        self.recipe = settings.recipe
        if self.recipe is None:
            self.state: Any = optim.Adam(params, settings.lr, fused=optim.fusable(params))
            return
        spec = self.recipe.optimizer
        with guards.blame(self.recipe.optimizer_who, "making its state"):
            self.state = spec.make_state(params, self.recipe.config)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, iteration: int, closure: Callable[[], torch.Tensor]) -> None:
        """The update from ``iteration`` to ``iteration + 1``."""
        recipe = self.recipe
        if recipe is None:
            self.state.step()
            return
        lr = self.lr * recipe.factor(iteration)
        try:
            recipe.optimizer.step(self.params, self.state, lr, closure)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception:
            with guards.blame(recipe.optimizer_who, f"in its step at iteration {iteration}"):
                raise


def train_round(
    model: nn.Module,
    data: DatasetSplits,
    settings: TrainSettings,
    data_seed: int,
    on_evaluation: Callable[[dict], dict | None] | None = None,
    on_iteration: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    threads: ThreadRule | None = None,
) -> RoundOutcome:
    """Train ``model`` in place from ``settings.start_iteration`` to ``settings.iterations``.

    ``on_iteration(it)`` is called after the step that completes iteration ``it`` only when
    given (late rewinding snapshots through it); ``on_evaluation(row)`` after each validation,
    and may return extra columns for the row; ``progress(k)`` reports k more steps done;
    ``threads`` (the thread rule) is told of every step and of the work between steps.
    ``settings.augment`` (the dataset's augmentation, where the run has it) transforms each
    training batch of stored images before ``data.images``, with a generator of (``data_seed``,
    iteration) (``seeds.augment_generator``).
    """
    n = data.train_x.shape[0]
    batch = settings.batch_size
    steps_per_epoch = _steps_per_epoch(n, batch)
    params: list[torch.Tensor] = list(model.parameters())
    optimizer = _Updater(params, settings)
    round_log = _RoundLog(model, data, settings, on_evaluation)
    device = data.train_x.device
    train_loss_sum = torch.zeros((), device=device)
    window = 0
    iteration = settings.start_iteration
    x = y = torch.empty(0)
    augment = settings.augment

    def closure() -> torch.Tensor:  # the step's batch again, at the current parameters (SAM)
        optimizer.zero_grad()
        with torch.enable_grad():
            again = F.cross_entropy(model(x), y)
            again.backward()
        return again.detach()

    model.train()
    if threads is not None:
        threads.begin()
    while iteration < settings.iterations:
        epoch, offset = divmod(iteration, steps_per_epoch)
        order = epoch_permutation(data_seed, epoch, n, device)
        for step in range(offset, steps_per_epoch):
            index = order[step * batch : (step + 1) * batch]
            stored = torch.index_select(data.train_x, 0, index)
            if augment is not None:
                stored = augmented(augment, stored, data_seed, iteration)
            x = data.images(stored)
            y = torch.index_select(data.train_y, 0, index)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step(iteration, closure)
            train_loss_sum += loss.detach()
            if threads is not None:
                threads.step_done()
            window += 1
            iteration += 1
            if on_iteration is not None:
                on_iteration(iteration)
            if iteration % settings.eval_every == 0 or iteration == settings.iterations:
                round_log.evaluation(iteration, train_loss_sum / window)
                if progress is not None:
                    progress(window)
                train_loss_sum.zero_()
                window = 0
                if threads is not None:
                    threads.pause()
            if iteration >= settings.iterations:
                break
    return round_log.finish()


def augmented(
    augment: Augment, stored: torch.Tensor, data_seed: int, iteration: int
) -> torch.Tensor:
    """One training batch through the dataset's augmentation, checked: a batch of the same
    shape, dtype and device."""
    with guards.blame("the dataset's augment", f"at iteration {iteration}"):
        out = augment(stored, seeds.augment_generator(data_seed, iteration))
    if (
        not isinstance(out, torch.Tensor)
        or out.shape != stored.shape
        or out.dtype != stored.dtype
        or out.device != stored.device
    ):
        got = (
            f"{out.dtype} {tuple(out.shape)} on {out.device}"
            if isinstance(out, torch.Tensor)
            else type(out).__name__
        )
        raise PluginError(
            f"the dataset's augment returned {got} for a batch of {stored.dtype} "
            f"{tuple(stored.shape)} on {stored.device}; it must keep shape, dtype and device"
        )
    return out


def _steps_per_epoch(n: int, batch: int) -> int:
    """Whole batches per epoch; a batch larger than the data would train nothing, so refuse."""
    steps_per_epoch = n // batch
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {batch} exceeds the {n} training examples")
    return steps_per_epoch


class _RoundLog:
    """A round's history and early-stopping snapshot, kept out of ``train_round``'s step loop:
    it is called only at evaluations and at the end, so the per-step path is unchanged."""

    def __init__(
        self,
        model: nn.Module,
        data: DatasetSplits,
        settings: TrainSettings,
        on_evaluation: Callable[[dict], dict | None] | None,
    ) -> None:
        self.model = model
        self.data = data
        self.settings = settings
        self.on_evaluation = on_evaluation
        # the early-stopping snapshot: parameters, and buffers that are not masks (BatchNorm's
        # running statistics: the test accuracy at ES is the network's as it was there)
        self.params = [*model.parameters(), *masks.state_buffers(model).values()]
        self.outcome = RoundOutcome()
        self.best = [p.detach().clone() for p in self.params]

    def evaluation(self, iteration: int, train_loss: torch.Tensor) -> None:
        """Validate, add the row (with ``on_evaluation``'s columns) and, at a new best
        validation loss, snapshot the parameters: the early-stopping point."""
        row = evaluation_row(self.model, self.data, self.settings, iteration, train_loss)
        if self.on_evaluation is not None:
            row.update(self.on_evaluation(row) or {})
        outcome = self.outcome
        outcome.history.append(row)
        if row["val_loss"] < outcome.es_val_loss:
            outcome.es_iteration = iteration
            outcome.es_val_loss = row["val_loss"]
            outcome.es_val_acc = row["val_acc"]
            _copy_into(self.best, self.params)

    def finish(self) -> RoundOutcome:
        """The test accuracy at the end and at the early-stopping snapshot (two evaluations)."""
        model, data, outcome = self.model, self.data, self.outcome
        outcome.final_test_acc = evaluate(model, data.test_x, data.test_y, data.images)[1]
        outcome.es_test_acc = _evaluate_at(model, self.params, self.best, data)
        return outcome


def evaluation_row(
    model: nn.Module,
    data: DatasetSplits,
    settings: TrainSettings,
    iteration: int,
    train_loss: torch.Tensor,
) -> dict:
    """One row of ``history.csv``; a non-finite loss stops the round (``NonFiniteLoss``)."""
    train_loss_value = train_loss.item()
    val_loss, val_acc = evaluate(model, data.val_x, data.val_y, data.images)
    for value in (train_loss_value, val_loss):
        if not math.isfinite(value):
            raise NonFiniteLoss(iteration, value)
    row = {
        "iteration": iteration,
        "train_loss": train_loss_value,
        "val_loss": val_loss,
        "val_acc": val_acc,
    }
    if settings.test_every_eval:
        row["test_loss"], row["test_acc"] = evaluate(model, data.test_x, data.test_y, data.images)
    return row


@torch.no_grad()
def _evaluate_at(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    snapshot: list[torch.Tensor],
    data: DatasetSplits,
) -> float:
    """Test accuracy with the parameters temporarily set to ``snapshot``; restores them."""
    current = [p.detach().clone() for p in params]
    _copy_into(params, snapshot)
    accuracy = evaluate(model, data.test_x, data.test_y, data.images)[1]
    _copy_into(params, current)
    return accuracy


@torch.no_grad()
def _copy_into(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
