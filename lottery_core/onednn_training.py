"""Training's large linear layers through oneDNN's GEMMs, checked shape by shape.

On CPUs where torch's BLAS (MKL) runs its AVX2 kernels, oneDNN's are about twice as fast (see
``onednn``). LeNet-300-100's first layer, 784x300 at batch 60, on one thread: forward 139
against 273 µs, weight gradient 133 against 264 µs. A pruned ``nn.Linear`` inside
``grad_masking.masks_on_gradients`` asks ``linear`` for its output:

- weight gradient ``g.T @ x``: its sum runs over the batch rows, and for the paper's batch of 60
  oneDNN's sum gives autograd's bits exactly. The weight leaves the autograd graph and a hook on
  the output computes its masked gradient.
- forward ``x @ w.T + b``, for a layer whose input needs no gradient (a network's first layer):
  oneDNN's sum over the features rounds differently from MKL's, within float32 rounding. The
  output is computed outside autograd and made a leaf whose hook computes the weight and bias
  gradients (nothing flows further back).

Each is used only where ``allowed`` has checked that shape on random data (a GEMM's order of
sums depends on the shapes and the thread count, not the values): the same bits on one thread
as on many, autograd's bits for the weight gradient, and a forward within float32 rounding of
torch's. So a seed gives the same numbers on any core count, as before, and differs from torch's
own path only in the forward's rounding. Layers whose GEMM is under ``MIN_FLOPS`` stay on torch
(the hook costs more than the gain), as do other devices and dtypes and subclasses with their
own ``forward``. Like evaluation's, it runs only where ``onednn.preferred`` holds (an AMD CPU
with AVX-512), unless ``ENABLED`` (None) is set to True or False.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import threads
from .onednn import active, linear_op

ENABLED: bool | None = None  # None: where ``onednn.preferred()`` holds
MIN_FLOPS = 1e7  # smaller layers gain less than the hook costs


@dataclass(frozen=True)
class Allowed:
    """Which of a layer's GEMMs may run on oneDNN for one input shape."""

    weight_grad: bool = False
    forward: bool = False


NOTHING = Allowed()


def in_use() -> bool:
    """Whether training's linear layers may ask for oneDNN at all (else they keep torch's)."""
    return active(ENABLED) and linear_op() is not None


def allowed(module: nn.Module, x: torch.Tensor) -> Allowed:
    """What ``module`` may compute on oneDNN for input ``x`` (checked once per shape, on one
    thread, two, the current count and one per core)."""
    if not active(ENABLED) or type(module).forward is not nn.Linear.forward:
        return NOTHING
    weight = module.weight
    if x.dim() != 2 or x.device.type != "cpu" or x.dtype != torch.float32:
        return NOTHING
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return NOTHING
    rows, (outputs, inputs) = x.shape[0], weight.shape
    if 2 * rows * inputs * outputs < MIN_FLOPS or linear_op() is None:
        return NOTHING
    return _checked(rows, inputs, outputs, threads.counts_to_check(torch.get_num_threads()))


def linear(
    module: nn.Module, weight: torch.Tensor, mask: torch.Tensor, x: torch.Tensor
) -> torch.Tensor | None:
    """``F.linear(x, weight, module.bias)`` for training, with the gradient of ``weight``
    multiplied by ``mask``, using oneDNN where ``allowed``; None where torch must compute it."""
    bias = module.bias
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return None
    gemms = allowed(module, x)
    if gemms.forward and not x.requires_grad:
        with torch.no_grad():
            out = linear_op()(x.contiguous(), weight, bias, "none", [], "")  # type: ignore[misc]
        out.requires_grad_()
        out.register_hook(functools.partial(_input_layer_grads, weight, mask, bias, x, x._version))
        return out
    if gemms.weight_grad and (x.requires_grad or (bias is not None and bias.requires_grad)):
        out = F.linear(x, weight.detach(), bias)
        out.register_hook(functools.partial(_weight_grad, weight, mask, x, x._version))
        return out
    return None


def weight_grad(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad_out.T @ x``, the gradient of a linear layer's weight, by oneDNN."""
    return linear_op()(grad_out.t(), x.t(), None, "none", [], "")  # type: ignore[misc]


def _weight_grad(
    weight: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, version: int, grad_out: torch.Tensor
) -> None:
    """Accumulate the masked weight gradient into ``weight.grad``, as autograd would."""
    if x._version != version:
        raise RuntimeError("a linear layer's input was modified in place after its forward")
    _accumulate(weight, weight_grad(grad_out, x).mul_(mask), mask)


def _input_layer_grads(
    weight: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    version: int,
    grad_out: torch.Tensor,
) -> None:
    """The weight and bias gradients of a layer computed outside autograd (``x`` needs none)."""
    _weight_grad(weight, mask, x, version, grad_out)
    if bias is not None and bias.requires_grad:
        _accumulate(bias, grad_out.sum(0), None)


def _accumulate(param: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor | None) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)
        if mask is not None:
            param.grad.mul_(mask)


@functools.cache
def _checked(rows: int, inputs: int, outputs: int, counts: tuple[int, ...]) -> Allowed:
    """The check of one shape on each thread count in ``counts``. The key holds the counts, not
    the current one, so a thread switch inside a round (``threads.ThreadGovernor``) finds the
    check done rather than charging it to a timed step."""
    current = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inputs, generator=generator)
    grad_out = torch.randn(rows, outputs, generator=generator)
    weight = torch.randn(outputs, inputs, generator=generator, requires_grad=True)
    bias = torch.randn(outputs, generator=generator)
    grads, forwards = [], []
    try:
        for count in counts:
            threads.set_threads(count)
            with torch.enable_grad():
                reference = F.linear(x, weight, bias)
                (grad,) = torch.autograd.grad(reference, weight, grad_out)
            grads += [grad, weight_grad(grad_out, x)]
            forwards.append(linear_op()(x, weight.detach(), bias, "none", [], ""))  # type: ignore[misc]
    except RuntimeError:
        return NOTHING
    finally:
        threads.set_threads(current)
    if not all(torch.equal(grads[0], other) for other in grads[1:]):
        return NOTHING
    scale = reference.detach().abs().max().item() + 1.0
    close = (forwards[0] - reference.detach()).abs().max().item() <= 1e-4 * scale
    same = all(torch.equal(forwards[0], other) for other in forwards[1:])
    return Allowed(weight_grad=True, forward=close and same)
