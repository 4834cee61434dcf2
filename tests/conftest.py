"""Shared fixtures: the real plugin manager, the real offline MNIST sample, tiny budgets."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lottery_core.config import make_config  # noqa: E402
from lottery_core.loading import load_data  # noqa: E402
from lottery_core.plugins import get_plugins  # noqa: E402
from lottery_core.resolution import resolve  # noqa: E402

# A budget that trains for real but finishes a round in well under a second.
TINY = dict(dataset="mnist-sample", iterations=150, eval_every=50, batch_size=60)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Code that trains outside a run (``Experiment.train``, scores) on one thread: the models
    are tiny, and on a busy machine a second thread costs several times the CPU. A run still
    sets its own ``threads`` and gives this one back (tests/test_training.py checks both)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def plugins():
    return get_plugins()


@pytest.fixture(scope="session")
def sample_data(plugins):
    """The 5,000 real MNIST digits the package ships (``mnist-sample``), split 3500/500/1000."""
    return load_data(resolve(make_config(**TINY), plugins), plugins)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def invoke(tmp_path, monkeypatch, capsys):
    """``lottery_core.cli.main(argv)`` in this process, from a scratch folder: exit code, stdout,
    stderr."""
    from lottery_core import cli

    monkeypatch.chdir(tmp_path)

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            cli.main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def cli_env(tmp_path):
    """Environment for CLI subprocesses: run from a scratch folder, no progress bar noise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
