"""Ctrl-C at random moments while ``cli.py run`` loads torch, beside busy-looping processes.

Not a speed benchmark: a reliability count. A KeyboardInterrupt raised inside torch's start-up,
where its C++ calls back into Python, can abort the process (exit -6, a C++ trace) or be lost in
the import (the run then finishes, exit 0). Each trial starts a real run, waits until libtorch
is mapped, waits a random 0-2.5 s, sends SIGINT and records the outcome; the expected one is a
single ``Interrupted.`` line and exit 130. Linux only (it reads ``/proc/PID/maps``).

``python -m bench.ctrl_c [--trials 100] [--busy 2] [--repo DIR] [--installed] [--from-start]
[--delay LO HI] [--twice MS]`` (``--repo``: another checkout to test, e.g. an older commit's;
``--installed``: the installed ``lottery`` command instead of ``cli.py``, the checkout's modules
first on its path; ``--from-start``: the delay counts from the process's start, not from
libtorch, e.g. ``--delay 0.02 0.055`` for the CLI's own imports; ``--twice MS``: a second SIGINT
MS milliseconds after the first). Outputs are saved as ``bench/runs/ctrl-c-*.txt``.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from .contention import busy_cores

ROOT = Path(__file__).resolve().parent.parent
RUN = ["run", "--dataset", "mnist-sample", "--iterations", "3000", "--rounds", "2",
       "--threads", "1", "--quiet", "--out", "run"]  # fmt: skip


def torch_mapped(process: subprocess.Popen[str]) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{process.pid}/maps").read_text()
    except OSError:  # it already ended
        return True


def installed() -> str:
    """This interpreter's installed ``lottery`` command (else the one on the path)."""
    script = Path(sysconfig.get_path("scripts")) / "lottery"
    found = str(script) if script.exists() else shutil.which("lottery")
    if found is None:
        raise SystemExit("the lottery command is not installed (pip install -e .)")
    return found


def trial(repo: Path, delay: float, program: list[str] | None = None, from_start: bool = False,
          twice: float | None = None) -> str:  # fmt: skip
    """One run interrupted ``delay`` seconds after libtorch is mapped (``from_start``: after it
    started), by ``program`` (the checkout's ``cli.py`` if None), and again ``twice`` seconds
    later if given: its outcome in words."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(repo))
        process = subprocess.Popen(
            [*(program or [sys.executable, str(repo / "cli.py")]), *RUN], cwd=tmp, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 600  # a hang guard
        while not from_start and not torch_mapped(process) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        if twice is not None:
            time.sleep(twice)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=600)
    lines = [line for line in stderr.splitlines() if line.strip()]
    if process.returncode == 130 and len(lines) == 1 and lines[0].startswith("Interrupted"):
        return "130, one line"
    return f"exit {process.returncode}: {lines[0][:70] if lines else '(no message)'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--busy", type=int, default=2, help="busy-looping processes beside it")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--installed", action="store_true", help="the lottery command, not cli.py")
    parser.add_argument("--from-start", action="store_true",
                        help="count the delay from the start, not from libtorch's mapping")
    parser.add_argument("--delay", type=float, nargs=2, default=[0.0, 2.5], metavar=("LO", "HI"),
                        help="seconds, drawn uniformly [0 2.5]")
    parser.add_argument("--twice", type=float, metavar="MS", help="a second SIGINT MS ms later")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    program = [installed()] if args.installed else None
    twice = None if args.twice is None else args.twice / 1000
    outcomes: collections.Counter[str] = collections.Counter()
    with busy_cores(args.busy):
        for i in range(args.trials):
            delay = rng.uniform(*args.delay)
            outcomes[trial(args.repo.resolve(), delay, program, args.from_start, twice)] += 1
            print(f"{i + 1}/{args.trials}", file=sys.stderr, end="\r")
    what = program[0] if program else "cli.py"
    when = "the start" if args.from_start else "libtorch mapped"
    again = "" if twice is None else f", twice {args.twice:g} ms apart"
    print(f"{args.repo.resolve()}: {what}, {args.trials} trials, SIGINT {args.delay[0]:g}-"
          f"{args.delay[1]:g} s after {when}{again}, {args.busy} busy loops beside them")
    for outcome, count in outcomes.most_common():
        print(f"  {count:4d}  {outcome}")


if __name__ == "__main__":
    main()
