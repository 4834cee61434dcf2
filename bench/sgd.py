"""The SGD path measured side by side: our step against a bare loop, and a run's peak memory.

``python -m bench.sgd`` trains LeNet-300-100 pruned to about 21% remaining with SGD (momentum
0.9, weight decay 1e-4, a step schedule) through the framework's round loop (validation and test
cut to one example, as ``python -m bench`` times steps alone), and the same model
with the same ``torch.nn.utils.prune`` pre-hooks through the textbook loop (``torch.optim.SGD``,
fused, with ``LambdaLR``), interleaved, on 1 and 2 threads (the bare loop's faster counts). Then
it runs ``cli.py run`` twice in fresh processes, Adam and SGD, 2 rounds each, and reports their
peak resident memory. Full MNIST where ``data/`` holds it, else the sample.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.data import with_small_eval
from bench.steps import BATCH, bare_copy, bare_runner, interleave, median, num_threads, paired_ratio
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.loading import load_data
from lottery_core.masks import remaining_percent
from lottery_core.plugins import get_plugins
from lottery_core.resolution import resolve
from lottery_core.threads import ThreadRule
from lottery_core.training import TrainSettings, recipe_of, train_round

ROOT = Path(__file__).resolve().parent.parent
RECIPE = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
          "schedule": "step", "milestones": [100000], "gamma": 0.1}  # fmt: skip
# VmHWM, not ru_maxrss: that would include what the process inherited before exec
PEAK = """
import sys
from lottery_core.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print("PEAK_KIB", hwm[0], file=sys.stderr)
"""


def dataset() -> str:
    return "mnist" if (ROOT / "data" / "MNIST" / "raw").is_dir() else "mnist-sample"


def runners(steps: int, prunings: int) -> tuple[dict, float]:
    plugins = get_plugins()
    config = resolve(make_config(dataset=dataset(), download=False, iterations=200_000,
                                 rounds=100, eval_every=200_000, batch_size=BATCH, seed=0,
                                 device="cpu", **RECIPE), plugins)  # fmt: skip
    data = with_small_eval(load_data(config, plugins), 1)  # to time steps alone, as bench does
    experiment = Experiment(config, plugins=plugins, data=data)
    state = experiment.start()
    for r in range(1, prunings + 1):
        experiment.prune(state, r)
    remaining = remaining_percent(experiment.layers)
    model = experiment.model
    assert model is not None
    settings = TrainSettings(iterations=steps, batch_size=BATCH, lr=config.lr,
                             eval_every=steps, recipe=recipe_of(config, plugins))  # fmt: skip

    rule = ThreadRule(config.threads)  # the config's default rule, kept across calls as a run

    def ours(count: int = steps) -> float:  # one round (its evaluations on one example)
        with num_threads(config.threads):
            start = time.perf_counter()
            train_round(model, data, settings, data_seed=0, threads=rule)
            return (time.perf_counter() - start) / settings.iterations

    bare = bare_copy(model)
    optimizer = torch.optim.SGD(bare.parameters(), lr=config.lr, momentum=0.9,
                                weight_decay=1e-4, fused=True)  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        loss = F.cross_entropy(bare(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    def bare_loop(threads: int):
        return bare_runner(bare, data, steps, config.lr, threads, step)

    return {"ours": ours, "bare 1 thread": bare_loop(1), "bare 2 threads": bare_loop(2)}, remaining


def peak(extra: list[str]) -> float:
    """A fresh process's peak resident memory (MiB) for a 2-round run with ``extra`` flags."""
    with tempfile.TemporaryDirectory() as folder:
        argv = ["run", "--dataset", dataset(), "--no-download", "--data-dir", str(ROOT / "data"),
                "--rounds", "2", "--iterations", "300", "--threads", "1", "--quiet",
                "--out", str(Path(folder) / "run"), *extra]  # fmt: skip
        done = subprocess.run([sys.executable, "-c", PEAK, *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
    line = [row for row in done.stderr.splitlines() if row.startswith("PEAK_KIB")]
    return int(line[-1].split()[1]) / 1024 if line else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    found, remaining = runners(args.steps, prunings=7)
    times = interleave(found, args.repeats, ["bare 1 thread", "bare 2 threads"], args.steps // 10)
    best_bare = [min(a, b) for a, b in zip(times["bare 1 thread"], times["bare 2 threads"],
                                            strict=True)]  # fmt: skip
    ratio = paired_ratio(times["ours"], best_bare)
    rows: dict[str, object] = {
        "dataset": dataset(),
        "remaining_pct": round(remaining, 1),
        "ours_ms": median(times["ours"]) * 1e3,
        "bare_1_ms": median(times["bare 1 thread"]) * 1e3,
        "bare_2_ms": median(times["bare 2 threads"]) * 1e3,
        "ours_over_bare": ratio,
    }
    sgd = ["--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "1e-4"]
    peaks: dict[str, list[float]] = {"adam": [], "sgd": []}
    for _ in range(3):  # interleaved: one process's peak varies by tens of MiB
        peaks["adam"].append(peak([]))
        peaks["sgd"].append(peak(sgd))
    rows["peak_adam_mib"] = median(peaks["adam"])
    rows["peak_sgd_mib"] = median(peaks["sgd"])
    print(f"SGD step, LeNet-300-100 at {rows['remaining_pct']}% remaining on {rows['dataset']}, "
          f"{args.repeats} interleaved repeats of {args.steps} steps:")  # fmt: skip
    print(f"  ours {rows['ours_ms']:.3f} ms; bare loop (torch.optim.SGD fused + LambdaLR) "
          f"{rows['bare_1_ms']:.3f} ms on 1 thread, {rows['bare_2_ms']:.3f} ms on 2")
    verdict = "PASS" if ratio <= 1.10 else "FAIL"
    print(f"  ours / the faster bare loop: {ratio:.2f}x (target <= 1.10x) {verdict}")
    print(f"peak RSS of a 2-round run (300 iterations), median of 3 processes each: Adam "
          f"{rows['peak_adam_mib']:.1f} MiB, SGD {rows['peak_sgd_mib']:.1f} MiB")
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
