"""Many tickets as one model, measured: member-steps per second of ``batched.train_members``
against the single path (``training.train_round``), for N members at once.

``python -m bench.batched [--quick]`` trains LeNet-300-100 (batch 60, Adam) pruned with the
framework's layerwise magnitude strategy to about 21% remaining (7 prunings), on MNIST-shaped
random data in memory (55K training images; validation and test cut to one image, so steps
alone are timed), on the data's device (CUDA where there is one, else the CPU). Per N in
{1, 8, 64, 256} it times the batched trainer with both forwards (``bmm``: one ``baddbmm`` per
layer; ``vmap``: ``torch.func.vmap`` over ``functional_call``) and the single path at N = 1.
Every variant runs a short and a long round in each repeat; its seconds per step are the
difference over the difference in steps, so the fixed cost of a round (stacking N members'
parameters, the optimizer's state, the final evaluations) is left out, as a 50K-step round
amortises it. The variants run interleaved in rotating order; each figure is a median over
repeats, each ratio the median of per-repeat ratios to the single path timed in the same
repeat: ``batched / single`` = (N / batched step) / (1 / single step), member-steps per second.
The last lines name the machine and its load (a shared machine's figures move with it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.data import MNIST_SHAPE, synthetic_splits, with_small_eval
from bench.report import cpu_name
from bench.steps import BATCH, FrameworkStep, num_threads
from lottery_core.batched import Backend, Member, train_members
from lottery_core.specs import DatasetSplits
from lottery_core.training import TrainSettings, train_round

PRUNINGS = 7  # layerwise magnitude prunings: about 21% of the weights remain


@dataclass(frozen=True)
class Sizes:
    """How much work the run does; ``--quick`` shrinks it to a smoke test."""

    members: tuple[int, ...] = (1, 8, 64, 256)
    repeats: int = 3
    train: int = 55_000
    single_steps: tuple[int, int] = (20, 100)  # short and long round of the single path
    member_steps: int = 160  # member-steps of a batched short round (at least 1 step)...
    long_factor: int = 4  # ...and the long round is this many times longer


QUICK = Sizes(
    members=(1, 4), repeats=1, train=600, single_steps=(2, 6), member_steps=4, long_factor=2
)


def setup(train: int, device: torch.device) -> tuple[FrameworkStep, DatasetSplits, float]:
    """The pruned LeNet-300-100 (the framework's own model and pruning) and the data."""
    data = synthetic_splits(MNIST_SHAPE, train, 1, 1)
    data = with_small_eval(data, 1).to(device)
    framework = FrameworkStep("lenet_fc", "mnist", data, steps=1)  # built and pruned on the CPU
    remaining = framework.prune_until(PRUNINGS)
    framework.model.to(device)  # in place: its layers (and masks) stay the experiment's
    return framework, data, remaining


def settings_for(steps: int, lr: float) -> TrainSettings:
    return TrainSettings(iterations=steps, batch_size=BATCH, lr=lr, eval_every=steps)


def round_seconds(run: Callable[[int], None], steps: int) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(steps)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def single_runner(
    framework: FrameworkStep, data: DatasetSplits, lr: float
) -> Callable[[int], None]:
    def run(steps: int) -> None:
        train_round(framework.model, data, settings_for(steps, lr), data_seed=0)

    return run


def batched_runner(
    framework: FrameworkStep, data: DatasetSplits, lr: float, count: int, backend: Backend
) -> Callable[[int], None]:
    model = framework.model
    layer_masks = {layer.name: layer.mask.detach() for layer in framework.experiment.layers}
    parameters = {name: p.detach() for name, p in model.named_parameters()}
    members = [Member(layer_masks, parameters, seed) for seed in range(count)]

    def run(steps: int) -> None:
        train_members(model, members, data, settings_for(steps, lr), backend=backend)

    return run


def measure(sizes: Sizes, threads: int) -> tuple[dict[str, list[float]], float, str]:
    """Seconds per step of every variant in every repeat (short and long rounds)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    framework, data, remaining = setup(sizes.train, device)
    lr = float(framework.settings.lr)
    variants: dict[str, tuple[Callable[[int], None], tuple[int, int]]] = {
        "single": (single_runner(framework, data, lr), sizes.single_steps)
    }
    for count in sizes.members:
        short = max(1, sizes.member_steps // count)
        backends: tuple[Backend, ...] = ("bmm", "vmap")
        for backend in backends:
            runner = batched_runner(framework, data, lr, count, backend)
            variants[f"{backend} {count}"] = (runner, (short, short * sizes.long_factor))
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    with num_threads(threads):
        for run, (short, _) in variants.values():  # warm-up
            run(short)
        for repeat in range(sizes.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                run, (short, long) = variants[name]
                seconds = round_seconds(run, long) - round_seconds(run, short)
                times[name].append(max(seconds, 1e-9) / (long - short))
                print(
                    f"  repeat {repeat + 1} {name}: {times[name][-1] * 1e3:.2f} ms/step",
                    file=sys.stderr,
                    flush=True,
                )
    return times, remaining, str(device)


def table(sizes: Sizes, times: dict[str, list[float]]) -> list[str]:
    single = times["single"]
    lines = [
        f"{'N':>4} {'single m-steps/s':>17} {'bmm m-steps/s':>14} {'bmm/single':>11} "
        f"{'vmap m-steps/s':>15} {'vmap/single':>12} {'bmm/vmap':>9}"
    ]
    single_rate = 1 / statistics.median(single)
    for count in sizes.members:
        bmm, vmap = times[f"bmm {count}"], times[f"vmap {count}"]
        lines.append(
            f"{count:>4} {single_rate:>17.1f} {count / statistics.median(bmm):>14.1f} "
            f"{ratio(single, bmm, count):>10.2f}x {count / statistics.median(vmap):>15.1f} "
            f"{ratio(single, vmap, count):>11.2f}x {ratio(vmap, bmm, 1):>8.2f}x"
        )
    return lines


def ratio(single: list[float], batched: list[float], count: int) -> float:
    """Median over repeats of (count / batched step) / (1 / single step)."""
    return statistics.median(count * s / b for s, b in zip(single, batched, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads for every variant (default 1)"
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else Sizes()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    times, remaining, device = measure(sizes, args.threads)
    print(
        f"Batched training: LeNet-300-100 at {remaining:.1f}% remaining, batch {BATCH}, Adam, "
        f"MNIST-shaped random data ({sizes.train:,} train) on {device}; member-steps per "
        f"second, medians of {sizes.repeats} interleaved repeats"
    )
    print("\n".join(table(sizes, times)))
    steps = "; ".join(
        f"{name} " + " ".join(f"{t * 1e3:.1f}" for t in values) for name, values in times.items()
    )
    print(f"ms per step (one step of all N members), each repeat: {steps}")
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; "
        f"{args.threads} thread(s) for every variant"
    )
    print(
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
