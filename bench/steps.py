"""The timed loops: the framework's own round loop, a bare PyTorch loop, a DataLoader loop.

Every runner does a fixed number of training steps per call (baselines take a smaller count
for their probes) and returns seconds per step. ``interleave`` calls the runners in rotating
order, repeatedly, so slow drifts of a shared machine hit every variant alike; ratios are taken
between runs of the same repeat.
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
from torch.nn.utils import prune
from torch.utils.data import DataLoader, Dataset

from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.masks import remaining_percent
from lottery_core.resolution import default_threads
from lottery_core.specs import DatasetSplits
from lottery_core.threads import ThreadRule
from lottery_core.training import TrainSettings, train_round

Runner = Callable[..., float]
BATCH = 60
HOPELESS = 1.5


@contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thread_choices() -> list[int]:
    """The thread counts a baseline may pick the faster of: 1, 2 and one per core (as ours)."""
    cores = default_threads()
    return sorted({1, min(2, cores), cores})


# -- the framework -----------------------------------------------------------------------


class FrameworkStep:
    """The framework's model (built and pruned by an ``Experiment``), trained through
    ``train_round`` for ``steps`` iterations per call on the config's thread count."""

    def __init__(
        self,
        model: str,
        dataset: str,
        data: DatasetSplits,
        steps: int,
        rule: ThreadRule | None = None,
    ):
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
        self.experiment = Experiment(config, data=data)
        self.state = self.experiment.start()
        self.threads: int = self.experiment.config.threads  # type: ignore[assignment]
        # the config's default rule (adaptive between 1 and one thread per core), kept across
        # calls as a run keeps it across rounds
        self.rule = rule or ThreadRule(self.threads)
        self.settings = TrainSettings(
            iterations=steps,
            batch_size=BATCH,
            lr=self.experiment.config.lr,  # type: ignore[arg-type]
            eval_every=steps,
        )
        self.pruned = 0

    @property
    def model(self) -> nn.Module:
        assert self.experiment.model is not None
        return self.experiment.model

    def prune_until(self, prunings: int) -> float:
        """Prune with the framework's own strategy until ``prunings`` prunings are done;
        returns the percentage of weights remaining."""
        while self.pruned < prunings:
            self.pruned += 1
            self.experiment.prune(self.state, self.pruned)
        return remaining_percent(self.experiment.layers)

    def __call__(self, steps: int | None = None) -> float:
        """One round of the configured length (``steps`` is ignored: ours is never probed)."""
        with num_threads(self.threads):  # restores the caller's count afterwards
            start = time.perf_counter()
            data = self.experiment.data
            train_round(self.model, data, self.settings, data_seed=0, threads=self.rule)
            return (time.perf_counter() - start) / self.settings.iterations


def round_fixed_cost(
    model: str, dataset: str, data: DatasetSplits, short: int, long: int, repeats: int
) -> float:
    """Seconds a round costs beyond its steps (a fresh optimizer, the ES snapshot, the
    end-of-round test evaluations), from rounds of ``short`` and ``long`` steps, interleaved,
    medians. A real round of 20K steps amortises it; the short timed rounds do not.

    Both run on every core with the fixed rule: the adaptive rule's choice is section 7's
    subject, and in rounds shorter than its first segment (``threads.MIN_STEPS``) it would
    never leave one thread, charging the short rounds' slower steps to the fixed cost."""
    runs = {
        n: FrameworkStep(model, dataset, data, n, ThreadRule(default_threads(), adaptive=False))
        for n in (short, long)
    }
    times: dict[int, list[float]] = {n: [] for n in runs}
    for repeat in range(repeats + 1):
        for n, run in runs.items():
            elapsed = run() * n
            if repeat:  # the first is a warm-up
                times[n].append(elapsed)
    per_round = {n: statistics.median(values) for n, values in times.items()}
    step = (per_round[long] - per_round[short]) / (long - short)
    return max(per_round[short] - short * step, 0.0)


# -- the baselines ---------------------------------------------------------------------------


def _fresh_layer(source: nn.Module) -> nn.Module:
    """A new ``nn.Linear`` / ``nn.Conv2d`` of the same shape as ``source``, with its weights."""
    bias = source.bias is not None
    if isinstance(source, nn.Conv2d):
        layer: nn.Module = nn.Conv2d(
            source.in_channels, source.out_channels, source.kernel_size, source.stride,
            source.padding, source.dilation, source.groups, bias=bias,
        )  # fmt: skip
    else:
        layer = nn.Linear(source.in_features, source.out_features, bias=bias)
    weight = source.weight_orig if prune.is_pruned(source) else source.weight
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias:
            layer.bias.copy_(source.bias)
    return layer


def bare_copy(model: nn.Module) -> nn.Sequential:
    """A plain ``nn.Sequential`` with the framework's weights, each weight pruned with
    ``prune.custom_from_mask`` to the framework's mask: the same forward pre-hook, as PyTorch
    ships it, multiplies the mask in on every call."""
    children: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            layer = _fresh_layer(child)
            mask = child.weight_mask if prune.is_pruned(child) else torch.ones_like(layer.weight)
            prune.custom_from_mask(layer, "weight", mask.detach().clone())
            children.append(layer)
        else:
            children.append(copy.deepcopy(child))
    return nn.Sequential(*children)


def _stepper(model: nn.Module, lr: float) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The textbook step, with the fastest CPU Adam (fused) so the baselines are as strong as
    they can be."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def bare_runner(
    model: nn.Module,
    data: DatasetSplits,
    steps: int,
    lr: float,
    threads: int,
    step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> Runner:
    """The textbook loop over in-memory float tensors (normalised once, up front): a
    permutation per epoch, index, ``step`` (default: the fused Adam step, ``_stepper``)."""
    step = step or _stepper(model, lr)
    x, y, n = data.images(data.train_x), data.train_y, data.train_x.shape[0]
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
    step = _stepper(model, lr)
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
    runners: dict[str, Runner], repeats: int, group: list[str], probe_steps: int = 1
) -> dict[str, list[float]]:
    """Seconds per step of each runner, ``repeats`` times, in rotating order after a warm-up.

    ``group`` lists the settings of one baseline of which only the fastest counts (thread
    counts, workers). Before each repeat every setting runs a ``probe_steps`` probe, and one
    more than ``HOPELESS`` times slower than the best probe sits that repeat out (its time is
    NaN), so a busy machine does not spend minutes on settings that cannot win.
    """
    for run in runners.values():
        run(probe_steps)
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        probe = {name: runners[name](probe_steps) for name in group}
        skip = {name for name in group if probe[name] > HOPELESS * min(probe.values())}
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
