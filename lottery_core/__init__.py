"""lottery: iterative magnitude pruning and lottery-ticket experiments, extensible by plugins."""

import os

# MKL's GEMMs give the same bits on any thread count only in its strict conditional numerical
# reproducibility mode, which MKL reads at its first call: set before anything runs one, so a
# run's numbers do not depend on the ``threads`` setting (tests/test_training.py checks it).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from .api import resume_experiment, run_experiment
from .config import ExperimentConfig, make_config
from .errors import LotteryError, PluginError
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
    PruningContext,
    PruningStrategy,
    ReinitContext,
    ReinitPolicy,
    RunInfo,
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
    "PluginError",
    "PruningContext",
    "PruningStrategy",
    "ReinitContext",
    "ReinitPolicy",
    "RunInfo",
    "get_plugins",
    "hookimpl",
    "make_config",
    "resume_experiment",
    "run_experiment",
]
