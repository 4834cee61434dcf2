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


def run_into(folder: Path, budget: dict, data=None, **overrides) -> Path:
    """A real run of ``budget`` (with ``overrides``) into ``folder``, on one thread (tiny models
    only lose time to threads); torch's thread count is given back afterwards."""
    import torch

    from lottery_core import runs
    from lottery_core.experiment import Experiment

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        experiment = Experiment(make_config(**{**budget, **overrides}), data=data)
        runs.start(experiment, folder, progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder


def pruned_lenet():
    """A seeded LeNet-300-100 whose first layer is half pruned (``prune.random_unstructured``):
    the model optimizer tests compare updates on."""
    import torch
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(),
                                torch.nn.Linear(300, 10))  # fmt: skip
    prune.random_unstructured(model[0], "weight", amount=0.5)
    return model


@pytest.fixture
def entry_point_package(tmp_path, monkeypatch):
    """``make(name, module, source)``: a package installed for real in a private site folder,
    module ``module`` holding ``source``, declared as plugin ``name`` in the ``lottery``
    entry-point group; the process-wide plugins are reloaded with it (and without it after)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    made = []

    def make(name: str, module: str, source: str) -> None:
        (site / f"{module}.py").write_text(source)
        info = site / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[lottery]\n{name} = {module}\n")
        made.append(module)
        get_plugins.cache_clear()

    yield make
    for module in made:
        sys.modules.pop(module, None)
    get_plugins.cache_clear()


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
