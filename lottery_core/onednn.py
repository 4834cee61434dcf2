"""Float32 linear-layer GEMMs through oneDNN, where torch's own is slower and the numbers allow.

torch sends a float32 ``nn.Linear`` on the CPU to its BLAS, MKL in the PyPI wheels. On AMD
CPUs MKL runs its AVX2 kernels even where the CPU has AVX-512; oneDNN, which torch ships as well
(its CPU convolutions already run on it), uses what the CPU has. On a 2-core AMD EPYC with
AVX-512 (Zen 5) a 2048² matmul ran at 203-228 GFLOP/s through MKL and 432-485 through oneDNN,
and a LeNet-300-100 validation pass in a round took 7.4-8.2 ms instead of 15.4 (``python -m
bench``). On an AMD EPYC without AVX-512 (Zen 3) both libraries run AVX2 kernels and oneDNN
gains nothing: 112 against 95-111 GFLOP/s on 2048², and a validation pass was slower (50
against 44 ms). So ``preferred`` uses oneDNN only where MKL leaves AVX-512 unused: an AMD CPU
whose torch capability is AVX-512. That is a fixed property of the machine, never a timing, so a
seed still gives the same numbers on the same kind of machine, run after run.

Evaluation: inference needs no backward, so each layer is one oneDNN call. A model evaluates
through oneDNN only after ``suitable`` has checked it on real input: logits within float32
rounding of torch's own, and the same bits on one thread as on many, and in blocks of any size
from two rows up. So an evaluation gives the same numbers on any core count, as before. Other
devices and dtypes, subclasses of ``nn.Linear`` with their own ``forward``, and inputs that are
not 2-D stay on torch's path. ``ENABLED`` is None (``preferred`` decides); True or False
forces it on or off, and so does the environment variable ``LOTTERY_ONEDNN=1`` or ``0``.

Training's large layers use it too: see ``onednn_training``.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from . import threads

ENABLED: bool | None = None  # None: where ``preferred()`` holds
PROBE_ROWS = 64
AVX512 = frozenset({"AVX512"})
_checked: weakref.WeakKeyDictionary[nn.Module, dict[tuple, bool]] = weakref.WeakKeyDictionary()


@functools.cache
def linear_op():
    """oneDNN's linear (``x @ w.T + b``), or None where this torch build has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


@functools.cache
def preferred() -> bool:
    """Whether this machine should run float32 linear GEMMs on oneDNN rather than torch's BLAS:
    ``LOTTERY_ONEDNN`` (``1``/``0``) where set, else ``faster_here`` of this CPU and build."""
    forced = os.environ.get("LOTTERY_ONEDNN", "").strip()
    if forced in ("0", "1"):
        return forced == "1" and linear_op() is not None
    return linear_op() is not None and faster_here(
        cpu_vendor(), torch.backends.cpu.get_cpu_capability(), torch.backends.mkl.is_available()
    )


def faster_here(vendor: str, capability: str, blas_is_mkl: bool) -> bool:
    """oneDNN beats MKL where MKL runs AVX2 kernels on an AVX-512 CPU: AMD's (measured on Zen 5
    at about twice the rate; on Zen 3, with AVX2 only, oneDNN gained nothing)."""
    return blas_is_mkl and vendor == "AuthenticAMD" and capability in AVX512


def cpu_vendor() -> str:
    """The CPU's vendor string (``AuthenticAMD``, ``GenuineIntel``), or "" where unknown."""
    return cpu_info("vendor_id")


@functools.cache
def cpu_info(field: str) -> str:
    """A field of the first CPU in ``/proc/cpuinfo`` (Linux), or "" where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def active(setting: bool | None) -> bool:
    """A module's ``ENABLED`` setting resolved: True or False as given, None as ``preferred``."""
    return preferred() if setting is None else setting


def _linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = module.weight, module.bias
    if x.dim() != 2 or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return F.linear(x, weight, bias)
    return linear_op()(x.contiguous(), weight, bias, "none", [], "")  # type: ignore[misc]


def _linears(model: nn.Module) -> list[nn.Module]:
    """Layers that compute ``F.linear(x, weight, bias)``: ``nn.Linear`` itself, with no
    instance ``forward`` other than one marked ``plain_linear`` (training's, see
    ``grad_masking``), which the swap sets aside and puts back."""
    return [
        module
        for module in model.modules()
        if type(module).forward is nn.Linear.forward
        and getattr(module.__dict__.get("forward"), "plain_linear", True)
    ]


@contextmanager
def _swapped(layers: list[nn.Module]) -> Iterator[None]:
    previous = [module.__dict__.get("forward") for module in layers]
    for module in layers:
        module.forward = functools.partial(_linear, module)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module, forward in zip(layers, previous, strict=True):
            if forward is None:
                del module.__dict__["forward"]
            else:
                module.forward = forward  # type: ignore[method-assign]


@contextmanager
def linears_on_onednn(model: nn.Module, x: torch.Tensor) -> Iterator[bool]:
    """Within the block, ``model``'s linear layers run on oneDNN if ``suitable(model, x)``;
    yields whether they do. For inference only: the swapped layers have no backward."""
    layers = _suitable_layers(model, x)
    if not layers:
        yield False
        return
    with _swapped(layers):
        yield True


def suitable(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` may evaluate ``x``-shaped input through oneDNN (checked once per
    model and input shape; see the module docstring)."""
    return bool(_suitable_layers(model, x))


def _suitable_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The layers to swap, or none where ``model`` may not evaluate ``x`` on oneDNN."""
    if not active(ENABLED) or linear_op() is None:
        return []
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return []
    layers = _linears(model)
    if not layers or any(m.weight.device.type != "cpu" for m in layers):  # type: ignore[union-attr]
        return []
    key = tuple(x.shape[1:])
    known = _checked.setdefault(model, {})
    if key not in known:
        known[key] = _agrees(model, layers, x[:PROBE_ROWS])
    return layers if known[key] else []


@torch.inference_mode()
def _agrees(model: nn.Module, layers: list[nn.Module], probe: torch.Tensor) -> bool:
    rows = probe.shape[0]
    if rows < 4:
        return False
    was_training = model.training
    before = torch.get_num_threads()
    counts = threads.counts_to_check(before)
    model.eval()
    try:
        reference = model(probe)
        with _swapped(layers):
            outputs = []
            for count in counts:
                threads.set_threads(count)
                outputs.append(model(probe))
                half = rows // 2
                outputs.append(torch.cat([model(probe[:half]), model(probe[half:])]))
    except RuntimeError:
        return False
    finally:
        threads.set_threads(before)
        model.train(was_training)
    first = outputs[0]
    same = all(torch.equal(first, other) for other in outputs[1:])
    scale = reference.abs().max().item() + 1.0
    return same and (first - reference).abs().max().item() <= 1e-4 * scale
