"""The compute floor: a step's floating-point work against this machine's measured matmul rate.

The hardware floor divides the step's matmul/convolution FLOPs (forward and backward, counted
by ``torch.utils.flop_counter``) by the best dense float32 ``torch.mm`` rate measured here on
large matrices. The kernel floor replays the step's own matmul and convolution calls, with their
real shapes, back to back: what the step would cost with no Python, no autograd bookkeeping and
no elementwise work (masking, ReLU, loss, Adam), which is memory-bound and not counted in
either floor.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from .steps import num_threads, thread_choices

aten = torch.ops.aten
HEAVY = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.convolution.default,
    aten.convolution_backward.default,
}


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Matmul and convolution FLOPs of one forward + backward pass on the batch ``x``."""
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Matmul and convolution FLOPs of an inference forward pass on ``x``."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def _clone(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


class _Recorder(TorchDispatchMode):
    """Keeps every matmul/convolution call (operator, cloned arguments) made under it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HEAVY:
            self.calls.append((func, tree_map(_clone, args), dict(kwargs)))
        return func(*args, **kwargs)


def kernel_replay_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    """Seconds to rerun one step's matmul/convolution calls, on the faster thread count."""
    recorder = _Recorder()
    with recorder:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    calls = recorder.calls

    def replay() -> None:
        for func, args, kwargs in calls:
            func(*args, **kwargs)

    return _best_time(replay, repeats)


def matmul_rate(size: int, repeats: int) -> float:
    """FLOP/s of a dense float32 ``size`` x ``size`` ``torch.mm``, on the faster thread count."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    return 2 * size**3 / _best_time(lambda: torch.mm(a, b, out=out), repeats)


def _best_time(fn, repeats: int) -> float:
    """The least over thread counts of the median seconds of one call of ``fn``."""
    inner = _inner_count(fn)
    times = []
    for threads in thread_choices():
        with num_threads(threads):
            fn()
            times.append(statistics.median(_timed(fn, inner) for _ in range(repeats)))
    return min(times)


def _inner_count(fn, target_s: float = 0.05) -> int:
    """How many calls of ``fn`` make one sample last about ``target_s``."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(target_s / once))


def _timed(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner
