"""Built-in optimizers and learning-rate schedules: ``adam`` (the paper's) and ``sgd``;
``constant``, ``step`` and ``cosine``.

The optimizers are torch's updates, bit for bit, through ``lottery_core.optim`` (no
``torch.optim`` optimizer object is built); each round starts a fresh state. A schedule is a pure
function of the iteration, OpenLTH's habit: the round loop sets ``lr x warmup x factor`` before
every step, so nothing about it is carried across rounds or a resume.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Any

import torch

from lottery_core import optim
from lottery_core.errors import LotteryError
from lottery_core.hookspecs import hookimpl
from lottery_core.specs import OptimizerSpec, ScheduleSpec

if TYPE_CHECKING:
    from lottery_core.config import ResolvedConfig

Params = list[torch.Tensor]


def adam_state(params: Params, config: ResolvedConfig) -> optim.Adam:
    """``torch.optim.Adam`` (betas 0.9, 0.999; eps 1e-8), fused where torch fuses it."""
    return optim.Adam(
        params, config.lr, fused=optim.fusable(params), weight_decay=config.weight_decay
    )


def sgd_state(params: Params, config: ResolvedConfig) -> optim.SGD:
    """``torch.optim.SGD`` with the config's momentum, Nesterov and weight decay."""
    return optim.SGD(
        params,
        config.lr,
        fused=optim.fusable(params),
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def torch_step(params: Params, state: Any, lr: float, closure: Any) -> None:
    """One update of a ``lottery_core.optim`` optimizer at ``lr``."""
    state.step(lr)


def sgd_check(config: ResolvedConfig) -> None:
    if config.nesterov and config.momentum == 0:
        raise LotteryError("--nesterov needs a --momentum above 0")


def constant(iteration: int, total: int, config: ResolvedConfig) -> float:
    return 1.0


def step_decay(iteration: int, total: int, config: ResolvedConfig) -> float:
    """``gamma`` to the number of milestones reached (OpenLTH's step decay)."""
    return float(config.gamma ** bisect.bisect_right(config.milestones, iteration))


def step_check(config: ResolvedConfig) -> None:
    if not config.milestones:
        raise LotteryError("--schedule step needs --milestones (e.g. 80ep,120ep)")


def cosine(iteration: int, total: int, config: ResolvedConfig) -> float:
    """Half a cosine from 1 at iteration 0 towards 0 at the end of the round's budget."""
    return 0.5 * (1.0 + math.cos(math.pi * iteration / total))


@hookimpl
def register_optimizers(register) -> None:
    register(
        OptimizerSpec(
            "adam",
            adam_state,
            torch_step,
            "Adam (betas 0.9, 0.999): the paper's",
            settings=("weight_decay",),
        )
    )
    register(
        OptimizerSpec(
            "sgd",
            sgd_state,
            torch_step,
            "SGD, with --momentum, --nesterov and --weight-decay",
            settings=("momentum", "nesterov", "weight_decay"),
            check=sgd_check,
        )
    )


@hookimpl
def register_schedules(register) -> None:
    register(ScheduleSpec("constant", constant, "lr throughout"))
    register(
        ScheduleSpec(
            "step",
            step_decay,
            "lr x gamma at each of --milestones",
            settings=("milestones", "gamma"),
            check=step_check,
        )
    )
    register(ScheduleSpec("cosine", cosine, "lr x (1 + cos(pi t / T)) / 2 over the round"))
