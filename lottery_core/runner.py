"""``ExperimentRunner``: the seed project's runner, keyword for keyword, on the new core.

Users of the seed project move over by changing one import; ``run()`` returns the results
DataFrame and ``save_results(filename)`` writes it as CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .api import run_experiment
from .config import make_config
from .experiment import ExperimentResult


class ExperimentRunner:
    """Runs one IMP experiment configured with the seed project's keyword names (``None``: the
    config's default)."""

    def __init__(
        self,
        dataset: str | None = None,
        model_name: str | None = None,
        pruning_type: str | None = None,
        pruning_scope: str | None = None,
        reinit_method: str | None = None,
        pruning_rate: float | None = None,
        num_rounds: int | None = None,
        iterations: int | None = None,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        results_dir: str | Path = "results",
        **extra: Any,
    ):
        self.config = make_config(
            dataset=dataset,
            model=model_name,
            prune=pruning_type,
            scope=pruning_scope,
            reinit=reinit_method,
            rate=pruning_rate,
            rounds=num_rounds,
            iterations=iterations,
            lr=learning_rate,
            batch_size=batch_size,
            device=device,
            **extra,
        )
        self.results_dir = Path(results_dir)
        self.result: ExperimentResult | None = None

    def run(self, progress: bool = True) -> pd.DataFrame:
        from . import rundir
        from .plugins import get_plugins
        from .resolution import resolve

        plugins = get_plugins()
        config = resolve(self.config, plugins)  # this entry path's one resolution
        out = rundir.default_run_dir(config.run_name(), self.results_dir)
        self.result = run_experiment(config, out=out, progress=progress, plugins=plugins)
        return self.result.results

    @property
    def results(self) -> pd.DataFrame:
        if self.result is None:
            raise RuntimeError("call run() first")
        return self.result.results

    def save_results(self, filename: str | Path) -> Path:
        """Write the results table as CSV; a bare file name goes into ``results_dir``."""
        path = Path(filename)
        if not path.is_absolute() and path.parent == Path("."):
            path = self.results_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.results.to_csv(path, index=False)
        return path
