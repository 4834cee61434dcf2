"""``python -m bench.sweep``: parallel runs on Ray against one process, on this machine.

The same four small runs (LeNet-300-100 trials on the MNIST sample, seeds 0-3) are run as:

- ``run --trials 4`` in one process, on one thread and on the default thread count (one per
  core): how runs went before Ray;
- ``sweep`` with ``--workers 1`` and ``--workers 2``, one thread per run, on the embedded Ray.

Every variant is a fresh CLI process, timed from start to exit as a user sees it; ``--repeats``
interleaves the variants in rotating order and reports medians. From the sweeps' own records
(``status.json``: every unit's seconds, worker pid and peak RSS; ``results.csv``: every round's
training time) it derives Ray's start-up, a worker's cold start (imports, plugins, data: the
first unit in a fresh worker) and the overhead of a unit in a warm worker (its time beyond the
rounds it trained). Prints the machine and its load, since this 2-core machine is shared.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lottery_core import paths
from lottery_core.resolution import default_threads
from lottery_core.sweep_file import Sweep, to_toml

from .report import cpu_name

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 4
SCALING_TARGET = 1.8  # 2 workers against 1 on this 2-core machine (issue 12)


@dataclass
class Timing:
    name: str
    walls: list[float | None] = field(default_factory=list)  # None: stopped at --limit
    driver_rss_mb: list[float] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # 1-minute load average at its start

    @property
    def stopped(self) -> bool:
        return any(w is None for w in self.walls)

    @property
    def wall(self) -> float:
        """The median, a stopped repeat counting as infinitely slow."""
        return statistics.median(float("inf") if w is None else w for w in self.walls)


def run_cli(args: list[str], cwd: Path, limit: float) -> tuple[float | None, float, str]:
    """Wall seconds (``None``: stopped at ``limit``), peak RSS (MiB) and stderr of ``cli.py``."""
    out, err = cwd / ".stdout", cwd / ".stderr"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd,
                                   stdout=stdout, stderr=stderr)  # fmt: skip
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > limit:
                process.kill()
                _, status, usage = os.wait4(process.pid, 0)
                return None, usage.ru_maxrss / 1024, err.read_text()
            time.sleep(0.1)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"cli.py {' '.join(args)} failed:\n{err.read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024, err.read_text()


def unit_table(folder: Path) -> pd.DataFrame:
    """One row per unit of a finished sweep: worker pid, seconds, training seconds, peak RSS."""
    import json

    placed = json.loads((folder / paths.STATUS).read_text())["placed"]
    rows = []
    for key, unit in placed.items():
        results = pd.read_csv(folder / unit["run"] / paths.RESULTS).sort_values("round")
        trained = (
            results["time_s"].iloc[:1] if key.endswith("#dense") else results["time_s"].iloc[1:]
        )
        rows.append(
            {
                "unit": key,
                "pid": unit["pid"],
                "seconds": unit["seconds"],
                "training": float(trained.sum()),
                "peak_rss_mb": unit["peak_rss_mb"],
            }
        )
    table = pd.DataFrame(rows)
    table["overhead"] = table["seconds"] - table["training"]
    # A worker's first unit pays its cold start; Ray does not say which ran first, but that
    # one has by far the largest overhead.
    table["cold"] = table.groupby("pid")["overhead"].transform("max") == table["overhead"]
    return table


def units_phase(folder: Path) -> float:
    """Seconds from the first unit submitted to the last one's tables written (the driver's
    ``status.json``): the sweep without Python's start, validation and Ray's start and stop."""
    import json

    driver = json.loads((folder / paths.STATUS).read_text())["driver"]
    return float(driver["updated"]) - float(driver["started"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sweep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="Tiny runs: a smoke test.")
    parser.add_argument("--rounds", type=int, default=None, help="Rounds per run [4; quick 2].")
    parser.add_argument("--iterations", type=int, default=None,
                        help="Iterations per round [2000; quick 100].")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="Interleaved repeats [1].")
    parser.add_argument("--keep", type=Path, help="Keep the run folders here.")
    parser.add_argument("--limit", type=float, default=600.0,
                        help="Stop a variant after this many seconds [600]; on a busy machine "
                        "the default threads (one per core) can be many times slower.")  # fmt: skip
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 4)
    iterations = args.iterations or (100 if args.quick else 2000)
    base = {"dataset": "mnist-sample", "rounds": rounds, "iterations": iterations,
            "eval_every": 50 if args.quick else 100}  # fmt: skip
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in base.items()]
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-sweep-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    file = work / "four.toml"
    file.write_text(to_toml(Sweep({**base, "threads": 1}, {}, TRIALS, False)))
    load_before = os.getloadavg()
    variants = {
        "run --trials 4, 1 thread": lambda out: ["run", *flags, "--threads=1", "--trials",
                                                 str(TRIALS), "--quiet", "--out", out],
        f"run --trials 4, {default_threads()} threads (default)": lambda out: [
            "run", *flags, "--trials", str(TRIALS), "--quiet", "--out", out],
        "sweep --workers 1": lambda out: ["sweep", str(file), "--workers", "1", "--quiet",
                                          "--out", out],
        "sweep --workers 2": lambda out: ["sweep", str(file), "--workers", "2", "--quiet",
                                          "--out", out],
    }  # fmt: skip
    timings = {name: Timing(name) for name in variants}
    names = list(variants)
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            out = work / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-{repeat}"
            print(f"[bench.sweep] {name} (repeat {repeat + 1}/{args.repeats})...", file=sys.stderr)
            load = os.getloadavg()[0]
            wall, rss, stderr = run_cli(variants[name](str(out)), work, args.limit)
            timing = timings[name]
            timing.loads.append(load)
            timing.walls.append(wall)
            timing.driver_rss_mb.append(rss)
            timing.folders.append(out)
            timing.stderr.append(stderr)
    load_after = os.getloadavg()
    print(report(timings, base, load_before, load_after, args.limit))


def report(timings: dict[str, Timing], base: dict, load_before, load_after, limit: float) -> str:
    one, two = timings["sweep --workers 1"], timings["sweep --workers 2"]
    alone = [t for name, t in timings.items() if name.startswith("run --trials")]
    best_alone = min(alone, key=lambda t: t.wall)
    starts = [float(m) for t in (one, two) for err in t.stderr
              for m in re.findall(r"Ray started in ([0-9.]+) s", err)]  # fmt: skip
    units = pd.concat([unit_table(f) for t in (one, two) for f in t.folders], ignore_index=True)
    cold, warm = units[units["cold"]], units[~units["cold"]]
    per_worker = units.groupby("pid")["peak_rss_mb"].max()
    training = sum(float(pd.read_csv(f / paths.RESULTS)["time_s"].sum()) for f in one.folders)
    training /= len(one.folders)
    scaling = one.wall / two.wall
    phase_one = statistics.median(units_phase(f) for f in one.folders)
    phase_two = statistics.median(units_phase(f) for f in two.folders)
    lines = [
        f"[bench.sweep] {TRIALS} runs of lenet_fc on mnist-sample, {base['rounds']} rounds x "
        f"{base['iterations']} iterations each; sweeps: one thread a run, embedded Ray; wall "
        f"time of a fresh CLI process, median of {len(one.walls)}",
    ]
    for name, timing in timings.items():
        shown = f"{timing.wall:7.1f} s" if not timing.stopped else f"> {limit:.0f} s (stopped)"
        lines.append(f"  {name:<38} {shown}   peak RSS of its process "
                     f"{statistics.median(timing.driver_rss_mb):5.0f} MiB; load at start "
                     f"{statistics.median(timing.loads):.1f}")  # fmt: skip
    verdict = "ok" if scaling >= SCALING_TARGET else "BELOW TARGET"
    lines += [
        f"  scaling, 2 workers against 1:      {scaling:.2f}x (target >= {SCALING_TARGET}: "
        f"{verdict}); of the units phase alone ({phase_one:.1f} s and {phase_two:.1f} s) "
        f"{phase_one / phase_two:.2f}x",
        f"  sweep --workers 2 against the faster one-process run ({best_alone.name}): "
        f"{best_alone.wall / two.wall:.2f}x "
        f"({'not slower' if two.wall <= best_alone.wall else 'SLOWER'})",
        f"  training alone (sum of the rounds' time_s, 1 worker): {training:.1f} s of "
        f"{one.wall:.1f} s",
        f"  Ray start-up (ray.init of the embedded instance): {_mean(starts):.1f} s "
        f"(min {min(starts):.1f}, max {max(starts):.1f})",
        f"  a worker's cold start (its first unit beyond training: imports, plugins, data): "
        f"{cold['overhead'].median():.1f} s",
        f"  per unit in a warm worker, beyond training (dispatch, resume, checkpoint, tables): "
        f"{warm['overhead'].median():.2f} s; a run is 2 units (its dense round, the rest)",
        f"  peak RSS per worker: {', '.join(f'{v:.0f}' for v in sorted(per_worker))} MiB "
        f"(median {per_worker.median():.0f})",
        f"machine: {cpu_name()}, {os.cpu_count()} cores ({default_threads()} usable); load "
        f"average {load_before[0]:.2f} before, {load_after[0]:.2f} after; torch "
        f"{importlib.metadata.version('torch')}, ray {importlib.metadata.version('ray')}",
    ]
    return "\n".join(lines)


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


if __name__ == "__main__":
    main()
