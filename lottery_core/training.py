"""One round of training: minibatches indexed from in-memory tensors, periodic validation.

The early-stopping iteration is found after the fact: training always runs its whole budget,
the parameters at the best validation loss so far are kept in preallocated buffers, and the test
set is evaluated once at that snapshot (and once at the end), which gives the test accuracy at
ES exactly without evaluating the test set at every evaluation.

Speed (measured by ``python -m bench``):

- Masks are applied to gradients, not to every forward (``grad_masking.masks_on_gradients``):
  the same numbers as ``torch.nn.utils.prune``'s pre-hook, a fifth less time per LeNet step.
- On the CPU, the intra-op thread count of training steps is chosen by measured speed
  (``threads.ThreadGovernor``): many threads on an idle machine, one when another process
  holds a core (there, two threads made steps 10-200x slower). It may switch only where the
  count cannot change the numbers (``threads.same_bits``); where it can, a small model (forward
  work per batch under ``SMALL_MODEL_FLOPS``, e.g. LeNet) trains on one thread and a larger one
  on torch's count. ``ADAPTIVE_THREADS = False`` turns the choice off.
- Adam is the fused kernel: one pass over each parameter instead of eight foreach passes, and
  no ``torch.sqrt`` over the second moments, which runs 5-8x slower over the zeros that pruned
  weights leave there.
- The step does no host sync: the training loss is summed on the device and read at
  evaluations. Evaluation of a small model on one thread is spread over helper threads.
- The batch is gathered with ``torch.index_select`` (a third of the time of ``x[index]``'s
  advanced indexing) and the gradients are cleared by hand (``zero_grad``'s Python costs
  more): the same bits, about 5% of a LeNet step.
- On AMD CPUs with AVX-512, where MKL leaves AVX-512 unused (``onednn.preferred``), linear
  GEMMs run on oneDNN, about twice as fast there: evaluation's where ``onednn.suitable``
  allows, and training's large ones where ``onednn_training.allowed`` does. Elsewhere (on an
  AVX2-only Zen 3 oneDNN gained nothing) every GEMM stays on torch's own path.

So a seed gives the same bits whatever the core count or the load, for a small model always and
for a larger one where ``threads.same_bits`` holds (same torch, BLAS and CPU type).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import onednn, threads
from .grad_masking import masks_on_gradients
from .specs import DatasetSplits
from .threads import ThreadGovernor

EVAL_CHUNK = 1000
SMALL_MODEL_FLOPS = 1e9
ADAPTIVE_THREADS = True


@dataclass(frozen=True)
class TrainSettings:
    iterations: int
    batch_size: int
    lr: float
    eval_every: int
    start_iteration: int = 0
    test_every_eval: bool = False


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


class EvalHelpers:
    """Threads that compute part of each evaluation's row blocks beside the calling thread."""

    def __init__(self, count: int):
        self.count = count
        self.executor = ThreadPoolExecutor(count, thread_name_prefix="lottery-eval")

    def close(self) -> None:
        self.executor.shutdown()


_helpers: EvalHelpers | None = None


def _forget_helpers() -> None:
    """A forked child has none of its parent's threads: it must start its own."""
    global _helpers
    _helpers = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def eval_helpers(count: int) -> EvalHelpers | None:
    """``count`` helper threads, kept from round to round (starting threads costs ms)."""
    global _helpers
    if count < 1:
        return None
    if _helpers is None or _helpers.count != count:
        if _helpers is not None:
            _helpers.close()
        _helpers = EvalHelpers(count)
    return _helpers


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, pool: EvalHelpers | None = None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) over a whole split.

    The loss is summed in float32 over each chunk of ``EVAL_CHUNK`` rows, then over the chunks
    in float64, in order. The logits are computed in row blocks, spread over ``pool``'s threads
    and this one; a row's logits do not depend on the block it is computed in, so the numbers
    do not depend on the pool. Linear layers run on oneDNN where ``onednn.suitable`` allows.
    (Every evaluation goes through this function; bench/ times it.)
    """
    was_training = model.training
    model.eval()
    try:
        with onednn.linears_on_onednn(model, x):
            logits = _logits(model, x, pool)
    finally:
        model.train(was_training)
    with torch.inference_mode():
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        for start in range(0, x.shape[0], EVAL_CHUNK):
            chunk = logits[start : start + EVAL_CHUNK]
            target = y[start : start + EVAL_CHUNK]
            loss_sum += F.cross_entropy(chunk, target, reduction="sum").double()
            correct += (chunk.argmax(dim=1) == target).sum()
    n = x.shape[0]
    return loss_sum.item() / n, 100.0 * correct.item() / n


def _logits(model: nn.Module, x: torch.Tensor, pool: EvalHelpers | None) -> torch.Tensor:
    """``model(x)`` in blocks of at most ``EVAL_CHUNK`` rows; with a pool, block ``i`` of every
    ``workers`` goes to worker ``i`` (this thread is worker 0). A one-row tail joins the block
    before it: BLAS and oneDNN compute a single row by another kernel, with other rounding.

    Concurrent forwards share the model: its parameters are only read, and the pruning pre-hook
    writes the same ``weight_orig * weight_mask`` into ``weight`` from every thread.
    """
    workers = 1 + (pool.count if pool is not None else 0)
    size = math.ceil(EVAL_CHUNK / workers)
    starts = list(range(0, x.shape[0], size))
    if len(starts) > 1 and x.shape[0] - starts[-1] == 1:
        starts.pop()
    blocks = [x[a:b] for a, b in zip(starts, [*starts[1:], x.shape[0]], strict=True)]
    helpers = [
        pool.executor.submit(_forward_all, model, blocks[i::workers])  # type: ignore[union-attr]
        for i in range(1, workers)
    ]
    mine = _forward_all(model, blocks[0::workers])
    parts = [mine, *(future.result() for future in helpers)]
    ordered = [parts[i % workers][i // workers] for i in range(len(blocks))]
    return torch.cat(ordered) if len(ordered) > 1 else ordered[0]


@torch.inference_mode()
def _forward_all(model: nn.Module, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
    return [model(block) for block in blocks]


def epoch_permutation(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """The example order of one epoch: a function of (seed, epoch) alone, so any iteration can
    be resumed or rewound to without replaying earlier epochs."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, rebuilt every round: moments from before pruning must not move pruned weights."""
    params = list(model.parameters())
    if all(p.device.type in ("cpu", "cuda") for p in params):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


@dataclass
class ThreadPlan:
    """The thread settings of one round on the CPU.

    Training steps run under ``governor`` (thread count chosen by measured speed, allowed only
    when the count cannot change the numbers) or on a fixed ``train_threads`` (None: torch's
    setting); evaluation runs on ``eval_threads`` with ``pool``'s helper threads beside it.
    """

    train_threads: int | None = None
    governor: ThreadGovernor | None = None
    eval_threads: int | None = None
    pool: EvalHelpers | None = None

    def step_done(self) -> None:
        if self.governor is not None:
            self.governor.step_done()

    def between_steps(self) -> None:
        """Work outside a step (an epoch's shuffle) was just done: not a step's time."""
        if self.governor is not None:
            self.governor.restart_clock()

    @contextmanager
    def evaluating(self) -> Iterator[EvalHelpers | None]:
        """Run evaluation on ``eval_threads`` with the helper pool, or on the training threads
        when the governor has chosen many (then there are no helpers to wake); afterwards the
        training threads are back and the evaluation is not charged to a step."""
        on_many = self.governor is not None and self.governor.threads > 1
        training_threads = torch.get_num_threads()
        if self.eval_threads is not None and not on_many:
            threads.set_threads(self.eval_threads)
        try:
            yield None if on_many else self.pool
        finally:
            threads.set_threads(training_threads)
            if self.governor is not None:
                self.governor.restart_clock()


_SMALL: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, bool]] = weakref.WeakKeyDictionary()
_GOVERNORS: weakref.WeakKeyDictionary[nn.Module, ThreadGovernor] = weakref.WeakKeyDictionary()
last_plan: ThreadPlan | None = None  # the latest round's, for bench/ to report


def is_small(model: nn.Module, example: torch.Tensor, batch_size: int) -> bool:
    """Whether a batch's forward work is under ``SMALL_MODEL_FLOPS`` (made once per model and
    input shape)."""
    key = (tuple(example.shape[1:]), batch_size)
    if model not in _SMALL or _SMALL[model][0] != key:
        _SMALL[model] = (key, _forward_flops(model, example[:1]) * batch_size < SMALL_MODEL_FLOPS)
    return _SMALL[model][1]


def _forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def thread_plan(model: nn.Module, data: DatasetSplits, batch_size: int) -> ThreadPlan:
    """Threads for a round: see ``ThreadPlan`` and ``lottery_core.threads``.

    Small models evaluate on one intra-op thread per block with helper threads on the other
    cores; larger ones on torch's count. Training switches between one thread and torch's
    count by speed where ``threads.same_bits`` holds (one governor per model, kept from round to
    round, so what it learnt carries over); otherwise a small model trains on one
    thread (immune to a busy machine) and a larger one on torch's count.
    """
    many = torch.get_num_threads()
    if data.train_x.device.type != "cpu" or many == 1:
        return ThreadPlan()
    small = is_small(model, data.train_x, batch_size)
    plan = ThreadPlan(eval_threads=1, pool=eval_helpers(many - 1)) if small else ThreadPlan()
    x, y = data.train_x[:batch_size], data.train_y[:batch_size]
    if ADAPTIVE_THREADS and threads.same_bits(model, x, y, many):
        governor = _GOVERNORS.get(model)
        if governor is None or governor.many != many:
            governor = _GOVERNORS[model] = threads.ThreadGovernor(many)
        plan.governor = governor
    elif small:
        plan.train_threads = 1
    return plan


def train_round(
    model: nn.Module,
    data: DatasetSplits,
    settings: TrainSettings,
    data_seed: int,
    on_evaluation: Callable[[dict], dict | None] | None = None,
    on_iteration: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RoundOutcome:
    """Train ``model`` in place from ``settings.start_iteration`` to ``settings.iterations``.

    ``on_iteration(it)`` is called after the step that completes iteration ``it`` only when
    given (late rewinding snapshots through it); ``progress(k)`` reports k more steps done.
    """
    global last_plan
    n = data.train_x.shape[0]
    batch = settings.batch_size
    steps_per_epoch = n // batch
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {batch} exceeds the {n} training examples")
    before = torch.get_num_threads()
    plan = last_plan = thread_plan(model, data, batch)
    try:
        if plan.governor is not None:
            plan.governor.start()
        elif plan.train_threads is not None:
            threads.set_threads(plan.train_threads)
        with masks_on_gradients(model):
            return _train(
                model, data, settings, data_seed, plan, on_evaluation, on_iteration, progress
            )
    finally:
        threads.set_threads(before)


def _train(
    model: nn.Module,
    data: DatasetSplits,
    settings: TrainSettings,
    data_seed: int,
    plan: ThreadPlan,
    on_evaluation: Callable[[dict], dict | None] | None,
    on_iteration: Callable[[int], None] | None,
    progress: Callable[[int], None] | None,
) -> RoundOutcome:
    params = list(model.parameters())
    optimizer = make_optimizer(model, settings.lr)
    outcome = RoundOutcome()
    best = [p.detach().clone() for p in params]
    n = data.train_x.shape[0]
    batch = settings.batch_size
    steps_per_epoch = n // batch
    device = data.train_x.device
    train_loss_sum = torch.zeros((), device=device)
    window = 0
    iteration = settings.start_iteration
    model.train()
    while iteration < settings.iterations:
        epoch, offset = divmod(iteration, steps_per_epoch)
        order = epoch_permutation(data_seed, epoch, n, device)
        plan.between_steps()
        for step in range(offset, steps_per_epoch):
            index = order[step * batch : (step + 1) * batch]
            x = torch.index_select(data.train_x, 0, index)
            loss = F.cross_entropy(model(x), torch.index_select(data.train_y, 0, index))
            for p in params:
                p.grad = None
            loss.backward()
            optimizer.step()
            train_loss_sum += loss.detach()
            plan.step_done()
            window += 1
            iteration += 1
            if on_iteration is not None:
                on_iteration(iteration)
            if iteration % settings.eval_every == 0 or iteration == settings.iterations:
                with plan.evaluating() as pool:
                    row = _evaluation_row(
                        model, data, settings, iteration, train_loss_sum / window, pool
                    )
                    if on_evaluation is not None:
                        row.update(on_evaluation(row) or {})
                    outcome.history.append(row)
                    if row["val_loss"] < outcome.es_val_loss:
                        outcome.es_iteration = iteration
                        outcome.es_val_loss = row["val_loss"]
                        outcome.es_val_acc = row["val_acc"]
                        _copy_into(best, params)
                    if progress is not None:
                        progress(window)
                train_loss_sum.zero_()
                window = 0
            if iteration >= settings.iterations:
                break
    with plan.evaluating() as pool:
        outcome.final_test_acc = evaluate(model, data.test_x, data.test_y, pool)[1]
        outcome.es_test_acc = _evaluate_at(model, params, best, data, pool)
    return outcome


def _evaluation_row(
    model: nn.Module,
    data: DatasetSplits,
    settings: TrainSettings,
    iteration: int,
    train_loss: torch.Tensor,
    pool: EvalHelpers | None = None,
) -> dict:
    train_loss_value = train_loss.item()
    val_loss, val_acc = evaluate(model, data.val_x, data.val_y, pool)
    for value in (train_loss_value, val_loss):
        if value != value or value in (float("inf"), float("-inf")):
            raise NonFiniteLoss(iteration, value)
    row = {
        "iteration": iteration,
        "train_loss": train_loss_value,
        "val_loss": val_loss,
        "val_acc": val_acc,
    }
    if settings.test_every_eval:
        row["test_loss"], row["test_acc"] = evaluate(model, data.test_x, data.test_y, pool)
    return row


@torch.no_grad()
def _evaluate_at(
    model: nn.Module,
    params: list[torch.Tensor],
    snapshot: list[torch.Tensor],
    data: DatasetSplits,
    pool: EvalHelpers | None = None,
) -> float:
    """Test accuracy with the parameters temporarily set to ``snapshot``; restores them."""
    current = [p.detach().clone() for p in params]
    _copy_into(params, snapshot)
    accuracy = evaluate(model, data.test_x, data.test_y, pool)[1]
    _copy_into(params, current)
    return accuracy


@torch.no_grad()
def _copy_into(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
