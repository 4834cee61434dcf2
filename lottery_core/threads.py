"""How many intra-op threads a CPU training step gets: one, or the most allowed, measured.

On an idle machine two threads make a LeNet step about 1.2x faster than one; on a machine whose
cores other processes keep busy they make it several times slower, because OpenMP's threads
wait for each other at every parallel region while another process holds a core. No fixed count
is right in both conditions, so the ``adaptive`` rule (the default) times the steps in short
segments, keeps the faster of the two counts, and re-times the other now and then, less often
each time it loses (``ThreadRule``). The ``fixed`` rule always uses the most allowed.

Switching counts mid-round changes no number: ``lottery_core`` sets MKL's strict conditional
numerical reproducibility before the first GEMM, so every operation of a step gives the same bits
on any thread count (tests/test_training.py trains with forced switching and compares).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable

import torch

from .errors import LotteryError

THREADS_PER_CORE = 4  # the most intra-op threads a config may ask for, per core of the machine
SEGMENT_STEPS = 40  # steps on the chosen count timed together before a decision...
SEGMENT_SECONDS = 0.25  # ...or fewer (at least MIN_STEPS) if they take longer than this
MIN_STEPS = 5
PROBE_STEPS = 10  # steps a probe of the other count lasts...
PROBE_BUDGET = 2.0  # ...unless they take this many times the chosen count's time for as many
FIRST_GAP = 4  # segments on the chosen count before the other is timed again
LONGEST_GAP = 128  # the gap doubles each time the other count loses, up to this
MARGIN = 1.03  # the other count must be this much faster to be chosen
SLOWDOWN = 1.5  # many threads this much slower than their last segment: time one thread now


def machine_cores() -> int:
    """The cores (logical CPUs) of this machine, whatever share this process may use."""
    return max(1, os.cpu_count() or 1)


def most_threads() -> int:
    """The most intra-op threads a config may ask for: ``THREADS_PER_CORE`` per core. Far more
    threads than cores only slow a step, and OpenMP dies creating tens of thousands of them (a
    segmentation fault mid-run, not an error)."""
    return THREADS_PER_CORE * machine_cores()


def check_threads(count: int) -> None:
    """Refuse a thread count the machine cannot run, in one line naming its cores."""
    most = most_threads()
    if count > most:
        cores = machine_cores()
        raise LotteryError(
            f"invalid config: threads = {count:,} is more than this machine can use: it has "
            f"{cores} core{'s' if cores != 1 else ''}, so at most {most:,} threads "
            f"({THREADS_PER_CORE} a core)"
        )


def use_threads(count: int) -> None:
    """Set torch's intra-op thread count (a no-op when it already is ``count``)."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


class ThreadRule:
    """Picks 1 or ``most`` intra-op threads from measured seconds per step.

    Call :meth:`begin` before a round's steps, :meth:`step_done` after each step and
    :meth:`pause` after other work between steps (an evaluation), so its time is not charged to
    a step. It starts on one thread (never worse than about 1.3x for one segment) and times the
    chosen count in segments of ``SEGMENT_STEPS``; after ``gap`` segments it probes the other
    count for ``PROBE_STEPS`` steps. A probe that wins (median step ``MARGIN`` faster) is chosen
    and the gap reset; one that loses doubles the gap up to ``LONGEST_GAP``, and one that has
    already cost ``PROBE_BUDGET`` times the chosen count's time is ended there, so a collapsed
    count (many threads on busy cores, 10x slower or worse) costs little to re-check. On many
    threads, a segment ``SLOWDOWN`` times slower than the last (load arrived) probes one thread
    at once. With ``adaptive`` off, or ``most == 1``, it only sets ``most``.
    """

    def __init__(
        self, most: int, adaptive: bool = True, clock: Callable[[], float] = time.perf_counter
    ):
        self.most = max(1, most)
        self.adaptive = adaptive and self.most > 1
        self.clock = clock
        self.chosen = 1 if self.adaptive else self.most
        self.current = self.chosen
        self.speed: dict[int, float] = {}
        self.gap = FIRST_GAP
        self.left = 0  # segments on the chosen count before the other is probed
        self.segment: list[float] = []
        self.steps = {1: 0, self.most: 0}
        self.switches = 0
        self.last = clock()

    @property
    def other(self) -> int:
        return 1 if self.chosen == self.most else self.most

    @property
    def probing(self) -> bool:
        return self.current != self.chosen

    def begin(self) -> None:
        use_threads(self.current)
        self.segment.clear()
        self.last = self.clock()

    def pause(self) -> None:
        self.last = self.clock()

    def step_done(self) -> None:
        now = self.clock()
        elapsed, self.last = now - self.last, now
        self.steps[self.current] += 1
        if not self.adaptive:
            return
        self.segment.append(elapsed)
        size = len(self.segment)
        if self.probing:
            budget = PROBE_BUDGET * PROBE_STEPS * self.speed[self.chosen]
            if size >= PROBE_STEPS or sum(self.segment) > budget:
                self._probe_done(statistics.median(self.segment), lost=size < PROBE_STEPS)
        elif size >= SEGMENT_STEPS or (size >= MIN_STEPS and sum(self.segment) > SEGMENT_SECONDS):
            self._segment_done(statistics.median(self.segment))

    def _segment_done(self, per_step: float) -> None:
        previous = self.speed.get(self.chosen, math.inf)
        self.speed[self.chosen] = per_step
        self.left -= 1
        slowed = self.chosen > 1 and per_step > SLOWDOWN * previous
        if self.other not in self.speed or slowed or self.left <= 0:
            self._use(self.other)
        else:
            self._restart()

    def _probe_done(self, per_step: float, lost: bool) -> None:
        self.speed[self.current] = per_step
        if not lost and per_step * MARGIN < self.speed[self.chosen]:
            self.chosen, self.gap = self.current, FIRST_GAP
        else:
            self.gap = min(2 * self.gap, LONGEST_GAP)
            self._use(self.chosen)
        self.left = self.gap
        self._restart()

    def _use(self, count: int) -> None:
        self.switches += count != self.current
        self.current = count
        use_threads(count)
        self._restart()

    def _restart(self) -> None:
        self.segment.clear()
        self.last = self.clock()
