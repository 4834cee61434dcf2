"""Plugins: a real third-party package through entry points, and the manager's guard rails."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lottery_core import hookspecs
from lottery_core.errors import LotteryError
from lottery_core.hookspecs import hookimpl
from lottery_core.plugins import build_manager, collect
from lottery_core.specs import ModelSpec, PruningStrategy

from .conftest import ROOT


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """``tests/example_plugin`` installed for real by pip into a private site folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(ROOT / "tests" / "example_plugin")],
        check=True, capture_output=True, timeout=1800,  # a hang guard
    )  # fmt: skip
    assert list(target.glob("lottery_example_plugin-*.dist-info/entry_points.txt"))
    return target


def cli_with(site: Path, *args, cwd: Path):
    env = {"PYTHONPATH": f"{ROOT}:{site}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1800,  # a hang guard
    )  # fmt: skip


@pytest.mark.slow
def test_installed_package_appears_in_plugins_and_help(installed_plugin, tmp_path):
    listing = cli_with(installed_plugin, "plugins", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "lottery-example-plugin 0.1.0" in listing.stdout
    assert "registers model tiny_mlp" in listing.stdout
    assert "registers pruning strategy largest" in listing.stdout
    assert re.search(r"hooks: .*on_evaluation.*on_round_end", listing.stdout)
    help_text = cli_with(installed_plugin, "run", "--help", cwd=tmp_path).stdout
    assert "tiny_mlp" in help_text and "largest" in help_text


@pytest.mark.slow
def test_installed_plugin_runs_end_to_end(installed_plugin, tmp_path):
    result = cli_with(installed_plugin, "run", "--model", "tiny_mlp", "--prune", "largest",
                      "--iterations", "60", "--eval-every", "30", "--out", "run", "--quiet",
                      cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(results) == 3  # the model's own default rounds
    assert (results["example_params"] > 0).all()  # on_round_end added a column
    assert (history["val_error"] == 100 - history["val_acc"]).all()  # on_evaluation too
    # Without the package the names are unknown, and the error lists the known ones.
    missing = cli_with(Path("/nonexistent"), "run", "--model", "tiny_mlp", cwd=tmp_path)
    assert missing.returncode == 2 and "lenet_fc" in missing.stderr


def test_builtins_come_through_the_same_hooks():
    plugins = collect(build_manager(load_entrypoints=False))
    assert plugins.models.sources["lenet_fc"] == "models"
    assert plugins.datasets.sources["mnist-sample"] == "datasets"
    assert plugins.strategies.names() == ["magnitude", "random"]
    assert plugins.reinits.names() == ["none", "random", "rewind"]


def test_a_misspelled_hook_marks_only_its_plugin_broken(capsys):
    """``check_pending`` used to stop every command: now the plugin is skipped, with one
    ``Warning:`` line, and listed as broken; the other plugins keep working."""

    class Typo:
        @hookimpl
        def register_model(self, register):  # should be register_models
            pass

        @hookimpl
        def register_pruning_strategies(self, register):
            register(PruningStrategy("typo_strategy", lambda ctx: {}))

    broken: dict[str, str] = {}
    plugins = collect(build_manager(load_entrypoints=False, extra=[Typo()], broken=broken), broken)
    reason = "implements unknown hook 'register_model' (did you mean 'register_models'?)"
    assert broken == {"Typo": reason}
    assert capsys.readouterr().err == f"Warning: plugin 'Typo' is skipped: {reason}\n"
    assert "typo_strategy" not in plugins.strategies.names()
    assert plugins.strategies.names() == ["magnitude", "random"]
    assert plugins.models.get("lenet_fc").name == "lenet_fc"
    assert [row["broken"] for row in plugins.describe() if row["name"] == "Typo"] == [reason]


def test_a_hook_implementation_that_does_not_fit_its_hook_marks_its_plugin_broken(capsys):
    class Misfit:
        @hookimpl
        def on_round_end(self, round_idx):  # not an argument of on_round_end
            pass

    broken: dict[str, str] = {}
    plugins = collect(build_manager(load_entrypoints=False, extra=[Misfit()], broken=broken),
                      broken)  # fmt: skip
    assert broken["Misfit"].startswith("invalid hook implementation: ")
    assert "round_idx" in broken["Misfit"]
    assert not plugins.manager.has_plugin("Misfit") and plugins.models.names()
    assert capsys.readouterr().err.startswith("Warning: plugin 'Misfit' is skipped: invalid")


def test_a_plugin_registering_one_name_twice_is_broken_and_dropped_everywhere(capsys):
    def build(shape, classes):
        return None

    class Twice:
        @hookimpl
        def register_models(self, register):
            register(ModelSpec("twin", build))
            register(ModelSpec("twin", build))

        @hookimpl
        def register_pruning_strategies(self, register):
            register(PruningStrategy("twin_strategy", lambda ctx: {}))

    broken: dict[str, str] = {}
    plugins = collect(build_manager(load_entrypoints=False, extra=[Twice()], broken=broken), broken)
    assert broken == {"Twice": "register_models: registered model 'twin' twice"}
    assert "twin" not in plugins.models.names()
    assert "twin_strategy" not in plugins.strategies.names()
    assert plugins.models.get("lenet_fc").name == "lenet_fc"
    assert capsys.readouterr().err == (
        "Warning: plugin 'Twice' is skipped: register_models: registered model 'twin' twice\n"
    )


def test_two_plugins_registering_one_name_leave_it_unusable_naming_both(capsys):
    """Neither claimant is picked silently: the name is an error naming both when used, and a
    ``Warning:`` line at start-up; every other name of both plugins keeps working."""

    def build(shape, classes):
        return None

    class Impostor:
        @hookimpl
        def register_models(self, register):
            register(ModelSpec("lenet_fc", build))
            register(ModelSpec("impostor_mlp", build))

    plugins = collect(build_manager(load_entrypoints=False, extra=[Impostor()]))
    with pytest.raises(LotteryError, match="'lenet_fc' is registered twice") as error:
        plugins.models.get("lenet_fc")
    assert "plugin 'models'" in str(error.value) and "plugin 'Impostor'" in str(error.value)
    assert "lenet_fc" in plugins.models.names()  # a CLI choice, so that the run says why not
    assert plugins.models.get("impostor_mlp").build is build
    assert plugins.models.get("lenet_conv").name == "lenet_conv"
    assert capsys.readouterr().err == (
        "Warning: model 'lenet_fc' is registered by plugin 'models' and by plugin 'Impostor'; "
        "neither is used, and a run that names it stops, until one is uninstalled or skipped "
        "(LOTTERY_BLOCK_PLUGINS)\n"
    )
    rows = {row["name"]: row for row in plugins.describe()}
    assert "model lenet_fc (UNUSABLE: registered by plugin 'models' and by plugin 'Impostor')" in (
        rows["Impostor"]["registers"]
    )


def test_unknown_name_lists_the_known_ones():
    plugins = collect(build_manager(load_entrypoints=False))
    with pytest.raises(LotteryError, match="unknown dataset 'imagenet'; known: cifar10, fashion"):
        plugins.datasets.get("imagenet")


def test_every_hook_is_documented_and_exercised():
    """Each hookspec has a docstring, a README entry and a test that uses it."""
    readme = (ROOT / "README.md").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    names = [n for n in dir(hookspecs) if n.startswith(("register_", "on_"))]
    assert len(names) == 11
    for name in names:
        assert getattr(hookspecs, name).__doc__, name
        assert f"`{name}" in readme, f"{name} is not documented in README.md"
        assert tests.count(name) >= 2, f"{name} has no test"


def test_lifecycle_hooks_see_every_round_and_evaluation(sample_data, tmp_path):
    from lottery_core import runs
    from lottery_core.config import make_config
    from lottery_core.experiment import Experiment

    calls = []

    class Recorder:
        @hookimpl
        def on_experiment_start(self, config, run_dir):
            calls.append(("on_experiment_start", config.rounds, run_dir))

        @hookimpl
        def on_round_start(self, round_index, remaining, model):
            calls.append(("on_round_start", round_index, round(remaining, 1)))

        @hookimpl
        def on_evaluation(self, round_index, iteration, metrics):
            calls.append(("on_evaluation", round_index, iteration))

        @hookimpl
        def on_round_end(self, round_index, record, model):
            calls.append(("on_round_end", round_index, record["ES"] > 0))

        @hookimpl
        def on_experiment_end(self, results, run_dir):
            calls.append(("on_experiment_end", len(results), run_dir))

    plugins = collect(build_manager(load_entrypoints=False, extra=[Recorder()]))
    config = make_config(dataset="mnist-sample", rounds=2, iterations=100, eval_every=50, threads=1)
    experiment = Experiment(config, plugins=plugins, data=sample_data)
    runs.start(experiment, tmp_path / "run", progress=False)
    assert calls == [
        ("on_experiment_start", 2, tmp_path / "run"),
        ("on_round_start", 0, 100.0),
        ("on_evaluation", 0, 50),
        ("on_evaluation", 0, 100),
        ("on_round_end", 0, True),
        ("on_round_start", 1, 80.0),
        ("on_evaluation", 1, 50),
        ("on_evaluation", 1, 100),
        ("on_round_end", 1, True),
        ("on_experiment_end", 2, tmp_path / "run"),
    ]


def test_a_plugin_dataset_and_reinit_policy_drive_a_run(tmp_path):
    """``register_datasets`` and ``register_reinit_policies`` feed the round loop end to end."""
    import torch

    from lottery_core import runs
    from lottery_core.config import make_config
    from lottery_core.experiment import Experiment
    from lottery_core.specs import DatasetSpec, DatasetSplits, ReinitPolicy

    def blobs(request):
        generator = torch.Generator().manual_seed(request.seed)
        labels = torch.randint(0, 3, (900,), generator=generator)
        images = torch.randn(900, 1, 4, 4, generator=generator) * 0.3 + labels.view(-1, 1, 1, 1)
        return DatasetSplits(images[:600], labels[:600], images[600:750], labels[600:750],
                             images[750:], labels[750:], num_classes=3, source="blobs")  # fmt: skip

    seen = []

    def flip_signs(ctx):
        seen.append(ctx.round_index)
        for name, tensor in ctx.parameters.items():
            tensor.copy_(-ctx.rewind_state[name])

    class Extras:
        @hookimpl
        def register_datasets(self, register):
            register(DatasetSpec("blobs", blobs))

        @hookimpl
        def register_reinit_policies(self, register):
            register(ReinitPolicy("flip", flip_signs))

    plugins = collect(build_manager(load_entrypoints=False, extra=[Extras()]))
    config = make_config(dataset="blobs", reinit="flip", rounds=3, iterations=40, eval_every=20,
                         batch_size=30)  # fmt: skip
    result = runs.start(Experiment(config, plugins=plugins), tmp_path / "run", progress=False)
    assert seen == [1, 2]
    assert result.data_source == "blobs" and result.config.dataset == "blobs"
    assert result.results["test"].iloc[0] > 90  # three well-separated clusters
    assert [round(x, 1) for x in result.results["remaining"]] == [100.0, 80.1, 64.1]
