"""Training a pruned model with its masks applied to the gradients instead of every forward.

``torch.nn.utils.prune`` computes ``weight = weight_orig * weight_mask`` in a forward pre-hook on
every call, and autograd multiplies the gradient by the mask again on the way back: two passes
over every weight and two autograd nodes per layer per step, about a fifth of a LeNet step.
Inside ``masks_on_gradients`` each pruned module computes with ``weight_orig`` itself, whose
pruned entries are zeroed on entry, and a post-accumulate-grad hook multiplies its gradient by
the mask: the same multiplication the pre-hook's backward does. Survivors see the same GEMMs,
the same gradients and the same Adam updates, and pruned entries get a zero gradient, so they
stay zero; the round's numbers are those of the pre-hook path bit for bit (``tests/test_fast_paths``
compares the two). On exit the pruned entries of ``weight_orig`` get their old values back and
the pre-hooks are restored, so the re-parametrisation is exactly what it would have been.

Where ``onednn_training.in_use()`` (an AMD CPU with AVX-512), a pruned ``nn.Linear`` also gets
an instance ``forward`` for the block, which runs its large GEMMs on oneDNN where it allows
(gradients then reach the weights through ``.grad`` by hooks, as ``backward`` delivers them,
not through ``torch.autograd.grad``).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from . import onednn_training


@dataclass
class _Pruned:
    module: nn.Module
    name: str
    orig: nn.Parameter
    mask: torch.Tensor
    hooks: OrderedDict
    saved: torch.Tensor | None = None
    handle: object | None = None
    forward_set: bool = False


def pruned_tensors(model: nn.Module) -> list[_Pruned]:
    """Every tensor of ``model`` re-parametrised by a ``torch.nn.utils.prune`` forward pre-hook."""
    found = []
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                name = hook._tensor_name
                found.append(
                    _Pruned(
                        module,
                        name,
                        getattr(module, f"{name}_orig"),
                        getattr(module, f"{name}_mask"),
                        OrderedDict(module._forward_pre_hooks),
                    )
                )
    return found


@contextmanager
def masks_on_gradients(model: nn.Module) -> Iterator[None]:
    """Within the block, pruned modules compute with ``*_orig`` directly (pruned entries zero)
    and mask its gradient; the masks must not change inside the block."""
    entries = pruned_tensors(model)
    try:
        with torch.no_grad():
            for entry in entries:
                _enter(entry)
        yield
    finally:
        with torch.no_grad():
            for entry in entries:
                _leave(entry)


def _enter(entry: _Pruned) -> None:
    module, mask = entry.module, entry.mask
    entry.saved = entry.orig.detach().clone()
    entry.orig.mul_(mask)
    hooks = module._forward_pre_hooks
    for key, hook in list(hooks.items()):
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == entry.name:
            del hooks[key]
    module.__dict__[entry.name] = entry.orig
    entry.handle = entry.orig.register_post_accumulate_grad_hook(_masking(mask))
    if entry.name == "weight" and type(module).forward is nn.Linear.forward:
        if "forward" not in module.__dict__ and onednn_training.in_use():
            forward = functools.partial(_linear, entry)
            forward.plain_linear = True  # type: ignore[attr-defined]  # onednn may swap it
            module.forward = forward  # type: ignore[method-assign]
            entry.forward_set = True


def _linear(entry: _Pruned, x: torch.Tensor) -> torch.Tensor:
    """``F.linear`` with ``weight_orig``, its GEMMs on oneDNN where ``onednn_training`` allows."""
    out = onednn_training.linear(entry.module, entry.orig, entry.mask, x)
    return F.linear(x, entry.orig, entry.module.bias) if out is None else out


def _masking(mask: torch.Tensor):
    def hook(param: torch.Tensor) -> None:
        param.grad.mul_(mask)  # type: ignore[union-attr]

    return hook


def _leave(entry: _Pruned) -> None:
    module = entry.module
    if entry.forward_set:
        del module.__dict__["forward"]
    if entry.handle is not None:
        entry.handle.remove()  # type: ignore[attr-defined]
    if entry.saved is not None:
        entry.orig.copy_(torch.where(entry.mask.bool(), entry.orig, entry.saved))
    module._forward_pre_hooks.clear()
    module._forward_pre_hooks.update(entry.hooks)
    module.__dict__[entry.name] = entry.orig * entry.mask
