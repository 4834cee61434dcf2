"""What a run records beyond its tensors: the row table's columns, which run a folder is, and
the versions that ran it. Shared by the round loop, the run folder and the readers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from . import paths
from .specs import RunInfo

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .plugins import Plugins

RESULT_COLUMNS = ["round", "remaining", "ES", "val", "test"]


def results_frame(records: list[dict]) -> pd.DataFrame:
    """``results.csv``: the seed project's columns first, then the rest."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return frame[RESULT_COLUMNS + [c for c in frame.columns if c not in RESULT_COLUMNS]]


def identify(run_dir: Path | None) -> RunInfo:
    """Which run ``run_dir`` is: a trials/controls folder keeps its runs under
    ``runs/<experiment>/trial_<i>`` (``paths.trial_of``), a branch its networks under
    ``branches/<kind>-<hash>/round_<r>/trial_<t>`` (``paths.branch_of``: the experiment is the
    kind); any other folder is a single run."""
    if run_dir is None:
        return RunInfo()
    branch = paths.branch_of(Path(run_dir))
    if branch is not None:
        return RunInfo(Path(run_dir), paths.branch_kind_of(branch[0]), branch[2])
    found = paths.trial_of(Path(run_dir))
    if found is None:
        return RunInfo(Path(run_dir))
    _, experiment, trial = found
    return RunInfo(Path(run_dir), experiment, trial)


def versions() -> dict[str, str]:
    """The versions ``config.json`` records (torchvision read from its metadata: not every
    run imports it)."""
    import importlib.metadata
    import platform

    import pluggy
    import pydantic
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": importlib.metadata.version("torchvision"),
        "pluggy": pluggy.__version__,
        "pydantic": pydantic.__version__,
        "pandas": pd.__version__,
    }


def plugin_sources(config: ExperimentConfig, plugins: Plugins) -> dict[str, str]:
    """Which plugin supplied each choice of the config (``config.json``'s ``plugins``, part of
    the run's identity)."""
    assert config.dataset is not None
    return {
        "dataset": plugins.datasets.sources[config.dataset],
        "model": plugins.models.sources[config.model],
        "prune": plugins.strategies.sources[config.prune],
        "reinit": plugins.reinits.sources[config.reinit],
    }
