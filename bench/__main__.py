"""``python -m bench``: the training-step benchmark. ``--quick`` runs it at a tiny size.

Sections: (1) step overhead of the framework's round loop against a bare PyTorch loop with the
same model and masks, LeNet-300-100 at batch 60, at 100%, ~21% and ~3.6% of weights remaining;
(2) the framework against the usual torchvision Dataset + DataLoader loop; (3) the compute floor;
(4) the share of a round spent evaluating at eval_every=100, and a 50K-iteration round
extrapolated from a measured shorter one; (5) the same ratios for Conv-2 on CIFAR-10-shaped
data; (6) the peak memory of a default CLI run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data as bdata
from . import floor, rounds, steps
from .report import Row, read_values, render, write_json

PRUNINGS = {"100%": 0, "21%": 7, "3.6%": 15}  # layerwise magnitude rounds to reach each level
OVERHEAD_TARGET = ("<=", 1.10)


@dataclass(frozen=True)
class Sizes:
    repeats: int
    lenet_steps: int
    conv_steps: int
    conv_repeats: int
    train: int
    val: int
    test: int
    conv_train: int
    loader_images: int
    eval_iterations: int
    eval_repeats: int
    matmul_size: int
    rss_rounds: int
    rss_iterations: int


def sizes(quick: bool, repeats: int | None) -> Sizes:
    if quick:
        return Sizes(repeats or 1, 5, 1, repeats or 1, 1200, 100, 100, 120, 600, 200, 1, 256, 1,
                     20)
    r = repeats or 7
    return Sizes(r, 200, 6, max(3, (r + 1) // 2), 55_000, 5_000, 10_000, 10_000, 6_000, 1000, 3,
                 2048, 2, 1000)


def step_section(
    name: str, model: str, dataset: str, data, loader_set, n_steps: int, repeats: int
) -> tuple[list[Row], float, steps.FrameworkStep]:
    """Rows of sections 1-2 (or 5) for one model; returns them, our median step at 100% and
    the framework runner (for the floor)."""
    key = "" if model == "lenet_fc" else f"{model}_"
    ours = steps.FrameworkStep(model, dataset, bdata.with_small_eval(data, steps.BATCH), n_steps)
    lr = ours.experiment.config.lr
    rows: list[Row] = []
    ours_dense = float("nan")
    dense_model = None
    for level, prunings in PRUNINGS.items():
        remaining = ours.prune_until(prunings)
        bare = steps.bare_copy(ours.experiment.model)
        runners = {"ours": ours}
        bare_names = []
        for t in steps.thread_choices():
            bare_names.append(f"bare{t}")
            runners[f"bare{t}"] = steps.bare_runner(steps.bare_copy(bare), data, n_steps, lr, t)
        loader_names = []
        if prunings == 0:
            dense_model = bare
            for workers in (0, 2):
                for t in steps.thread_choices():
                    loader_names.append(f"loader w{workers} t{t}")
                    runners[loader_names[-1]] = steps.dataloader_runner(
                        steps.bare_copy(bare), loader_set, n_steps, lr, workers, t
                    )
        times = steps.interleave(runners, repeats)
        bare_best = steps.best_of(times, bare_names)
        rows.append(Row(name, f"{key}overhead_{level}",
                        f"our step / bare loop, {remaining:.1f}% remaining",
                        steps.paired_ratio(times["ours"], bare_best), "x", OVERHEAD_TARGET))
        if prunings == 0:
            ours_dense = statistics.median(times["ours"])
            fastest = min(loader_names, key=lambda n: statistics.median(times[n]))
            loader_best = steps.best_of(times, loader_names)
            data_rows = [
                Row(name, f"{key}step_ms", "our step, 100% remaining (median, context)",
                    1e3 * ours_dense, "ms"),
                Row(name, f"{key}bare_step_ms", "bare loop step, best threads (median, context)",
                    1e3 * statistics.median(bare_best), "ms"),
                Row(name, f"{key}loader_step_ms", f"DataLoader step, best = {fastest}",
                    1e3 * statistics.median(loader_best), "ms"),
                Row(name, f"{key}datapath",
                    "DataLoader loop / our step (speed-up, same model and masks)",
                    steps.paired_ratio(loader_best, times["ours"]), "x",
                    (">=", 4.0) if model == "lenet_fc" else None),
            ]
    assert dense_model is not None
    return rows + data_rows, ours_dense, ours, dense_model


def floor_rows(name: str, key: str, model, data, step_s: float, size: int, repeats: int):
    """Section 3: the step's FLOPs against the measured matmul rate and its own kernels."""
    x, y = data.train_x[: steps.BATCH], data.train_y[: steps.BATCH]
    flops = floor.step_flops(model, x, y)
    rate = floor.matmul_rate(size, repeats)
    kernels = floor.kernel_replay_time(model, x, y, repeats)
    return [
        Row(name, f"{key}flops", "matmul/conv work per step (forward + backward)", flops / 1e6,
            "MFLOP"),
        Row(name, f"{key}mm_rate", f"measured fp32 matmul rate ({size}x{size}, best threads)",
            rate / 1e9, "GFLOP/s"),
        Row(name, f"{key}floor_ratio", "our step / hardware floor (FLOPs / matmul rate)",
            step_s / (flops / rate), "x"),
        Row(name, f"{key}kernel_ratio", "our step / the step's own GEMM+conv kernels replayed",
            step_s / kernels, "x"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (used by the tests)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per variant [7]")
    parser.add_argument("--json", type=Path, help="also write every row to this JSON file")
    parser.add_argument("--compare", type=Path, help="an earlier --json file: adds a column")
    args = parser.parse_args(argv)
    size = sizes(args.quick, args.repeats)
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        lenet_data = bdata.synthetic_splits(bdata.MNIST_SHAPE, size.train, size.val, size.test)
        mnist = bdata.mnist_dataset(Path(tmp) / "mnist", size.loader_images)
        lenet_rows, lenet_step, _, dense = step_section(
            "1-2. LeNet-300-100, batch 60: step overhead and data path", "lenet_fc", "mnist",
            lenet_data, mnist, size.lenet_steps, size.repeats)
        rows += lenet_rows
        rows += floor_rows("3. compute floor, LeNet-300-100 step", "", dense, lenet_data,
                           lenet_step, size.matmul_size, size.repeats)
        share = rounds.eval_share(lenet_data, size.eval_iterations, 100, size.eval_repeats)
        round_50k, share_50k = share.extrapolated()
        section = "4. evaluation, LeNet-300-100, eval_every=100 (5K val, 10K test)"
        rows += [
            Row(section, "eval_share_measured",
                f"share of a measured {share.iterations}-iteration round spent evaluating",
                100 * share.share, "%"),
            Row(section, "eval_share_50k", "share of a 50K-iteration round (extrapolated)",
                100 * share_50k, "%", ("<=", 15.0)),
            Row(section, "round_50k_s", "one 50K-iteration round, extrapolated", round_50k, "s"),
        ]
        del lenet_data
        conv_data = bdata.synthetic_splits(bdata.CIFAR_SHAPE, size.conv_train, 60, 60)
        cifar = bdata.cifar_dataset(Path(tmp) / "cifar", size.loader_images)
        conv_name = "5. Conv-2, CIFAR-10 shape, batch 60"
        conv_rows, conv_step, _, conv_dense = step_section(
            conv_name, "conv2", "cifar10", conv_data, cifar, size.conv_steps, size.conv_repeats)
        rows += conv_rows
        rows += floor_rows(conv_name, "conv2_", conv_dense, conv_data, conv_step,
                           size.matmul_size, size.conv_repeats)
    rss = rounds.peak_rss_mib(size.rss_rounds, size.rss_iterations)
    rows.append(Row("6. memory", "peak_rss_mib",
                    f"peak RSS of cli.py run --dataset mnist-sample --rounds {size.rss_rounds} "
                    f"--iterations {size.rss_iterations}", rss, "MiB"))
    elapsed = time.perf_counter() - started
    before = read_values(args.compare) if args.compare else None
    print(render(rows, before))
    print(f"\nbenchmark took {elapsed:.0f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    if args.json:
        meta = {"argv": sys.argv[1:], "seconds": elapsed, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "sizes": size.__dict__}
        write_json(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
