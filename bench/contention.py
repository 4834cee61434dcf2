"""The LeNet-300-100 step under contention: the default thread rule against the fixed choices.

On a machine other processes keep busy, many OpenMP threads can make a small model's step
several times slower (each parallel region waits for a thread whose core another process
holds); idle, they make it faster. This section times our step three ways, interleaved, idle and
then with one busy-looping process per core that the bench starts and stops itself: the default
rule (``thread_rule = "adaptive"``: one thread or one per core, whichever measures faster),
``--threads 1``, and every core fixed (``--thread-rule fixed``). Target: the default within
1.15x of the better fixed choice in both conditions.

``python -m bench.contention`` runs this section alone.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from lottery_core.resolution import default_threads
from lottery_core.specs import DatasetSplits
from lottery_core.threads import ThreadRule

from . import data as bdata
from .report import Row, machine, machine_lines, render
from .steps import FrameworkStep

RULE_TARGET = ("<=", 1.15)
BUSY_LOOP = "while True:\n    pass\n"


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """``count`` busy-looping processes for the duration of the block, then stopped."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait(timeout=60)


def choices(cores: int) -> dict[str, ThreadRule]:
    """The three ways to run: a fresh rule each, kept across its calls as a run keeps it."""
    return {
        "default rule": ThreadRule(cores),
        "--threads 1": ThreadRule(1),
        f"{cores} threads fixed": ThreadRule(cores, adaptive=False),
    }


def time_choices(
    data: DatasetSplits, steps: int, repeats: int, collapsed_steps: int
) -> dict[str, float]:
    """Median seconds per step of each choice, interleaved repeat by repeat, after a warm-up
    call (the default rule has then timed both counts a few times, as in a round's first
    thousand steps; its later re-checks are in the timed calls). Every core fixed runs
    ``collapsed_steps`` a call, which on busy cores can be 100x slower a step."""
    runners = {
        name: FrameworkStep("lenet_fc", "mnist", data, collapsed_steps if "fixed" in name else
                            steps, rule=rule)
        for name, rule in choices(default_threads()).items()
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(repeats + 1):
        for name, runner in runners.items():
            per_step = runner()
            if repeat:  # the first call warms up (and lets the default rule settle)
                times[name].append(per_step)
    return {name: statistics.median(values) for name, values in times.items()}


def contention_rows(data: DatasetSplits, steps: int, repeats: int) -> list[Row]:
    """Idle, then busy: each choice's step time and the default rule against the better fixed
    choice."""
    cores = default_threads()
    add = functools.partial(Row, f"7. contention, LeNet-300-100 step ({cores} cores)")
    rows: list[Row] = []
    for condition in ("idle", "busy"):
        busy = busy_cores(cores) if condition == "busy" else None
        with busy or nullcontext():
            medians = time_choices(data, steps, repeats, steps if busy is None else steps // 10)
        where = "idle" if condition == "idle" else f"{cores} busy-looping processes beside it"
        for name, seconds in medians.items():
            key = f"{condition}_{name.split()[0].strip('-')}_ms"
            rows.append(add(key, f"{name}, {where}", 1e3 * seconds, "ms"))
        best = min(seconds for name, seconds in medians.items() if name != "default rule")
        label = f"  default rule / better fixed choice, {condition}"
        ratio = medians["default rule"] / best
        rows.append(add(f"{condition}_rule_ratio", label, ratio, "x", RULE_TARGET))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.contention", description=__doc__)
    parser.add_argument("--steps", type=int, default=1000, help="steps per timed call [1000]")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats [3]")
    args = parser.parse_args(argv)
    data = bdata.synthetic_splits(bdata.MNIST_SHAPE, 55_000, 1, 1)
    print(render(contention_rows(data, args.steps, args.repeats)))
    print(machine_lines(machine(default_threads(), [1, default_threads()])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
