"""Plugins: a real third-party package through entry points, and the manager's guard rails."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from lottery_core import hookspecs
from lottery_core.errors import LotteryError
from lottery_core.hookspecs import hookimpl
from lottery_core.plugins import Registry, build_manager, collect, get_plugins
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
            register(ModelSpec("shared_mlp", build))
            register(ModelSpec("impostor_mlp", build))

    class Rival:
        @hookimpl
        def register_models(self, register):
            register(ModelSpec("shared_mlp", build))

    plugins = collect(build_manager(load_entrypoints=False, extra=[Impostor(), Rival()]))
    with pytest.raises(LotteryError, match="'shared_mlp' is registered twice") as error:
        plugins.models.get("shared_mlp")
    assert "plugin 'Impostor'" in str(error.value) and "plugin 'Rival'" in str(error.value)
    assert "shared_mlp" in plugins.models.names()  # a CLI choice, so that the run says why not
    assert "shared_mlp" not in plugins.models  # but not usable
    assert plugins.models.get("impostor_mlp").build is build
    assert plugins.models.get("lenet_conv").name == "lenet_conv"
    assert capsys.readouterr().err == (
        "Warning: model 'shared_mlp' is registered by plugin 'Impostor' and by plugin 'Rival'; "
        "neither is used, and a run that names it stops, until one is uninstalled or skipped "
        "(LOTTERY_BLOCK_PLUGINS)\n"
    )
    rows = {row["name"]: row for row in plugins.describe()}
    assert (
        "model shared_mlp (UNUSABLE: registered by plugin 'Impostor' and by plugin 'Rival')"
        in rows["Impostor"]["registers"]
    )


def test_a_builtins_name_stays_the_builtins_and_the_other_registration_is_refused(capsys):
    """A package registering ``magnitude`` used to make the built-in unusable (the README's
    main job stopped with "registered twice"): now its registration is the one refused, with
    one ``Warning:`` line naming it, and everything else it registers works."""

    def build(shape, classes):
        return None

    class Impostor:
        @hookimpl
        def register_models(self, register):
            register(ModelSpec("lenet_fc", build))
            register(ModelSpec("impostor_mlp", build))

        @hookimpl
        def register_pruning_strategies(self, register):
            register(PruningStrategy("magnitude", lambda ctx: {}))

    origins = {"Impostor": "impostor-package 1.0"}
    plugins = collect(build_manager(load_entrypoints=False, extra=[Impostor()]), {}, origins)
    assert plugins.models["lenet_fc"].build is not build
    assert plugins.models.sources["lenet_fc"] == "models"
    assert plugins.strategies.sources["magnitude"] == "pruning"
    assert plugins.strategies["magnitude"].scores is not None
    assert plugins.models["impostor_mlp"].build is build
    assert not plugins.models.conflicts and not plugins.strategies.conflicts
    assert capsys.readouterr().err.splitlines() == [
        "Warning: plugin 'Impostor' (impostor-package 1.0) registers model 'lenet_fc', the name "
        "of a built-in: the built-in one is used, the plugin's is refused (rename it in the "
        "plugin)",
        "Warning: plugin 'Impostor' (impostor-package 1.0) registers pruning strategy "
        "'magnitude', the name of a built-in: the built-in one is used, the plugin's is refused "
        "(rename it in the plugin)",
    ]
    rows = {row["name"]: row for row in plugins.describe()}
    assert rows["Impostor"]["registers"] == [
        "model impostor_mlp",
        "model lenet_fc (REFUSED: the name of built-in plugin 'models')",
        "pruning strategy magnitude (REFUSED: the name of built-in plugin 'pruning')",
    ]
    assert rows["models"]["registers"][-1] == "model lenet_fc"


def test_a_builtin_takes_its_name_whatever_the_order_and_gives_it_back_when_dropped():
    """Registration order does not matter: claims made before the built-in's (even a conflict
    between two others) are refused when it comes; a built-in dropped as broken gives the name
    back to them, as if it had never registered it."""

    def spec(tag: str) -> ModelSpec:
        return ModelSpec("x", lambda shape, classes: None, description=tag)

    registry: Registry[ModelSpec] = Registry("model", ModelSpec, builtins=frozenset({"models"}))
    one, two, own = spec("one"), spec("two"), spec("own")
    registry.add(one, "one")
    registry.add(two, "two")
    assert set(registry.conflicts["x"]) == {"one", "two"}
    registry.add(own, "models")
    assert registry["x"] is own and registry.sources["x"] == "models"
    assert registry.refused == {"x": {"one": one, "two": two}} and not registry.conflicts
    registry.add(spec("three"), "three")
    assert registry["x"] is own and set(registry.refused["x"]) == {"one", "two", "three"}
    with pytest.raises(LotteryError, match="registered model 'x' twice"):
        registry.add(spec("again"), "one")
    registry.drop("three")
    assert set(registry.refused["x"]) == {"one", "two"}
    registry.drop("models")
    assert "x" not in registry and set(registry.conflicts["x"]) == {"one", "two"}
    assert not registry.refused
    registry.drop("two")
    assert registry["x"] is one


def test_a_registry_is_subscriptable_and_iterates_over_its_usable_names(plugins):
    """``get_plugins().datasets["mnist"]`` used to raise TypeError."""
    datasets = plugins.datasets
    assert datasets["mnist"] is datasets.get("mnist")
    assert "mnist" in datasets and "imagenet" not in datasets and 3 not in datasets
    assert list(datasets)[:4] == ["cifar10", "fashion", "mnist", "mnist-sample"]
    assert list(datasets) == sorted(datasets.items) and len(datasets) == len(datasets.items)
    assert all(datasets[name].name == name for name in datasets)
    with pytest.raises(LotteryError, match=r"^unknown dataset 'imagenet'; known: cifar10, ") as e:
        datasets["imagenet"]
    assert isinstance(e.value, KeyError) and str(e.value) == str(e.value).strip().splitlines()[0]
    assert not str(e.value).startswith("'")  # KeyError's quotes are not in the one line
    empty: Registry[ModelSpec] = Registry("model", ModelSpec)
    assert len(empty) == 0 and list(empty) == []


def test_unknown_name_lists_the_known_ones():
    plugins = collect(build_manager(load_entrypoints=False))
    with pytest.raises(LotteryError, match="unknown dataset 'imagenet'; known: cifar10, fashion"):
        plugins.datasets.get("imagenet")


def test_every_hook_is_documented_and_exercised():
    """Each hookspec has a docstring, an entry in the plugin guide and a test that uses it."""
    guide = (ROOT / "docs" / "PLUGINS.md").read_text(encoding="utf-8")
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    names = [n for n in dir(hookspecs) if n.startswith(("register_", "on_"))]
    assert len(names) == 13
    for name in names:
        assert getattr(hookspecs, name).__doc__, name
        assert f"`{name}" in guide, f"{name} is not documented in docs/PLUGINS.md"
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


SMALL = ["--dataset", "mnist-sample", "--iterations", "50", "--eval-every", "50", "--quiet",
         "--threads", "1"]  # fmt: skip

LARGEST = """
from lottery_core import PruningStrategy, hookimpl


def scores(ctx):
    return {n: -w.abs() for n, w in ctx.weights.items()}


@hookimpl
def register_pruning_strategies(register):
    register(PruningStrategy("NAME", scores, "prune the largest weights"))
"""


@pytest.fixture
def local(tmp_path, monkeypatch):
    """A scratch folder (the ``invoke`` fixture's working folder) for local plugins named
    ``local_*``; ``LOTTERY_PLUGINS``, the imported modules and the process-wide plugins are
    restored afterwards (``--plugins`` sets the variable for the rest of the process)."""
    monkeypatch.setenv("LOTTERY_PLUGINS", "")
    get_plugins.cache_clear()
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("local_")]:
        del sys.modules[name]
    get_plugins.cache_clear()


@pytest.fixture
def package(entry_point_package):
    """``package(name, source)``: an installed package (a real ``lottery`` entry point) whose
    module ``pkg_<name>`` is ``source``; the process-wide plugins are reloaded with it."""

    def make(name: str, source: str) -> None:
        entry_point_package(name, f"pkg_{name}", textwrap.dedent(source))

    return make


def test_a_package_registering_magnitude_leaves_the_readmes_main_job_working(
    package, invoke, tmp_path
):
    package("shadow", LARGEST.replace("NAME", "magnitude"))
    warning = ("Warning: plugin 'shadow' (pkg_shadow 0.1) registers pruning strategy 'magnitude', "
               "the name of a built-in: the built-in one is used, the plugin's is refused (rename "
               "it in the plugin)")  # fmt: skip
    listing = invoke("plugins")
    assert listing.returncode == 0 and listing.stderr.splitlines() == [warning]
    assert ("registers pruning strategy magnitude (REFUSED: the name of built-in plugin "
            "'pruning')") in listing.stdout  # fmt: skip
    get_plugins.cache_clear()  # as a new process: the run says it once too
    result = invoke("run", *SMALL, "--rounds", "2", "--out", "run")  # --prune magnitude
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [warning]
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["plugins"]["prune"] == "pruning"


def test_a_package_may_not_take_a_builtin_plugins_name(package, invoke):
    """An entry point named ``pruning`` would have kept the built-in ``pruning`` plugin out."""
    package("pruning", LARGEST.replace("NAME", "largest"))
    listing = invoke("plugins", "--json")
    assert listing.returncode == 0
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["pruning"]["module"] == "lottery_plugins.pruning"
    assert rows["pruning (pkg_pruning 0.1)"]["broken"] == (
        "its plugin name 'pruning' is a built-in's; rename the entry point"
    )
    assert listing.stderr.count("Warning:") == 1


def test_plugins_shows_each_plugins_file(invoke, plugins):
    """From a clone, with another checkout installed, the built-ins' files say which is used."""
    listing = invoke("plugins")
    assert listing.returncode == 0
    for name in ("datasets", "models", "pruning", "reinit", "branches"):
        assert f"    file: {ROOT / 'plugins' / name}.py\n" in listing.stdout
    rows = json.loads(invoke("plugins", "--json").stdout)
    paths = {row["name"]: row["path"] for row in rows}
    assert paths["models"] == str(ROOT / "plugins" / "models.py")
    assert all(row["path"] for row in rows if not row["broken"])


def test_local_plugins_by_file_and_by_module_load_for_every_command(
    local, invoke, monkeypatch, tmp_path
):
    """``--plugins`` (repeated or comma-separated) and ``LOTTERY_PLUGINS``: nothing installed.
    The option sets the variable for the process, files made absolute, so that Ray's workers
    (which inherit the environment, whatever their folder) load the same plugins."""
    (local / "local_largest.py").write_text(LARGEST.replace("NAME", "largest"))
    (local / "local_other.py").write_text(LARGEST.replace("NAME", "other"))
    modules = local / "modules"
    modules.mkdir()
    (modules / "local_mod.py").write_text(LARGEST.replace("NAME", "from_module"))
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.setenv("LOTTERY_PLUGINS", "local_mod")
    listing = invoke("--plugins", "local_largest.py", "--plugins", "local_mod,./local_other.py",
                     "plugins")  # fmt: skip
    assert listing.returncode == 0 and listing.stderr == "", listing.stderr
    file = (tmp_path / "local_largest.py").resolve()
    other = (tmp_path / "local_other.py").resolve()
    assert os.environ["LOTTERY_PLUGINS"] == f"local_mod,{file},{other}"
    assert (f"local_largest  (local file {file}; module local_largest)\n    file: {file}\n"
            "    registers pruning strategy largest\n") in listing.stdout  # fmt: skip
    assert (f"local_mod  (local module local_mod; module local_mod)\n    file: "
            f"{(modules / 'local_mod.py').resolve()}\n") in listing.stdout  # fmt: skip
    assert "registers pruning strategy other" in listing.stdout
    rows = {row["name"]: row for row in json.loads(invoke("plugins", "--json").stdout)}
    assert rows["local_largest"]["origin"] == f"local file {file}"
    assert rows["local_largest"]["path"] == str(file)
    assert rows["local_mod"]["origin"] == "local module local_mod"
    assert "largest" in invoke("run", "--help").stdout
    ran = invoke("run", *SMALL, "--rounds", "2", "--prune", "from_module", "--out", "run")
    assert ran.returncode == 0, ran.stderr
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["plugins"]["prune"] == "local_mod"


def test_a_local_plugin_that_cannot_load_is_one_warning_not_a_crash(local, invoke, tmp_path):
    (local / "local_broken.py").write_text("raise RuntimeError('half-written')\n")
    (local / "models.py").write_text(LARGEST.replace("NAME", "clash"))
    listing = invoke("--plugins", "local_broken.py,local_nowhere,local_missing.py,models.py",
                     "plugins")  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    broken, missing, models = (tmp_path / n for n in ("local_broken.py", "local_missing.py",
                                                      "models.py"))  # fmt: skip
    warnings = listing.stderr.splitlines()
    assert warnings[:3] == [
        "Warning: plugin 'local_broken' is skipped: import failed: RuntimeError: half-written",
        "Warning: plugin 'local_nowhere' is skipped: import failed: ModuleNotFoundError: No "
        "module named 'local_nowhere' (a file is given by its path: local_nowhere.py)",
        f"Warning: plugin 'local_missing' is skipped: no such file: {missing.resolve()}",
    ]
    assert len(warnings) == 4 and warnings[3].startswith(
        f"Warning: plugin 'local file {models.resolve()}' is skipped: its plugin name 'models' "
        "is another plugin's ("
    )
    assert (f"local_broken  (local file {broken.resolve()}) BROKEN: import failed: RuntimeError: "
            "half-written") in listing.stdout  # fmt: skip
    assert "local_broken" not in sys.modules and "clash" not in listing.stdout
    assert "registers model lenet_fc" in listing.stdout  # the built-in 'models' is untouched
    assert invoke("run", "--help").returncode == 0


def test_lottery_plugins_from_the_real_program(tmp_path, cli_env):
    (tmp_path / "local_x.py").write_text(LARGEST.replace("NAME", "largest"))
    env = dict(cli_env, LOTTERY_PLUGINS="local_x.py")
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "plugins"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = (tmp_path / "local_x.py").resolve()
    assert f"local_x  (local file {path}; module local_x)" in done.stdout


@pytest.mark.slow
def test_a_local_plugin_reaches_the_ray_workers(tmp_path, cli_env):
    """``--plugins FILE`` with ``run --workers``: the workers, other processes in other folders,
    load it too (each records its process id when it imports the file)."""
    (tmp_path / "local_ray.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(__file__).with_name(f'loaded.{os.getpid()}').touch()\n"
        + LARGEST.replace("NAME", "largest")
    )
    done = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "--plugins", "local_ray.py", "run", *SMALL,
         "--rounds", "2", "--prune", "largest", "--trials", "2", "--workers", "2", "--out", "g"],
        cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = done.communicate(timeout=1800)
    assert done.returncode == 0, err
    assert (tmp_path / "g" / "results.csv").is_file()
    pids = {int(p.suffix[1:]) for p in tmp_path.glob("loaded.*")}
    assert done.pid in pids and pids - {done.pid}, pids  # the driver and at least one worker
