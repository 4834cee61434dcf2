"""``python -m bench``: the training-step benchmark. ``--quick`` runs it at a tiny size.

Sections: (1-2) LeNet-300-100 at batch 60, at 100%, ~21% and ~3.6% of weights remaining: the
framework's ``train_round`` step against a bare PyTorch loop with the same ``torch.nn.utils.prune``
pre-hooks, and against the usual torchvision Dataset + DataLoader loop; (3) the compute floor;
(4) the share of a round spent evaluating at eval_every=100, and a 50K-iteration round
extrapolated from a measured shorter one; (5) the same comparisons for Conv-2 on CIFAR-10-shaped
data; (6) the peak memory of a CLI run; (7) the step under contention: the default thread rule
against one thread and every core, idle and beside busy-looping processes. The last lines name
the machine.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from lottery_core.resolution import default_threads

from . import contention, floor, rounds, steps
from . import data as bdata
from .report import Row, machine, machine_lines, read_values, render, write_json

PRUNINGS = {"100%": 0, "21%": 7, "3.6%": 15}  # layerwise magnitude prunings to reach each level
OVERHEAD_TARGET = ("<=", 1.10)
LOADER_TARGET = (">=", 4.0)
EVAL_SHARE_TARGET = ("<=", 15.0)


@dataclass(frozen=True)
class Sizes:
    """How much work each section does (the defaults); ``--quick`` shrinks everything."""

    repeats: int = 7  # interleaved repeats of every LeNet variant
    lenet_steps: int = 200  # steps per timed run
    conv_steps: int = 8
    conv_repeats: int = 4
    fixed_rounds: tuple[int, int] = (4, 16)  # round lengths that measure a round's fixed cost
    train: int = 55_000  # the paper's MNIST split sizes
    val: int = 5_000
    test: int = 10_000
    conv_train: int = 10_000
    loader_images: int = 15_000  # images on disk for the DataLoader loop (> one timed run)
    eval_iterations: int = 1000  # the measured round of section 4
    eval_repeats: int = 3
    matmul_size: int = 2048
    rss_rounds: int = 2
    rss_iterations: int = 1000
    conv_levels: tuple[str, ...] = tuple(PRUNINGS)
    workers: tuple[int, ...] = (0, 2)
    contention_steps: int = 1000
    contention_repeats: int = 3


QUICK = Sizes(
    repeats=1, lenet_steps=5, conv_steps=1, conv_repeats=1, train=1200, val=100, test=100,
    conv_train=120, fixed_rounds=(1, 2), loader_images=600, eval_iterations=200, eval_repeats=1,
    matmul_size=256,
    rss_rounds=1, rss_iterations=20, conv_levels=("100%",), workers=(0,), contention_steps=20,
    contention_repeats=1,
)  # fmt: skip


def sizes(quick: bool, repeats: int | None) -> Sizes:
    size = QUICK if quick else Sizes()
    if repeats:
        size = replace(size, repeats=repeats, conv_repeats=max(1, (repeats + 1) // 2))
    return size


STARTED = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(f"[bench {time.perf_counter() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


@dataclass
class StepResults:
    """Sections 1-2 (or 5) for one model, and what the floor section needs."""

    rows: list[Row]
    step_s: float  # our step at 100% remaining (median)
    dense: nn.Module  # a bare copy of the framework's model at 100% remaining


def step_section(
    title: str,
    model: str,
    dataset: str,
    data,
    images: Dataset,
    n_steps: int,
    repeats: int,
    levels: tuple[str, ...],
    workers: tuple[int, ...],
) -> StepResults:
    """Our step against the bare loop at each sparsity level and, at 100%, against the
    DataLoader loop; each comparison interleaves its variants with ours, repeat by repeat."""
    assert levels[0] == "100%", "the DataLoader loop and the floor are timed at 100%"
    key = "" if model == "lenet_fc" else f"{model}_"
    add = functools.partial(Row, title)
    ours = steps.FrameworkStep(model, dataset, bdata.with_small_eval(data, 1), n_steps)
    lr = ours.settings.lr
    probe = max(1, n_steps // 20)
    threads = steps.thread_choices()
    rows: list[Row] = []
    shown: dict[str, list[float]] = {}
    ours_times: list[float] = []
    speedup = math.nan
    dense: nn.Module = nn.Identity()
    for level in levels:
        remaining = ours.prune_until(PRUNINGS[level])
        log(f"{model}: {remaining:.1f}% remaining")
        bare = {
            f"bare loop step, {_threads(t)}": steps.bare_runner(
                steps.bare_copy(ours.model), data, n_steps, lr, t
            )
            for t in threads
        }
        times = steps.interleave({"ours": ours, **bare}, repeats, list(bare), probe)
        ratio = steps.paired_ratio(times["ours"], steps.best_of(times, list(bare)))
        label = f"our step / bare loop (faster thread count), {remaining:.1f}% remaining"
        rows.append(add(f"{key}overhead_{level}", label, ratio, "x", OVERHEAD_TARGET))
        if level != "100%":
            continue
        dense = steps.bare_copy(ours.model)
        log(f"{model}: DataLoader loop")
        loaders = {
            f"DataLoader step, {w} workers, {_threads(t)}": steps.dataloader_runner(
                steps.bare_copy(ours.model), images, n_steps, lr, w, t
            )
            for w in workers
            for t in threads
        }
        loaded = steps.interleave({"ours": ours, **loaders}, repeats, list(loaders), probe)
        speedup = steps.paired_ratio(steps.best_of(loaded, list(loaders)), loaded["ours"])
        ours_times = times["ours"] + loaded["ours"]
        shown = {**times, **loaded}
    target = LOADER_TARGET if model == "lenet_fc" else None
    label = "DataLoader loop (best variant) / our step: our speed-up, 100% remaining"
    rows.append(add(f"{key}datapath", label, speedup, "x", target))
    step_s = statistics.median(ours_times)
    rows.append(add(f"{key}step_ms", "our step, 100% remaining (median)", 1e3 * step_s, "ms"))
    for name, values in shown.items():
        value = steps.median(values)
        if name != "ours" and value == value:  # a setting that sat out every repeat: no row
            rows.append(add(f"{key}{_slug(name)}_ms", f"  {name}", 1e3 * value, "ms"))
    return StepResults(rows, step_s, dense)


def fixed_cost_rows(
    title: str, model: str, dataset: str, data, size: Sizes, step_s: float
) -> list[Row]:
    """What a round costs beyond its steps, and how much of the short timed rounds' time per
    step it makes (a real round of 20K steps amortises it)."""
    fixed = steps.round_fixed_cost(
        model, dataset, bdata.with_small_eval(data, 1), *size.fixed_rounds, size.conv_repeats
    )
    spread = fixed / size.conv_steps
    return [
        Row(title, f"{model}_round_fixed_ms", "fixed cost of a round beyond its steps",
            1e3 * fixed, "ms"),
        Row(title, f"{model}_round_fixed_share",
            f"  its share of our step in the {size.conv_steps}-step rounds timed above",
            100 * spread / step_s, "%"),
    ]  # fmt: skip


def _threads(count: int) -> str:
    return f"{count} thread{'s' * (count > 1)}"


def _slug(name: str) -> str:
    return "_".join(word for word in name.replace(",", "").split() if not word.startswith("thr"))


def floor_rows(
    title: str, key: str, models: StepResults, data, size: int, repeats: int
) -> list[Row]:
    """The step's FLOPs against the measured torch.mm rate and against its own kernels."""
    x, y = data.images(data.train_x[: steps.BATCH]), data.train_y[: steps.BATCH]
    flops = floor.step_flops(models.dense, x, y)
    repeats = min(repeats, 3)  # medians of rates: 3 samples suffice
    rate = floor.matmul_rate(size, repeats)
    kernels = floor.kernel_replay_time(models.dense, x, y, repeats)
    add = functools.partial(Row, title)
    return [
        add(f"{key}flops", "matmul/conv work per step (forward + backward)", flops / 1e6, "MFLOP"),
        add(f"{key}mm_rate", f"measured fp32 torch.mm rate ({size}x{size}, faster thread count)",
            rate / 1e9, "GFLOP/s"),
        add(f"{key}floor_ratio", "our step / hardware floor (FLOPs / torch.mm rate)",
            models.step_s / (flops / rate), "x"),
        add(f"{key}kernel_ratio", "our step / its own matmul+conv kernels replayed",
            models.step_s / kernels, "x"),
    ]  # fmt: skip


def eval_rows(data, size: Sizes, model: nn.Module, rate: float) -> list[Row]:
    """The share of a round spent evaluating, and one validation pass against its floor."""
    share = rounds.eval_share(data, size.eval_iterations, 100, size.eval_repeats)
    round_50k, share_50k = share.extrapolated()
    val_s = (share.eval_s - share.end_eval_s) / (share.iterations // 100)
    val_flops = floor.forward_flops(model, data.images(data.val_x))
    add = functools.partial(Row, "4. evaluation, LeNet-300-100, eval_every=100 (5K val, 10K test)")
    return [
        add("val_pass_ms", f"one validation pass ({data.val_x.shape[0]:,} images), in a round",
            1e3 * val_s, "ms"),
        add("val_pass_floor", "  validation pass / its floor (forward FLOPs / torch.mm rate)",
            val_s / (val_flops / rate), "x"),
        add("eval_share_measured",
            f"share of a measured {share.iterations}-iteration round spent evaluating",
            100 * share.share, "%"),
        add("eval_share_50k", "share of a 50K-iteration round (extrapolated)", 100 * share_50k,
            "%", EVAL_SHARE_TARGET),
        add("round_50k_s", "one 50K-iteration round (extrapolated)", round_50k, "s"),
    ]  # fmt: skip


def memory_rows(size: Sizes) -> list[Row]:
    dataset = rounds.memory_dataset()
    rss, imports = rounds.peak_rss_mib(size.rss_rounds, size.rss_iterations, dataset)
    add = functools.partial(Row, "6. memory")
    command = f"cli.py run --dataset {dataset} --rounds {size.rss_rounds} --iterations"
    return [
        add("peak_rss_mib", f"peak RSS, {command} {size.rss_iterations}", rss, "MiB"),
        add("import_rss_mib", "  of which: importing torch, pandas, pydantic, the plugins", imports,
            "MiB"),
    ]  # fmt: skip


def run(size: Sizes) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        lenet = bdata.synthetic_splits(bdata.MNIST_SHAPE, size.train, size.val, size.test)
        mnist = bdata.mnist_dataset(Path(tmp) / "mnist", size.loader_images)
        fc = step_section(
            "1-2. LeNet-300-100, batch 60: step overhead, data path",
            "lenet_fc",
            "mnist",
            lenet,
            mnist,
            size.lenet_steps,
            size.repeats,
            tuple(PRUNINGS),
            size.workers,
        )
        rows += fc.rows
        log("compute floor")
        title = "3. compute floor, LeNet-300-100 step"
        lenet_floor = floor_rows(title, "", fc, lenet, size.matmul_size, size.repeats)
        rows += lenet_floor
        log("evaluation share")
        rate = next(r.value for r in lenet_floor if r.key == "mm_rate") * 1e9
        rows += eval_rows(lenet, size, fc.dense, rate)
        del lenet
        cifar_shape = bdata.synthetic_splits(bdata.CIFAR_SHAPE, size.conv_train, 1, 1)
        cifar = bdata.cifar_dataset(Path(tmp) / "cifar", size.loader_images)
        title = "5. Conv-2, CIFAR-10 shape, batch 60"
        conv = step_section(
            title,
            "conv2",
            "cifar10",
            cifar_shape,
            cifar,
            size.conv_steps,
            size.conv_repeats,
            size.conv_levels,
            size.workers,
        )
        rows += conv.rows
        log("conv2 fixed cost of a round")
        rows += fixed_cost_rows(title, "conv2", "cifar10", cifar_shape, size, conv.step_s)
        log("conv2 compute floor")
        rows += floor_rows(title, "conv2_", conv, cifar_shape, size.matmul_size, size.conv_repeats)
    log("contention: idle, then with busy-looping processes")
    contended = bdata.synthetic_splits(bdata.MNIST_SHAPE, size.train, 1, 1)
    rows += contention.contention_rows(contended, size.contention_steps, size.contention_repeats)
    log("peak memory")
    rows += memory_rows(size)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (used by the tests)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per variant [7]")
    parser.add_argument("--json", type=Path, help="also write every row to this JSON file")
    parser.add_argument("--compare", type=Path, help="an earlier --json file: adds a column")
    args = parser.parse_args(argv)
    size = sizes(args.quick, args.repeats)
    before = read_values(args.compare) if args.compare else None  # a bad file fails first
    started = time.perf_counter()
    rows = run(size)
    elapsed = time.perf_counter() - started
    facts = machine(default_threads(), steps.thread_choices())
    print(render(rows, before))
    print(f"\nbenchmark took {elapsed:.0f} s\n{machine_lines(facts)}")
    if args.json:
        meta = {"argv": sys.argv[1:], "seconds": elapsed, "sizes": asdict(size), **facts}
        write_json(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
