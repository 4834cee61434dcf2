"""How many intra-op threads a training step on the CPU gets: measured, window by window.

On an idle machine two or more threads make a LeNet step 1.3-1.5x faster; on a shared one they
make it 10-200x slower (every OpenMP parallel region spins while another process holds a core).
No fixed count is right, so ``ThreadGovernor`` times the steps and moves between one thread and
torch's count, backing off from probes that lose.

That is only allowed when the count cannot change the numbers. MKL's strict conditional
numerical reproducibility (``MKL_CBWR=AUTO,STRICT``, set when ``lottery_core`` is imported,
before any GEMM) makes its GEMMs give the same bits on any thread count, and ``same_bits``
checks it on the real model and batch (outputs, loss and every gradient, one thread against
many) before the governor may switch. Where it fails, a small model stays on one thread and a
larger one on torch's count, as before.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

WINDOW = 32  # steps timed together before a decision...
WINDOW_S = 0.2  # ...or fewer (at least 3) if they take longer than this many seconds
FIRST_PROBE = 256  # steps on one thread before many threads are tried again after a loss
LONGEST_GAP = 16_384
RECHECK = 4_096  # steps on many threads before one thread is timed again
STALL = 4.0  # a many-thread step this many times slower than one thread: leave at once
MARGIN = 1.10  # many threads lose a window only when this many times slower than one


@functools.cache
def counts_to_check(current: int) -> tuple[int, ...]:
    """The thread counts a numbers check must agree across: one, two, ``current`` and one per
    core (cached: it is asked on the training path)."""
    return tuple(sorted({1, 2, current, os.cpu_count() or 1}))


def set_threads(count: int) -> None:
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


class ThreadGovernor:
    """Picks 1 or ``many`` intra-op threads from the measured time per step.

    Call ``step_done()`` after every training step, and ``restart_clock()`` after other work
    (evaluation), so its time is not charged to a step. It starts on one thread, times a window
    on each count and keeps the faster, re-timing one thread every ``RECHECK`` steps. Many
    threads lose a window only when more than ``MARGIN`` times slower than one (a window's
    median still moves by 10-20% on a shared VM, and where two threads gain only ~15%, as for
    LeNet on a Zen 3, a narrow loss is mostly noise). When they lose two windows in a row, it
    waits twice as long as last time before trying them again (one lost window is not enough:
    the first steps on a new count, or a burst of load, made a Conv-2 probe lose once and left it
    on one thread, half as fast, for 256 steps). A single stalled step (another process took a
    core) sends it back to one thread at once.
    """

    def __init__(self, many: int, clock: Callable[[], float] = time.perf_counter):
        self.many = many
        self.clock = clock
        self.speed: dict[int, float] = {}
        self.window: list[float] = []
        self.gap = FIRST_PROBE
        self.switches = 0
        self.threads = 1
        self.left = 1  # steps before the next switch, made at the end of a window
        self.probing = False
        self.doubted = False  # the last window on many threads lost to one thread
        self.last = clock()

    def start(self) -> None:
        """Take the chosen count and start the clock: call just before each round's training."""
        set_threads(self.threads)
        self.window.clear()
        self.last = self.clock()

    def restart_clock(self) -> None:
        """Do not charge the time since the last step to the next one (work between steps)."""
        self.last = self.clock()

    def step_done(self) -> None:
        now = self.clock()
        elapsed, self.last = now - self.last, now
        if self.threads > 1 and elapsed > STALL * self.speed.get(1, math.inf):
            self._lost()
            return
        self.window.append(elapsed)
        self.left -= 1
        if len(self.window) >= WINDOW or (len(self.window) >= 3 and sum(self.window) > WINDOW_S):
            self._window_done()

    def _window_done(self) -> None:
        speed = self.speed[self.threads] = statistics.median(self.window)
        self.window.clear()
        losing = self.threads > 1 and speed > MARGIN * self.speed.get(1, math.inf)
        self.doubted, doubted = losing, self.doubted
        if losing and doubted:
            self._lost()
        elif losing:
            return  # one slow window may be warm-up or a passing burst: time another
        elif self.left > 0:
            return
        elif self.threads == 1:
            self._use(self.many, 1, probing=True)
        elif self.probing:
            self.gap = FIRST_PROBE
            self._use(self.many, RECHECK)
        else:
            self._use(1, 1)

    def _lost(self) -> None:
        self.speed.pop(self.many, None)
        self._use(1, self.gap)
        self.gap = min(2 * self.gap, LONGEST_GAP)

    def _use(self, threads: int, steps: int, probing: bool = False) -> None:
        self.switches += threads != self.threads
        self.threads = threads
        self.left = steps
        self.probing = probing
        self.doubted = False
        self.window.clear()
        set_threads(threads)
        self.last = self.clock()


_CHECKED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, bool]] = weakref.WeakKeyDictionary()


def same_bits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, many: int) -> bool:
    """Whether one training step's output, loss and gradients on (``x``, ``y``) are the same
    bits on one thread as on ``many``. The order of a GEMM's sums depends on shapes and thread
    counts, never on values, so one batch answers for all batches of its shape. Gradients are
    returned, not accumulated, and buffers and the random state are restored, so the model is
    left as it was. Cached per model and shape."""
    key = (tuple(x.shape), many)
    cache = _CHECKED.setdefault(model, {})
    if key not in cache:
        cache[key] = _compare(model, x, y, many)
    return cache[key]


def _compare(model: nn.Module, x: torch.Tensor, y: torch.Tensor, many: int) -> bool:
    before = torch.get_num_threads()
    try:
        results = [_one_step(model, x, y, threads) for threads in (1, many)]
    finally:
        torch.set_num_threads(before)
    return all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def _one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threads: int) -> list:
    torch.set_num_threads(threads)
    was_training = model.training
    buffers = [b.detach().clone() for b in model.buffers()]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            out = model(x)
            loss = F.cross_entropy(out, y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        model.train(was_training)
    zero = torch.zeros(())
    return [out.detach(), loss.detach(), *(zero if g is None else g for g in grads)]
