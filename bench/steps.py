"""The timed loops: the framework's own round loop, a bare PyTorch loop, a DataLoader loop.

Every runner does a fixed number of training steps per call (baselines take a smaller count
for their warm-up) and returns seconds per step.
``interleave`` calls the runners in rotating order, repeatedly, so slow drifts of a shared
machine hit every variant alike; ratios are taken between runs of the same repeat.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lottery_core import training
from lottery_core.config import make_config
from lottery_core.experiment import Experiment, RunState
from lottery_core.masks import remaining_percent
from lottery_core.progress import Progress
from lottery_core.specs import DatasetSplits

Runner = Callable[..., float]
BATCH = 60
HOPELESS = 1.5


@contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: leave as is), then restore."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thread_choices() -> list[int]:
    """The thread counts a fair baseline may pick the better of: one, and the default."""
    return sorted({1, torch.get_num_threads()})


# -- the framework -----------------------------------------------------------------------


class FrameworkStep:
    """An ``Experiment`` whose rounds last ``steps`` iterations, timed through ``train``."""

    def __init__(self, model: str, dataset: str, data: DatasetSplits, steps: int):
        config = make_config(
            model=model,
            dataset=dataset,
            iterations=steps,
            eval_every=steps,
            rounds=100,
            device="cpu",
            seed=0,
            batch_size=BATCH,
        )
        self.steps = steps
        self.experiment = Experiment(config, data=data)
        self.state: RunState = self.experiment.start()
        self.pruned = 0
        self.progress = Progress(steps, enabled=False)

    def prune_until(self, rounds: int) -> float:
        """Prune with the framework's own strategy until ``rounds`` prunings are done; returns
        the percentage of weights remaining."""
        while self.pruned < rounds:
            self.pruned += 1
            self.experiment.prune(self.pruned)
        return remaining_percent(self.experiment.layers)

    def threads(self) -> float:
        """The intra-op threads the framework's last round ended on."""
        plan = getattr(training, "last_plan", None)
        if plan is None:
            return math.nan
        if plan.governor is not None:
            return plan.governor.threads
        return plan.train_threads or torch.get_num_threads()

    def __call__(self, steps: int | None = None) -> float:
        """One round of the configured length (a shorter ``steps`` is ignored: ours is never
        probed, only warmed up)."""
        start = time.perf_counter()
        self.experiment.train(self.state, 1, self.progress)
        return (time.perf_counter() - start) / self.steps


def round_fixed_cost(
    model: str, dataset: str, data: DatasetSplits, short: int, long: int, repeats: int
) -> float:
    """Seconds a round costs beyond its steps (a fresh optimizer, the ES snapshot, entering
    and leaving the masked block, the end-of-round test evaluations), from rounds of ``short``
    and ``long`` steps, interleaved, medians. The timed rounds above are short, so this share
    of them is not a step's cost: a real round amortises it."""
    runs = {n: FrameworkStep(model, dataset, data, n) for n in (short, long)}
    times: dict[int, list[float]] = {n: [] for n in runs}
    for repeat in range(repeats + 1):
        for n, run in runs.items():
            elapsed = run() * n
            if repeat:  # the first is a warm-up
                times[n].append(elapsed)
    per_round = {n: statistics.median(values) for n, values in times.items()}
    step = (per_round[long] - per_round[short]) / (long - short)
    return max(per_round[short] - short * step, 0.0)


# -- the bare baseline ---------------------------------------------------------------------


class MaskedLinear(nn.Module):
    """``F.linear`` with the mask multiplied in by hand."""

    def __init__(self, source: nn.Module):
        super().__init__()
        self.weight = nn.Parameter(source.weight_orig.detach().clone())
        self.bias = nn.Parameter(source.bias.detach().clone())
        self.register_buffer("mask", source.weight_mask.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MaskedConv2d(MaskedLinear):
    """``F.conv2d`` with the mask multiplied in by hand."""

    def __init__(self, source: nn.Conv2d):
        super().__init__(source)
        self.options = (source.stride, source.padding, source.dilation, source.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, *self.options)


def _plain(source: nn.Module) -> nn.Module:
    """An ordinary ``nn.Linear`` / ``nn.Conv2d`` holding the effective (masked) weight, with
    the mask kept as a buffer for the loop to apply to the gradient."""
    if isinstance(source, nn.Conv2d):
        plain: nn.Module = nn.Conv2d(
            source.in_channels, source.out_channels, source.kernel_size, source.stride,
            source.padding, source.dilation, source.groups, bias=source.bias is not None,
        )  # fmt: skip
    else:
        plain = nn.Linear(source.in_features, source.out_features, bias=source.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(source.weight_orig * source.weight_mask)
        if source.bias is not None:
            plain.bias.copy_(source.bias)
    plain.register_buffer("mask", source.weight_mask.detach().clone())
    return plain


STYLES = ("mask in forward", "mask on gradients")


def bare_copy(model: nn.Module, style: str = STYLES[0]) -> nn.Sequential:
    """A plain ``nn.Sequential`` with the same weights and masks as the framework's model.

    ``mask in forward`` multiplies the mask into the weight on every call (what the
    re-parametrisation does); ``mask on gradients`` keeps pruned weights at zero and multiplies
    the gradients by the masks after backward (what the one-file LTH repositories do).
    """
    children: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, (nn.Conv2d, nn.Linear)) and style == STYLES[1]:
            children.append(_plain(child))
        elif isinstance(child, nn.Conv2d):
            children.append(MaskedConv2d(child))
        elif isinstance(child, nn.Linear):
            children.append(MaskedLinear(child))
        else:
            children.append(copy.deepcopy(child))
    return nn.Sequential(*children)


def _adam(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The fastest CPU Adam, so that baselines are as strong as they can be. The default
    (for-loop) Adam calls ``torch.sqrt`` on the second moments, which runs 5-8x slower over
    the zeros that pruned weights leave there: it would flatter us at high sparsity."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def _stepper(model: nn.Module, optimizer: torch.optim.Optimizer):
    """One training step of ``model``; masks its gradients after backward where the model
    keeps its masks as buffers (``mask on gradients``), in one foreach call."""
    plain = [m for m in model.modules() if not isinstance(m, MaskedLinear) and hasattr(m, "mask")]
    weights = [m.weight for m in plain]
    masks = [m.mask for m in plain]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if weights:
            torch._foreach_mul_([w.grad for w in weights], masks)
        optimizer.step()

    return step


def bare_runner(
    model: nn.Module, data: DatasetSplits, steps: int, lr: float, threads: int
) -> Runner:
    """The textbook loop over in-memory tensors: a permutation per epoch, index, Adam step."""
    step = _stepper(model, _adam(model, lr))
    x, y, n = data.train_x, data.train_y, data.train_x.shape[0]
    generator = torch.Generator().manual_seed(0)

    def run(count: int = steps) -> float:
        with num_threads(threads):
            start = time.perf_counter()
            done = 0
            while done < count:
                order = torch.randperm(n, generator=generator)
                for i in range(min(n // BATCH, count - done)):
                    index = order[i * BATCH : (i + 1) * BATCH]
                    step(x[index], y[index])
                    done += 1
            return (time.perf_counter() - start) / count

    return run


def dataloader_runner(
    model: nn.Module, dataset: Dataset, steps: int, lr: float, workers: int, threads: int
) -> Runner:
    """The usual loop: a torchvision dataset with transforms, through a shuffling DataLoader.

    Each call starts a fresh pass and takes one batch untimed, so worker start-up is not
    charged to the loop; the pass ends (its workers exit) before the call returns, so no
    worker keeps prefetching while another variant is timed.
    """
    step = _stepper(model, _adam(model, lr))
    loader = DataLoader(
        dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=workers
    )

    def batches() -> Iterator:
        while True:
            yield from loader

    def run(count: int = steps) -> float:
        stream = batches()
        with num_threads(threads):
            next(stream)
            start = time.perf_counter()
            for _ in range(count):
                x, y = next(stream)
                step(x, y)
            elapsed = time.perf_counter() - start
        stream.close()
        return elapsed / count

    return run


# -- timing ----------------------------------------------------------------------------------


def interleave(
    runners: dict[str, Runner],
    repeats: int,
    groups: list[list[str]] | None = None,
    probe_steps: int = 1,
) -> dict[str, list[float]]:
    """Seconds per step of each runner, ``repeats`` times, in rotating order after a warm-up.

    ``groups`` lists settings of one baseline of which only the fastest counts (thread counts,
    workers). Before each repeat every setting runs a ``probe_steps`` probe, and a setting
    more than ``HOPELESS`` times slower than its group's best probe sits that repeat out (its
    time is NaN), so a busy machine does not spend minutes on settings that cannot win.
    """
    for run in runners.values():
        run(probe_steps)
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        skip = set()
        for group in filter(None, groups or []):
            probe = {name: runners[name](probe_steps) for name in group}
            skip |= {n for n in group if probe[n] > HOPELESS * min(probe.values())}
        active = [name for name in names if name not in skip]
        shift = r % len(active)
        for name in active[shift:] + active[:shift]:
            times[name].append(runners[name]())
        for name in skip:
            times[name].append(math.nan)
    return times


def best_of(times: dict[str, list[float]], names: list[str]) -> list[float]:
    """Per repeat, the fastest of several settings of one baseline (its fairest setting)."""
    columns = zip(*(times[n] for n in names), strict=True)
    return [min(v for v in values if v == v) for values in columns]


def median(values: list[float]) -> float:
    """The median of the repeats a runner took part in (NaN if none)."""
    kept = [v for v in values if v == v]
    return statistics.median(kept) if kept else math.nan


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over repeats of the ratio between runs of the same repeat (NaN if none)."""
    pairs = [a / b for a, b in zip(numerator, denominator, strict=True) if a == a and b == b]
    return statistics.median(pairs) if pairs else math.nan
