"""``python -m bench.lockstep``: a whole trials/controls group, batched against one by one.

Issue 30 asks what batching buys end to end, not only per step (``bench.batched``). This runs
the same group twice per repeat, each as a fresh ``cli.py run`` process, in alternating order:

- **serial**: ``run --trials N --controls``: every IMP run, then every control network, one
  after another;
- **batched**: the same with ``--batched``: the N IMP runs in lockstep (round r of all of them
  one batched model), then every control network of every trial as one batched model.

Both run on the thread rule's threads (the default: adaptive, one or one per core).

It prints each command's wall time, serial / batched for each repeat and their median, and
checks that the two groups' ``results.csv`` are the same, every column but ``time_s``, bit for
bit. ``--busy`` repeats it all with one busy-looping process per core (``bench.contention``), as
a machine shared with other jobs. Full MNIST where ``data/`` holds it, else the sample.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import torch

from .contention import busy_cores
from .report import cpu_name

ROOT = Path(__file__).resolve().parent.parent


def command(out: Path, args: argparse.Namespace, dataset: str, batched: bool) -> list[str]:
    flags = ["--dataset", dataset, "--model", "lenet_fc", "--rounds", str(args.rounds),
             "--iterations", str(args.iterations), "--eval-every", str(args.eval_every),
             "--trials", str(args.trials), "--quiet", "--out", str(out)]  # fmt: skip
    if dataset == "mnist":
        flags += ["--data-dir", str(ROOT / "data"), "--no-download"]
    if args.controls:
        flags.append("--controls")
    if batched:
        flags.append("--batched")
    return [sys.executable, str(ROOT / "cli.py"), "run", *flags]


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - started


def science(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "results.csv").drop(columns=["time_s"])


def measure(args: argparse.Namespace, dataset: str, work: Path, condition: str) -> list[str]:
    """The repeats of one condition (idle or busy): a line per repeat and the summary."""
    lines, ratios = [], []
    for repeat in range(args.repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        seconds = {}
        for batched in order:
            out = work / f"{condition}-{repeat}-{'batched' if batched else 'serial'}"
            seconds[batched] = timed(command(out, args, dataset, batched))
        same = science(work / f"{condition}-{repeat}-serial").equals(
            science(work / f"{condition}-{repeat}-batched"))  # fmt: skip
        ratio = seconds[False] / seconds[True]
        ratios.append(ratio)
        lines.append(f"{condition} repeat {repeat}: serial {seconds[False]:.1f} s, batched "
                     f"{seconds[True]:.1f} s, serial/batched {ratio:.2f}x; tables "
                     f"{'the same bit for bit' if same else 'DIFFER'}")  # fmt: skip
        print(lines[-1], flush=True)
    lines.append(f"{condition}: serial/batched {statistics.median(ratios):.2f}x (median of "
                 f"{len(ratios)} paired repeats)")  # fmt: skip
    print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--no-controls", dest="controls", action="store_false")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", action="store_true", help="then again with every core busy")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--keep", help="keep the groups in this folder")
    parser.add_argument("--save", help="also write the output to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.rounds, args.iterations, args.eval_every = 2, 2, 40, 20
        args.repeats = 1
    dataset = "mnist" if (ROOT / "data" / "MNIST" / "raw").is_dir() else "mnist-sample"
    cores = os.cpu_count() or 1
    header = (f"Group: LeNet-300-100 on {dataset}, {args.trials} trials x {args.rounds} rounds x "
              f"{args.iterations} iterations"
              + (f", controls ({args.trials * 2 * (args.rounds - 1)} networks)"
                 if args.controls else "")
              + "; both on the thread rule's threads")  # fmt: skip
    machine = (f"CPU: {cpu_name()}, {cores} cores; torch {torch.__version__}; load average "
               f"{os.getloadavg()[0]:.2f} before")  # fmt: skip
    print(header, machine, sep="\n", flush=True)
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-lockstep-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    lines = [header, machine]
    started = time.perf_counter()
    for condition in ("idle", "busy") if args.busy else ("idle",):
        with busy_cores(cores) if condition == "busy" else nullcontext():
            lines += measure(args, dataset, work, condition)
    lines.append(f"load average {os.getloadavg()[0]:.2f} after; "
                 f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    print(lines[-1])
    if args.save:
        Path(args.save).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
