"""``python -m bench.compiled``: does ``torch.compile`` pay for the LeNet step here, exactly?

Issue 9 allows ``torch.compile`` "where it is both faster and exact enough". This times the
textbook step (the model pruned with ``torch.nn.utils.prune``, fused Adam, batch 60) eagerly and
with the model compiled, side by side in one process and from the same weights and batches,
and compares the parameters after the same steps bit for bit. A trick that is slower, or that
changes results, stays out of the framework.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from lottery_core.resolution import default_threads

from .report import cpu_name

BATCH = 60


def pruned_lenet(seed: int) -> nn.Module:
    """LeNet-300-100 with half of each layer's weights pruned by prune's own random pruning."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
                          nn.ReLU(), nn.Linear(100, 10))  # fmt: skip
    for layer in (model[1], model[3], model[5]):
        prune.random_unstructured(layer, "weight", amount=0.5)
    return model


def train(model: nn.Module, forward: Callable, steps: int, warmup: int) -> tuple[float, list]:
    """Seconds per step after ``warmup`` steps, and the parameters after all ``steps``."""
    x = torch.randn(10_000, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (10_000,), generator=torch.Generator().manual_seed(2))
    order = torch.Generator().manual_seed(3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3, fused=True)
    started = 0.0
    for step in range(steps):
        if step == warmup:
            started = time.perf_counter()
        index = torch.randint(0, x.shape[0], (BATCH,), generator=order)
        loss = F.cross_entropy(forward(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    elapsed = (time.perf_counter() - started) / (steps - warmup)
    return elapsed, [p.detach().clone() for p in model.parameters()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compiled", description=__doc__)
    parser.add_argument("--steps", type=int, default=400, help="Timed steps per repeat [400].")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved repeats [3].")
    args = parser.parse_args(argv)
    torch.set_num_threads(default_threads())
    warmup = 50
    compiled_model = pruned_lenet(0)
    compiled = torch.compile(compiled_model)
    started = time.perf_counter()
    train(compiled_model, compiled, warmup + 1, warmup)  # compilation, untimed
    compile_s = time.perf_counter() - started
    eager_times, compiled_times = [], []
    for _ in range(args.repeats):
        a, b = pruned_lenet(0), pruned_lenet(0)
        b_compiled = torch.compile(b)
        eager_s, eager_params = train(a, a, args.steps + warmup, warmup)
        compiled_s, compiled_params = train(b, b_compiled, args.steps + warmup, warmup)
        eager_times.append(eager_s)
        compiled_times.append(compiled_s)
    pairs = list(zip(eager_params, compiled_params, strict=True))
    exact = all(torch.equal(p, q) for p, q in pairs)
    drift = max((p - q).abs().max().item() for p, q in pairs)
    eager, fast = statistics.median(eager_times), statistics.median(compiled_times)
    print(f"[bench.compiled] LeNet-300-100, 50% pruned, batch {BATCH}, fused Adam, "
          f"{args.steps} steps x {args.repeats} repeats, {default_threads()} threads")  # fmt: skip
    print(f"  eager step      {1e3 * eager:.3f} ms")
    print(f"  compiled step   {1e3 * fast:.3f} ms  (eager / compiled: {eager / fast:.2f}x; "
          f"first compilation {compile_s:.0f} s)")  # fmt: skip
    print(f"  parameters after {args.steps + warmup} steps: "
          f"{'bit-identical' if exact else f'differ, by up to {drift:.2e}'}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch "
          f"{importlib.metadata.version('torch')}")


if __name__ == "__main__":
    main()
