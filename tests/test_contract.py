"""The plugin contract: contexts, pruning at init, and a guard for every plugin output.

Plugins here are real pluggy plugins, loaded through a real ``lottery`` entry point (a package
folder with its dist-info written to a temporary ``sys.path`` entry), so the CLI sees them as a
user's installed package; each mistake must be one ``Error:`` line naming the plugin, exit 2,
with every finished round kept.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from lottery_core import paths
from lottery_core.errors import PluginError

SMALL = ["--dataset", "mnist-sample", "--iterations", "50", "--eval-every", "50", "--quiet",
         "--threads", "1"]  # fmt: skip

HEADER = """
import torch
from torch import nn
from lottery_core import (DatasetSpec, DatasetSplits, LotteryError, ModelSpec, PruningStrategy,
                          ReinitPolicy, hookimpl)
"""


@pytest.fixture
def install(entry_point_package):
    """``install(name, source)``: a package whose module ``contract_<name>`` is ``source``
    (after ``HEADER``), found through a real ``lottery`` entry point; the process-wide plugins
    are reloaded with it."""

    def make(name: str, source: str) -> None:
        entry_point_package(name, f"contract_{name}", HEADER + textwrap.dedent(source))

    return make


def assert_plugin_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def finished_rounds(path) -> list[int]:
    return list(pd.read_csv(path / "results.csv")["round"])


BAD_SCORES = {
    "nan": "{n: torch.full_like(w, float('nan')) for n, w in ctx.weights.items()}",
    "transposed": "{n: w.abs().t() if w.dim() == 2 else w for n, w in ctx.weights.items()}",
    "zero_d": "{n: torch.tensor(1.0) for n in ctx.weights}",
    "missing": "{n: w.abs() for n, w in list(ctx.weights.items())[1:]}",
    "listed": "[w.abs() for w in ctx.weights.values()]",
    "bool": "{n: w.abs() > w.abs().median() for n, w in ctx.weights.items()}",
}


@pytest.mark.parametrize(
    "kind, fragments",
    [
        ("nan", ["not all finite"]),
        ("transposed", ["has shape (784, 300)", "(300, 784)"]),
        ("zero_d", ["has shape ()"]),
        ("missing", ["missing layers ['1']"]),
        ("listed", ["returned list scores"]),
        ("bool", ["scores of layer 1 are bool", "masks= instead"]),
    ],
)
def test_bad_scores_are_one_line_and_round_0_is_kept(install, invoke, tmp_path, kind, fragments):
    install("bad", f"""
        def scores(ctx):
            return {BAD_SCORES[kind]}

        @hookimpl
        def register_pruning_strategies(register):
            register(PruningStrategy("bad", scores))
    """)
    result = invoke("run", *SMALL, "--rounds", "2", "--prune", "bad", "--out", "run")
    assert_plugin_error(result, "pruning strategy 'bad' (plugin 'bad')", *fragments)
    assert finished_rounds(tmp_path / "run") == [0]  # the trained round survives


def test_a_strategy_that_raises_is_named_and_resume_continues_once_fixed(install, invoke, tmp_path):
    install("flaky", """
        import os

        def scores(ctx):
            if os.environ.get("FLAKY_BROKEN"):
                raise ValueError("boom")
            return {n: w.abs() for n, w in ctx.weights.items()}

        @hookimpl
        def register_pruning_strategies(register):
            register(PruningStrategy("flaky", scores))
    """)
    import os

    os.environ["FLAKY_BROKEN"] = "1"
    try:
        result = invoke("run", *SMALL, "--rounds", "3", "--prune", "flaky", "--out", "run")
    finally:
        del os.environ["FLAKY_BROKEN"]
    assert_plugin_error(result, "'flaky' (plugin 'flaky') failed scoring: ValueError: boom")
    assert invoke("run", "--resume", "run", "--quiet").returncode == 0
    assert finished_rounds(tmp_path / "run") == [0, 1, 2]
    whole = invoke("run", *SMALL, "--rounds", "3", "--prune", "flaky", "--out", "whole")
    assert whole.returncode == 0
    cols = ["round", "remaining", "ES", "val", "test"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "results.csv")[cols],
                                  pd.read_csv(tmp_path / "whole" / "results.csv")[cols])


@pytest.mark.parametrize(
    "body, fragments",
    [
        ("return {n: p.clone() for n, p in ctx.parameters.items()}", ["returned a dict"]),
        ("ctx.parameters[next(iter(ctx.parameters))] = torch.zeros(1)", ["rebound"]),
        ("next(iter(ctx.parameters.values())).fill_(float('nan'))", ["non-finite"]),
        ("raise LotteryError('cannot reinitialise this model')", ["cannot reinitialise"]),
    ],
)
def test_bad_reinit_policies_are_one_line(install, invoke, tmp_path, body, fragments):
    install("policy", f"""
        @torch.no_grad()
        def apply(ctx):
            {body}

        @hookimpl
        def register_reinit_policies(register):
            register(ReinitPolicy("odd", apply))
    """)
    result = invoke("run", *SMALL, "--rounds", "2", "--reinit", "odd", "--out", "run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert finished_rounds(tmp_path / "run") == [0]


@pytest.mark.parametrize(
    "body, fragments",
    [
        ("p.data = p.data.double()", ["'1.bias'].data to torch.float64 (300,)", "torch.float32"]),
        ("p.data = torch.cat([p.data, p.data])", ["'1.bias'].data to torch.float32 (600,)",
                                                  "is torch.float32 (300,)"]),
    ],
)
def test_a_policy_rebinding_data_to_another_dtype_or_shape_is_one_line(install, invoke, tmp_path,
                                                                        body, fragments):
    """``p.data = ...`` on a handed tensor used to be lost silently (exit 0, the results of
    ``none``): now a value the parameter cannot hold names the policy."""
    install("rebind", f"""
        def apply(ctx):
            for name, p in ctx.parameters.items():
                {body}

        @hookimpl
        def register_reinit_policies(register):
            register(ReinitPolicy("rebind", apply))
    """)
    result = invoke("run", *SMALL, "--rounds", "2", "--reinit", "rebind", "--out", "run")
    assert_plugin_error(result, "reinit policy 'rebind' (plugin 'rebind') set ctx.parameters[",
                        *fragments)
    assert finished_rounds(tmp_path / "run") == [0]


def test_a_policy_assigning_data_of_the_same_shape_takes_effect(install, invoke, tmp_path):
    """``p.data = theta_k`` is the researcher's "start from theta_k": the same results as
    ``rewind`` (and the rewind state is copied, not aliased, so training does not move it)."""
    install("assign", """
        def apply(ctx):
            for name, p in ctx.parameters.items():
                p.data = ctx.rewind_state[name]

        @hookimpl
        def register_reinit_policies(register):
            register(ReinitPolicy("assign", apply))
    """)
    cols = ["round", "remaining", "ES", "val", "test", "final_test", "val_loss", "weights"]
    frames = {}
    for policy in ("assign", "rewind", "none"):
        result = invoke("run", *SMALL, "--rounds", "3", "--reinit", policy, "--out", policy)
        assert result.returncode == 0, result.stderr
        frames[policy] = pd.read_csv(tmp_path / policy / "results.csv")[cols]
    pd.testing.assert_frame_equal(frames["assign"], frames["rewind"])
    assert not frames["none"].equals(frames["rewind"])  # the test tells the two apart


def test_a_policy_claiming_to_rewind_is_held_to_it(install, invoke):
    install("liar", """
        @torch.no_grad()
        def apply(ctx):
            for name, tensor in ctx.parameters.items():
                tensor.copy_(ctx.rewind_state[name] * 1.5)

        @hookimpl
        def register_reinit_policies(register):
            register(ReinitPolicy("liar", apply, rewinds=True))
    """)
    result = invoke("run", *SMALL, "--rounds", "2", "--reinit", "liar", "--out", "run")
    assert_plugin_error(result, "reinit policy 'liar' (plugin 'liar') declares rewinds=True")


def test_the_reinit_context_holds_masks_theta0_theta_k_and_kinds(install, invoke, tmp_path):
    install("probe", """
        seen = []

        @torch.no_grad()
        def apply(ctx):
            seen.append(ctx)
            for name, tensor in ctx.parameters.items():
                tensor.copy_(ctx.rewind_state[name])

        @hookimpl
        def register_reinit_policies(register):
            register(ReinitPolicy("probe", apply))
    """)
    result = invoke("run", *SMALL, "--iterations", "100", "--rounds", "2", "--reinit", "probe",
                    "--rewind-iter", "50", "--out", "run")
    assert result.returncode == 0, result.stderr
    (ctx,) = sys.modules["contract_probe"].seen
    assert ctx.kinds == {"1": "fc", "3": "fc", "5": "output"}
    assert set(ctx.masks) == {"1", "3", "5"} and int(ctx.masks["1"].sum()) == round(0.8 * 235_200)
    assert not torch.equal(ctx.initial_state["1.weight_orig"], ctx.rewind_state["1.weight_orig"])


def test_masks_returned_by_a_strategy_are_checked(install, invoke, tmp_path):
    install("structured", """
        import os

        def masks(ctx):
            kind = os.environ.get("MASK_KIND", "rows")
            out = {n: m.clone() for n, m in ctx.masks.items()}
            if kind == "half":
                out["1"][:] = 0.5
            elif kind == "revive" and ctx.round_index == 2:
                out["1"][:] = 1  # brings round 1's pruned rows back
            else:
                out["1"][:30] = 0  # the first 30 of the first layer's 300 neurons
            return out

        @hookimpl
        def register_pruning_strategies(register):
            register(PruningStrategy("rows", masks=masks))
    """)
    import os

    ok = invoke("run", *SMALL, "--rounds", "3", "--prune", "rows", "--out", "ok")
    assert ok.returncode == 0, ok.stderr
    layers = pd.read_csv(tmp_path / "ok" / "layers.csv")
    first = layers[layers["layer"].astype(str) == "1"]["remaining"].tolist()
    assert first == [235_200, 235_200 - 30 * 784, 235_200 - 30 * 784]  # own sparsity, nested
    for kind, fragment in (("half", "not binary"), ("revive", "revives pruned weights")):
        os.environ["MASK_KIND"] = kind
        try:
            result = invoke("run", *SMALL, "--rounds", "3", "--prune", "rows", "--out", kind)
        finally:
            del os.environ["MASK_KIND"]
        assert_plugin_error(result, "pruning strategy 'rows'", fragment)


def test_a_hook_that_resets_the_masks_is_caught(install, invoke, tmp_path):
    install("reset", """
        @hookimpl
        def on_round_end(round_index, record, model):
            if round_index == 1:
                for module in model.modules():
                    if hasattr(module, "weight_mask"):
                        module.weight_mask.fill_(1)
    """)
    result = invoke("run", *SMALL, "--rounds", "3", "--out", "run")
    assert_plugin_error(result, "changed while round 1 trained", "weight_mask")
    assert finished_rounds(tmp_path / "run") == [0]


def test_masks_that_regain_a_one_between_rounds_are_caught(plugins, sample_data):
    """Whoever changed them: the masks are compared with the previous round's recorded ones."""
    from lottery_core.config import make_config
    from lottery_core.experiment import Experiment
    from lottery_core.progress import Progress

    from .conftest import TINY

    exp = Experiment(make_config(**TINY, rounds=3, threads=1), plugins=plugins, data=sample_data)
    state = exp.start()
    with Progress(0, enabled=False) as bar:
        exp.train(state, 0, bar)
        exp.prune(state, 1)
        exp.train(state, 1, bar)
        exp.layers[0].mask.fill_(1)  # e.g. a plugin writing weight_mask between rounds
        with pytest.raises(PluginError, match="layer 1 regained a one between rounds 1 and 2"):
            exp.train(state, 2, bar)


def test_a_hook_that_changes_masks_while_training_is_caught(install, invoke):
    install("meddle", """
        training = []

        @hookimpl
        def on_round_start(round_index, remaining, model):
            training[:] = [model]

        @hookimpl
        def on_evaluation(round_index, iteration, metrics):
            for module in training[0].modules():  # a mask of the model being trained
                if hasattr(module, "weight_mask"):
                    module.weight_mask.zero_()
                    break
    """)
    result = invoke("run", *SMALL, "--rounds", "1", "--out", "run")
    assert_plugin_error(result, "changed while round 0 trained")


@pytest.mark.parametrize(
    "hook, write, changed",
    [
        ("on_round_start(round_index, model)", "model[1].weight_mask.zero_()",
         "as round 1 started (1.weight_mask was written)"),
        ("on_evaluation(round_index, iteration)", "seen[0][1].weight_orig.mul_(0.5)",
         "while round 1 trained (1.weight_orig was written)"),
        ("on_round_end(round_index, model)", "model[1].bias.add_(1.0)",
         "while round 1 trained (1.bias was written)"),
    ],
)  # fmt: skip
def test_a_hook_that_changes_masks_or_weights_is_named(install, invoke, tmp_path, hook, write,
                                                       changed):
    """Masks written by a hook used to be caught without naming the plugin, and surviving
    weights or biases not at all (exit 0, wrong accuracy): each hook call is now compared."""
    install("reader", """
        @hookimpl
        def on_round_start(round_index, model):
            with torch.no_grad():
                model(torch.zeros(1, 1, 28, 28))  # reading, even a forward, is fine
    """)
    install("meddler", f"""
        seen = []

        @hookimpl
        def on_round_end(model):  # the model an on_evaluation may keep and write
            seen[:] = [model]

        @hookimpl
        def {hook}:
            if round_index == 1:
                with torch.no_grad():
                    {write}
    """)
    result = invoke("run", *SMALL, "--rounds", "3", "--out", "run")
    assert_plugin_error(result, f"plugin 'meddler' in {hook.split('(')[0]}: the model changed "
                        f"{changed}; lifecycle hooks must not change the model")  # fmt: skip
    assert finished_rounds(tmp_path / "run") == [0]


def test_every_lifecycle_call_under_controls_names_its_own_run(install, invoke, tmp_path):
    """The controls start while the main run goes on: each call carries its run's folder, and
    which experiment and trial it is, so an observer never writes into another run's folder."""
    install("where", """
        calls = []

        def note(hook, run_dir, run, at=None):
            calls.append((hook, run_dir, run.run_dir, run.experiment, run.trial, at))

        @hookimpl
        def on_experiment_start(run_dir, run):
            note("start", run_dir, run)

        @hookimpl
        def on_resume(run_dir, run, next_round):
            note("resume", run_dir, run, next_round)

        @hookimpl
        def on_round_start(round_index, run_dir, run):
            note("round_start", run_dir, run, round_index)

        @hookimpl
        def on_evaluation(round_index, run_dir, run):
            note("evaluation", run_dir, run, round_index)

        @hookimpl
        def on_round_end(round_index, record, run_dir, run):
            assert record["round"] == round_index
            note("round_end", run_dir, run, round_index)

        @hookimpl
        def on_experiment_end(run_dir, run):
            note("end", run_dir, run)
    """)
    result = invoke("run", *SMALL, "--rounds", "3", "--trials", "1", "--controls", "--out", "g")
    assert result.returncode == 0, result.stderr
    calls = sys.modules["contract_where"].calls
    trunk = tmp_path / "g" / "runs" / "imp" / "trial_0"

    def folder(experiment: str, at: int | None) -> Path:
        if experiment == "imp":
            return trunk
        return paths.branch_dir(paths.branch_set(trunk, experiment, {}, 0), at, 0)

    by_run: dict = {}
    for hook, run_dir, info_dir, experiment, trial, at in calls:
        key = (experiment, None if experiment == "imp" else Path(run_dir).parent.name)
        by_run.setdefault(key, []).append((hook, at))
        if at is not None and hook != "resume":
            assert run_dir.resolve() == info_dir.resolve() == folder(experiment, at).resolve()
        assert trial == 0
    rounds = [(h, r) for r in (1, 2) for h in ("round_start", "evaluation", "round_end")]
    dense = [("round_start", 0), ("evaluation", 0), ("round_end", 0)]
    assert by_run[("imp", None)] == [("start", None), *dense, *rounds, ("end", None)]
    for control in ("reinit", "random-prune"):  # one run folder per network, one round each
        for r in (1, 2):
            trained = [(h, r) for h in ("round_start", "evaluation", "round_end")]
            assert by_run[(control, f"round_{r}")] == [("start", None), *trained, ("end", None)]
    order = [(hook, experiment, at) for hook, _, _, experiment, _, at in calls]
    # the controls branch off the finished trunk: after its last round
    assert order.index(("round_end", "imp", 2)) < order.index(("round_start", "reinit", 1))


def test_observers_are_named_and_learn_of_a_resume(install, invoke, tmp_path):
    install("observer", """
        import os
        calls = []

        @hookimpl
        def on_round_end(round_index, record, model):
            calls.append(("end", round_index))
            if os.environ.get("OBSERVER_FAILS") and round_index == 1:
                raise RuntimeError("disk of the logger is full")

        @hookimpl
        def on_resume(config, run_dir, next_round):
            calls.append(("resume", next_round))

        @hookimpl
        def on_evaluation(round_index, iteration, metrics):
            return "not a dict" if os.environ.get("OBSERVER_RETURNS") else None
    """)
    import os

    os.environ["OBSERVER_FAILS"] = "1"
    try:
        result = invoke("run", *SMALL, "--rounds", "3", "--out", "run")
    finally:
        del os.environ["OBSERVER_FAILS"]
    assert_plugin_error(result, "plugin 'observer' failed in on_round_end",
                        "RuntimeError: disk of the logger is full")
    assert finished_rounds(tmp_path / "run") == [0]
    calls = sys.modules["contract_observer"].calls
    calls.clear()
    assert invoke("run", "--resume", "run", "--quiet").returncode == 0
    assert calls == [("resume", 1), ("end", 1), ("end", 2)]
    calls.clear()  # a complete run is not resumed: no on_resume for a run that will not train
    assert "already complete" in invoke("run", "--resume", "run").stderr
    assert calls == []
    os.environ["OBSERVER_RETURNS"] = "1"
    try:
        result = invoke("run", *SMALL, "--rounds", "1", "--out", "other")
    finally:
        del os.environ["OBSERVER_RETURNS"]
    assert_plugin_error(result, "returned a str from on_evaluation")


DATASET = """
def load(request):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    {change}
    return DatasetSplits(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:],
                         num_classes=3, source="random 8x8")

@hookimpl
def register_datasets(register):
    register(DatasetSpec("tiny8", load))
"""


@pytest.mark.parametrize(
    "change, fragments",
    [
        ("y = y.float()", ["train_y is torch.float32", "int64"]),
        ("x = (x * 50).clamp(0, 255).to(torch.uint8)", ["train_x is torch.uint8", "floating"]),
        ("y = y + 1", ["labels 1..3, outside 0..2"]),
        ("return None", ["load() returned NoneType"]),
        ("x = x[:, 0]", ["expected N x C x H x W"]),
    ],
)
def test_bad_dataset_splits_are_one_line_and_write_nothing(install, invoke, tmp_path, change,
                                                           fragments):
    install("data", DATASET.format(change=change))
    result = invoke("run", "--dataset", "tiny8", "--iterations", "20", "--eval-every", "10",
                    "--batch-size", "20", "--quiet", "--out", "run")
    assert_plugin_error(result, "dataset 'tiny8' (plugin 'data')", *fragments)
    assert not (tmp_path / "run").exists()


def test_a_model_that_cannot_take_the_input_names_model_and_dataset(install, invoke, tmp_path):
    install("data", DATASET.format(change="pass"))
    result = invoke("run", "--dataset", "tiny8", "--model", "lenet_conv", "--iterations", "20",
                    "--batch-size", "20", "--quiet", "--out", "run")
    assert_plugin_error(result, "model 'lenet_conv'", "dataset 'tiny8'", "(1, 8, 8)")
    assert not (tmp_path / "run").exists()
    ok = invoke("run", "--dataset", "tiny8", "--iterations", "20", "--eval-every", "10",
                "--batch-size", "20", "--rounds", "2", "--quiet", "--out", "ok")
    assert ok.returncode == 0, ok.stderr


def test_a_plugin_that_fails_to_import_or_register_is_skipped(install, invoke, capsys):
    install("noimport", "raise ImportError('needs a package that is not installed')\n")
    install("noregister", """
        @hookimpl
        def register_models(register):
            raise RuntimeError("model zoo unreachable")
    """)
    listing = invoke("plugins")
    assert listing.returncode == 0
    assert "noimport  (contract_noimport 0.1) BROKEN: import failed: ImportError" in listing.stdout
    assert "noregister  (contract_noregister 0.1) BROKEN: register_models raised" in (
        listing.stdout
    )
    warnings = [line for line in listing.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 2
    assert invoke("run", "--help").returncode == 0
    assert invoke("run", *SMALL, "--rounds", "1", "--out", "run").returncode == 0


def test_a_strategy_giving_both_scores_and_masks_is_refused_when_registered(install, invoke,
                                                                            tmp_path):
    """Its masks used to win silently: now the plugin is skipped, naming the strategy."""
    install("both", """
        def scores(ctx):
            return {n: w.abs() for n, w in ctx.weights.items()}

        def masks(ctx):
            return {n: m.clone() for n, m in ctx.masks.items()}

        @hookimpl
        def register_pruning_strategies(register):
            register(PruningStrategy("both", scores, masks=masks))
    """)
    reason = ("register_pruning_strategies: pruning strategy 'both' gives both scores= and "
              "masks=; give exactly one")  # fmt: skip
    listing = invoke("plugins")
    assert listing.returncode == 0, listing.stderr
    assert f"both  (contract_both 0.1) BROKEN: {reason}" in listing.stdout
    assert listing.stderr.startswith(f"Warning: plugin 'both' is skipped: {reason}")
    assert len(listing.stderr.strip().splitlines()) == 1
    result = invoke("run", *SMALL, "--rounds", "2", "--prune", "both", "--out", "run")
    assert result.returncode == 2 and "'both' is not one of" in result.stderr
    assert not (tmp_path / "run").exists()


def test_integer_scores_rank_by_their_value(install, invoke, tmp_path):
    """Integer scores are real numbers: accepted, ranked like the floats they equal."""
    install("ints", """
        def scores(ctx):
            return {n: (w.abs() * 2**20).round().long() for n, w in ctx.weights.items()}

        @hookimpl
        def register_pruning_strategies(register):
            register(PruningStrategy("ints", scores))
    """)
    result = invoke("run", *SMALL, "--rounds", "2", "--prune", "ints", "--out", "ints")
    assert result.returncode == 0, result.stderr
    magnitude = invoke("run", *SMALL, "--rounds", "2", "--out", "magnitude")
    assert magnitude.returncode == 0
    kept = {name: pd.read_csv(tmp_path / name / "layers.csv")["remaining"].tolist()
            for name in ("ints", "magnitude")}  # fmt: skip
    assert kept["ints"] == kept["magnitude"]


def test_a_misspelled_hook_or_a_name_registered_twice_skips_only_that_plugin(install, invoke,
                                                                            tmp_path):
    """One bad package no longer stops every command (``plugins`` and ``--help`` included)."""
    install("typo", """
        @hookimpl
        def register_model(register):
            pass
    """)
    install("twice", """
        def scores(ctx):
            return {n: w.abs() for n, w in ctx.weights.items()}

        @hookimpl
        def register_pruning_strategies(register):
            register(PruningStrategy("dup", scores))
            register(PruningStrategy("dup", scores))
    """)
    install("good", """
        def scores(ctx):
            return {n: -w.abs() for n, w in ctx.weights.items()}

        @hookimpl
        def register_pruning_strategies(register):
            register(PruningStrategy("largest", scores))
    """)
    listing = invoke("plugins")
    assert listing.returncode == 0, listing.stderr
    assert ("typo  (contract_typo 0.1) BROKEN: implements unknown hook 'register_model' (did you "
            "mean 'register_models'?)") in listing.stdout  # fmt: skip
    assert ("twice  (contract_twice 0.1) BROKEN: register_pruning_strategies: registered pruning "
            "strategy 'dup' twice") in listing.stdout  # fmt: skip
    assert "registers pruning strategy largest" in listing.stdout
    warnings = [line for line in listing.stderr.splitlines() if line.strip()]
    assert len(warnings) == 2 and all(line.startswith("Warning: plugin '") for line in warnings)
    help_text = invoke("run", "--help")
    assert help_text.returncode == 0 and "largest" in help_text.stdout
    ok = invoke("run", *SMALL, "--rounds", "2", "--prune", "largest", "--out", "run")
    assert ok.returncode == 0, ok.stderr


def test_pruning_at_init_follows_imps_schedule_from_theta0(invoke, tmp_path):
    import torch as t

    from lottery_core import checkpoint

    result = invoke("run", *SMALL, "--rounds", "3", "--prune-at", "init", "--out", "init")
    assert result.returncode == 0, result.stderr
    imp = invoke("run", *SMALL, "--rounds", "3", "--out", "imp")
    assert imp.returncode == 0
    at_init = pd.read_csv(tmp_path / "init" / "layers.csv")
    after_imp = pd.read_csv(tmp_path / "imp" / "layers.csv")
    assert at_init["remaining"].tolist() == after_imp["remaining"].tolist()  # same sparsities
    body = checkpoint.read(tmp_path / "init")
    theta0 = body["initial_state"]["1.weight_orig"].abs()
    mask = checkpoint.unpack_mask(body["masks"][2]["1"])
    assert theta0[mask].min() >= theta0[~mask].max()  # magnitude at θ0, not of trained weights
    iterative = invoke("run", *SMALL, "--rounds", "3", "--prune-at", "init", "--init-steps", "5",
                       "--out", "iter")
    assert iterative.returncode == 0
    assert pd.read_csv(tmp_path / "iter" / "layers.csv")["remaining"].tolist() == (
        at_init["remaining"].tolist()
    )
    iter_masks = checkpoint.read(tmp_path / "iter")["masks"]
    assert t.equal(mask, checkpoint.unpack_mask(iter_masks[2]["1"]))


def test_a_gradient_strategy_gets_the_same_inputs_on_resume(install, invoke, tmp_path):
    install("snipish", """
        def scores(ctx):
            x, y = next(ctx.batches(1))
            ctx.loss(ctx.model(x), y).backward()
            modules = dict(ctx.model.named_modules())
            return {n: (modules[n].weight_orig.grad * ctx.weights[n]).abs() for n in ctx.weights}

        @hookimpl
        def register_pruning_strategies(register):
            register(PruningStrategy("snipish", scores))
    """)
    args = [*SMALL, "--rounds", "3", "--prune", "snipish"]
    assert invoke("run", *args, "--out", "whole").returncode == 0
    assert invoke("run", *args, "--rounds", "2", "--out", "cut").returncode == 0
    import json

    meta = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert meta["config"]["rounds"] == 2
    with_controls = invoke("run", *args, "--controls", "--out", "group")
    assert with_controls.returncode == 0, with_controls.stderr
    a = pd.read_csv(tmp_path / "whole" / "layers.csv")
    b = pd.read_csv(tmp_path / "group" / "runs" / "imp" / "trial_0" / "layers.csv")
    pd.testing.assert_frame_equal(a, b)


def test_plugin_errors_are_plugin_errors():
    assert issubclass(PluginError, Exception) and PluginError.exit_code == 2


BAD_BRANCHES = {
    "half_mask": ("BranchStart({k: m * 0.5 for k, m in ctx.masks.items()}, dict(ctx.rewind))",
                  "is not binary"),
    "empty_layer": ("BranchStart({k: m * 0 for k, m in ctx.masks.items()}, dict(ctx.rewind))",
                    "keeps no weight"),
    "nan_start": ("BranchStart(dict(ctx.masks), {k: v * float('nan') for k, v in "
                  "ctx.rewind.items()})", "not finite"),
    "model_change": ("BranchStart(dict(ctx.masks), dict(ctx.rewind), {'model': 'lenet_conv'})",
                     "only training settings"),
    "no_start": ("None", "expected BranchStart"),
}


def test_hook_register_branches_from_an_entry_point(install, invoke, tmp_path):
    """A third-party branch kind through a real entry point: listed by ``plugins``, its options
    as flags, its networks trained and recorded; each mistake in what ``start`` returns is one
    line naming the plugin, and no network folder."""
    install("mybranch", """
        from pydantic import BaseModel, ConfigDict, Field
        from lottery_core import BranchKind, BranchStart

        class Options(BaseModel):
            model_config = ConfigDict(extra="forbid")
            keep: float = Field(1.0, gt=0, le=1, description="Share of m_r's survivors kept.")

        def thin(ctx):
            out = {}
            for name, mask in ctx.masks.items():
                alive = mask.flatten().nonzero().flatten()
                keep = alive[torch.randperm(len(alive), generator=ctx.generator)]
                flat = torch.zeros(mask.numel())
                flat[keep[: max(1, int(len(alive) * ctx.options.keep))]] = 1
                out[name] = flat.reshape(mask.shape)
            return BranchStart(out, dict(ctx.rewind))

        @hookimpl
        def register_branches(register):
            register(BranchKind("thin", thin, Options, "a random share of m_r"))
    """)
    trunk = tmp_path / "trunk"
    assert invoke("run", *SMALL, "--rounds", "2", "--out", trunk).returncode == 0
    listing = invoke("plugins")
    assert "registers branch thin" in listing.stdout
    assert "--keep FLOAT" in invoke("branch", "thin", "--help").stdout
    result = invoke("branch", "thin", trunk, "--keep", "0.5", "--quiet")
    assert result.returncode == 0, result.stderr
    kept = pd.read_csv(trunk / "results.csv")["weights"][1]
    (folder,) = (trunk / "branches").glob("thin-*")
    network = pd.read_csv(folder / "round_1" / "trial_0" / "results.csv")
    assert abs(int(network["weights"][0]) - kept / 2) <= 3  # half of m_r, layer by layer
    assert invoke("branch", "thin", trunk, "--keep", "2").returncode == 2
    for name, (body, fragment) in BAD_BRANCHES.items():
        install(f"bad_{name}", f"""
            from lottery_core import BranchKind, BranchStart

            @hookimpl
            def register_branches(register):
                register(BranchKind("{name}", lambda ctx: {body}))
        """)
        result = invoke("branch", name, trunk)
        assert_plugin_error(result, f"bad_{name}", fragment)
        assert not list((trunk / "branches").glob(f"{name}-*")), name
