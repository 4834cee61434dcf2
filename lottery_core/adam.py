"""Adam as the round loop uses it, without the import that constructing ``torch.optim.Adam`` costs.

Every ``torch.optim`` optimizer's methods are wrapped by torch's lazy dynamo guard, so building
one imports ``torch._dynamo``, ``torch._inductor`` and sympy: about 150 MiB resident in every run
and every sweep worker, for nothing a round uses. This class keeps ``torch.optim.Adam``'s state
(step, first and second moments, created as its ``_init_group`` creates them) and makes the same
update through the public functional form ``torch.optim.adam.adam``, the function
``torch.optim.Adam.step`` itself calls: the parameters are bit-identical after every step
(``tests/test_training.py`` compares them with ``torch.optim.Adam``, fused and foreach).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.adam import adam

_ACCEPTED = set(inspect.signature(adam).parameters)  # keywords differ across torch releases
BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
EPS = 1e-8


def _zeros(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


class Adam:
    """``torch.optim.Adam(params, lr, fused=True)`` (or ``foreach=True`` with ``fused`` off)."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, fused: bool):
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
            "weight_decay": 0.0,
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
        self.options = {k: v for k, v in options.items() if k in _ACCEPTED}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in live]
        adam(
            params,
            [p.grad for p in params if p.grad is not None],
            [self.exp_avgs[i] for i in live],
            [self.exp_avg_sqs[i] for i in live],
            [],
            [self.steps[i] for i in live],
            **self.options,
        )
