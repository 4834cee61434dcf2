"""The run's dataset, loaded once through its plugin and checked (trials and controls share it)."""

from __future__ import annotations

from pathlib import Path

from . import guards
from .config import ResolvedConfig
from .plugins import Plugins
from .specs import DataRequest, DatasetSplits


def load_data(config: ResolvedConfig, plugins: Plugins) -> DatasetSplits:
    """The resolved dataset: the plugin's splits, checked (``guards.check_splits``) and named."""
    spec = plugins.datasets.get(config.dataset)
    request = DataRequest(
        data_dir=Path(config.data_dir),
        seed=config.split_seed,
        validation_size=config.validation_size,
        download=config.download,
    )
    who = plugins.datasets.who(spec.name)
    data = guards.call(who, "loading", spec.load, request)
    data = guards.check_splits(who, data, config.validation_size)
    if not data.name:
        data.name = spec.name
    return data


def data_key(config: ResolvedConfig) -> tuple:
    """What makes two configs load the same data (a sweep or a worker loads it once)."""
    return (config.dataset, str(config.data_dir), config.split_seed, config.validation_size)
