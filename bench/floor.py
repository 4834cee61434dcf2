"""The compute floor: a step's floating-point work against this machine's measured matmul rate.

Two floors are reported. The hardware floor divides the step's matmul/convolution FLOPs
(forward and backward, counted by ``torch.utils.flop_counter``) by the best dense float32 matmul
rate measured here on large matrices, the better of torch's BLAS and oneDNN (on AMD CPUs, MKL
runs AVX2 code and oneDNN AVX-512, about twice as fast). The kernel floor replays the step's own
matmul and convolution calls (torch's and oneDNN's, as training makes them), with their real
shapes, back to back: what the step would cost
with no Python, no autograd bookkeeping and no elementwise work (masking, ReLU, loss, Adam),
which is memory-bound and not counted in either floor.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from lottery_core import onednn
from lottery_core.grad_masking import masks_on_gradients

from .steps import num_threads, thread_choices

aten = torch.ops.aten
HEAVY = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.convolution.default,
    aten.convolution_backward.default,
}
if onednn.linear_op() is not None:
    HEAVY.add(onednn.linear_op().default)  # training's and evaluation's oneDNN GEMMs


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Matmul and convolution FLOPs of one forward + backward pass on the batch ``x``."""
    model = copy.deepcopy(model)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
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
            keep = tree_map(_clone, args)
            self.calls.append((func, keep, dict(kwargs)))
        return func(*args, **kwargs)


def kernel_replay_times(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int
) -> dict[int, float]:
    """Median seconds to rerun one step's matmul/convolution calls, per thread count. ``model``
    is the framework's: its step is recorded as training runs it (``masks_on_gradients``, with
    oneDNN's GEMMs where ``onednn_training`` takes them)."""
    model = copy.deepcopy(model)
    recorder = _Recorder()
    with masks_on_gradients(model):
        F.cross_entropy(model(x), y).backward()  # unrecorded: per-shape checks run here
        with recorder:
            F.cross_entropy(model(x), y).backward()
    calls = recorder.calls

    def replay() -> None:
        for func, args, kwargs in calls:
            func(*args, **kwargs)

    return _times_per_thread_count(replay, repeats)


def matmul_rates(size: int, repeats: int) -> dict[str, float]:
    """Best-thread-count median FLOP/s of a dense float32 ``size`` x ``size`` matmul, through
    torch's BLAS (``torch.mm``) and through oneDNN (what ``lottery_core.onednn`` calls)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    kernels = {"blas": lambda: torch.mm(a, b, out=out)}
    linear = onednn.linear_op()
    if linear is not None:
        kernels["onednn"] = lambda: linear(a, b, None, "none", [], "")
    return {
        name: 2 * size**3 / min(_times_per_thread_count(mm, repeats).values())
        for name, mm in kernels.items()
    }


def _times_per_thread_count(fn, repeats: int) -> dict[int, float]:
    """Median seconds of one call of ``fn`` on each thread count, after a warm-up call."""
    inner = _inner_count(fn)
    times = {}
    for threads in thread_choices():
        with num_threads(threads):
            fn()
            times[threads] = statistics.median(_timed(fn, inner) for _ in range(repeats))
    return times


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
