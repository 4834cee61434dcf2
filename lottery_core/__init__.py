"""lottery: iterative magnitude pruning and lottery-ticket experiments, extensible by plugins."""

from .api import resume_experiment, run_experiment
from .config import ExperimentConfig, make_config
from .errors import LotteryError
from .experiment import Experiment, ExperimentResult
from .hookspecs import hookimpl
from .plugins import get_plugins
from .runner import ExperimentRunner
from .specs import (
    DataRequest,
    DatasetSpec,
    DatasetSplits,
    ModelDefaults,
    ModelSpec,
    PruningStrategy,
    ReinitContext,
    ReinitPolicy,
)

__all__ = [
    "DataRequest",
    "DatasetSpec",
    "DatasetSplits",
    "Experiment",
    "ExperimentConfig",
    "ExperimentResult",
    "ExperimentRunner",
    "LotteryError",
    "ModelDefaults",
    "ModelSpec",
    "PruningStrategy",
    "ReinitContext",
    "ReinitPolicy",
    "get_plugins",
    "hookimpl",
    "make_config",
    "resume_experiment",
    "run_experiment",
]
