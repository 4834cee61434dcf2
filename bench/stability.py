"""The cost of a stability analysis point, measured side by side.

``python -m bench.stability`` times, for LeNet-300-100 on MNIST-shaped data (full MNIST where
``data/`` holds it, else the sample; timings do not depend on pixel values):

- the linear path between two networks at 30 points, evaluated on 10,000 test images and the
  10,000-example training subset, batched (``batched_eval.evaluate_states``: one
  ``vmap``-ed forward per chunk) and one point at a time (``training.evaluate`` after
  ``load_state_dict``), interleaved, the medians of per-repeat ratios;
- one training of a copy (``train_round`` for ``--iterations`` steps, the stability
  analysis's unit of training), so an analysis point (2 copies + the path) can be put beside
  one plain training.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from bench.steps import median
from lottery_core import connectivity
from lottery_core.batched_eval import evaluate_states
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.loading import load_data
from lottery_core.plugins import get_plugins
from lottery_core.resolution import resolve
from lottery_core.training import evaluate, train_round

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """The CPU's model name and core count (``/proc/cpuinfo``), or the platform's words."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--model", default="lenet_fc", help="an MNIST-shaped model (lenet_conv)")
    parser.add_argument("--no-training", action="store_true", help="the path alone")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    args = parser.parse_args(argv)
    iterations = 20 if args.quick else args.iterations
    repeats = 1 if args.quick else args.repeats
    plugins = get_plugins()
    dataset = "mnist" if (ROOT / "data" / "MNIST" / "raw").is_dir() else "mnist-sample"
    config = resolve(make_config(dataset=dataset, model=args.model, download=False,
                                 iterations=iterations, eval_every=iterations, device="cpu"),
                     plugins)  # fmt: skip
    data = load_data(config, plugins)
    experiment = Experiment(config, plugins=plugins, data=data)
    experiment.start()
    model = experiment.model_spec.build(data.input_shape, data.num_classes)
    ends = []
    for seed in (1, 2):
        experiment.model_spec.init(model, torch.Generator().manual_seed(seed))
        ends.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    points = connectivity.path(ends[0], ends[1], 4 if args.quick else connectivity.ALPHAS)
    n = 500 if args.quick else 10_000
    splits = [(data.test_x[:n], data.test_y[:n]), (data.train_x[:n], data.train_y[:n])]

    def batched() -> float:
        start = time.perf_counter()
        for x, y in splits:
            evaluate_states(model, points, x, y, data.images)
        return time.perf_counter() - start

    def one_at_a_time() -> float:
        start = time.perf_counter()
        for x, y in splits:
            for state in points:
                model.load_state_dict(state)
                evaluate(model, x, y, data.images)
        return time.perf_counter() - start

    def training() -> float:
        fresh = Experiment(config, plugins=plugins, data=data)
        fresh.start()
        assert fresh.model is not None
        start = time.perf_counter()
        train_round(fresh.model, fresh.data, fresh.settings(0), data_seed=0)
        return time.perf_counter() - start

    rows: dict[str, list[float]] = {"batched": [], "single": [], "ratio": []}
    for _ in range(repeats):
        b, s = batched(), one_at_a_time()
        rows["batched"].append(b)
        rows["single"].append(s)
        rows["ratio"].append(s / b)
    path_time = median(rows["batched"])
    print(f"machine: {machine()}; model: {args.model}; data: {dataset}; {len(points)} points "
          f"x 2 splits of {n}")  # fmt: skip
    print(f"path, batched:             {path_time:8.2f} s")
    print(f"path, one at a time:       {median(rows['single']):8.2f} s")
    print(f"one at a time / batched:   {median(rows['ratio']):8.2f}x  (median of per-repeat)")
    if args.no_training:
        return
    train = median([training() for _ in range(1 if args.quick else 2)])
    print(f"one copy's training:       {train:8.2f} s  ({iterations} iterations, batch "
          f"{config.batch_size}, with its evaluations)")  # fmt: skip
    point = 2 * train + path_time
    print(f"one analysis point (2 copies + path): {point:.2f} s = {point / train:.2f} plain "
          f"trainings; the path alone {path_time / train:.1%} of one")  # fmt: skip


if __name__ == "__main__":
    main()
