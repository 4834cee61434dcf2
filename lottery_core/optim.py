"""Adam and SGD as a round uses them, without the import that constructing a ``torch.optim``
optimizer costs.

Every ``torch.optim`` optimizer's methods are wrapped by torch's lazy dynamo guard, so building
one imports ``torch._dynamo``, ``torch._inductor`` and sympy: about 150 MiB resident in every run
and every sweep worker, for nothing a round uses. These classes keep ``torch.optim.Adam``'s and
``torch.optim.SGD``'s state (Adam's step and moments, created as its ``_init_group`` creates
them; SGD's momentum buffers, created by the update itself on the first step) and make the same
update through the public functional forms ``torch.optim.adam.adam`` and
``torch.optim.sgd.sgd``, the functions ``torch.optim.Adam.step`` and ``torch.optim.SGD.step``
themselves call: the parameters are bit-identical after every step (``tests/test_training.py``
and ``tests/test_optim.py`` compare them with ``torch.optim``'s, fused and foreach, the learning
rate set at every step as ``torch.optim.lr_scheduler.LambdaLR`` sets it).

``step(lr)`` takes the learning rate of that step: the round loop computes it from the iteration
(``training.Recipe``), so no schedule state exists to carry anywhere. The built-in optimizer
plugins (``plugins/optim.py``) register these; a plugin's own optimizer may build on them (SAM
around ``SGD``, say).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.adam import adam
from torch.optim.sgd import sgd

_ADAM_ACCEPTED = set(inspect.signature(adam).parameters)  # keywords differ across releases
_SGD_ACCEPTED = set(inspect.signature(sgd).parameters)
BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
EPS = 1e-8


def fusable(params: Sequence[torch.Tensor]) -> bool:
    """Whether torch's fused kernels take these parameters (CPU and CUDA tensors)."""
    return all(p.device.type in ("cpu", "cuda") for p in params)


def _zeros(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def _live(params: list[torch.Tensor]) -> list[int]:
    """The indices of the parameters that have a gradient this step (``_init_group``'s)."""
    return [i for i, p in enumerate(params) if p.grad is not None]


class _Functional:
    """What both optimizers share: their parameters, the keyword options of torch's functional
    update (``options``), dropping gradients, and a step's parameters that have a gradient."""

    params: list[torch.Tensor]
    options: dict[str, Any]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def _start(self, lr: float | None) -> tuple[list[int], list[torch.Tensor]]:
        """Set ``lr`` (else keep the last one) and list the parameters this step updates."""
        if lr is not None:
            self.options["lr"] = lr
        live = _live(self.params)
        return live, [self.params[i] for i in live]


class Adam(_Functional):
    """``torch.optim.Adam(params, lr, weight_decay=weight_decay, fused=True)`` (or
    ``foreach=True`` with ``fused`` off)."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: float,
        fused: bool,
        weight_decay: float = 0.0,
    ):
        self.params = list(params)
        self.lr = lr
        self.fused = fused
        self.exp_avgs = [_zeros(p) for p in params]
        self.exp_avg_sqs = [_zeros(p) for p in params]
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        self.steps = [
            torch.zeros((), dtype=torch.float32, device=p.device)
            if fused
            else torch.tensor(0.0, dtype=scalar, device="cpu")
            for p in params
        ]
        options: dict[str, Any] = {
            "amsgrad": False,
            "has_complex": any(torch.is_complex(p) for p in params),
            "beta1": BETAS[0],
            "beta2": BETAS[1],
            "lr": lr,
            "weight_decay": weight_decay,
            "eps": EPS,
            "maximize": False,
            "foreach": None if fused else True,
            "capturable": False,
            "differentiable": False,
            "fused": True if fused else None,
            "grad_scale": None,
            "found_inf": None,
            "decoupled_weight_decay": False,
        }
        self.options = {k: v for k, v in options.items() if k in _ADAM_ACCEPTED}

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        """One update from each parameter's ``grad``, at ``lr`` (else the last one given)."""
        live, params = self._start(lr)
        adam(
            params,
            [p.grad for p in params if p.grad is not None],
            [self.exp_avgs[i] for i in live],
            [self.exp_avg_sqs[i] for i in live],
            [],
            [self.steps[i] for i in live],
            **self.options,
        )


class SGD(_Functional):
    """``torch.optim.SGD(params, lr, momentum, weight_decay=weight_decay, nesterov=nesterov,
    fused=True)`` (or ``foreach=True`` with ``fused`` off); dampening 0."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: float,
        fused: bool,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum above 0")
        self.params = list(params)
        self.lr = lr
        self.momentum = momentum
        # torch.optim.SGD keeps no buffer until the first step makes one (``b_1 = g_1``).
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)
        options: dict[str, Any] = {
            "has_sparse_grad": False,
            "foreach": None if fused else True,
            "fused": True if fused else None,
            "grad_scale": None,
            "found_inf": None,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "lr": lr,
            "dampening": 0.0,
            "nesterov": nesterov,
            "maximize": False,
        }
        self.options = {k: v for k, v in options.items() if k in _SGD_ACCEPTED}

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        """One update from each parameter's ``grad``, at ``lr`` (else the last one given)."""
        live, params = self._start(lr)
        buffers = [self.momentum_buffers[i] for i in live] if self.momentum != 0 else []
        sgd(params, [p.grad for p in params if p.grad is not None], buffers, **self.options)
        for i, buffer in zip(live if self.momentum != 0 else [], buffers, strict=True):
            self.momentum_buffers[i] = buffer  # what the update made or changed in the list
