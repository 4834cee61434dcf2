"""The third-party package in ``examples/lottery_examples``, installed for real by pip.

Every strategy runs through the CLI at init and under IMP (all runs in one subprocess, so
torch is imported once), and the scores are checked in process against what each method
promises: finite, of the weight's shape, SynFlow's conservation of flow, GraSP's sign.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from lottery_core import make_config
from lottery_core.export import ticket_from_run
from lottery_core.specs import PruningContext, glorot_init

from .conftest import ROOT

PACKAGE = ROOT / "examples" / "lottery_examples"
BUDGET = ["--dataset", "mnist-sample", "--rounds", "3", "--iterations", "50",
          "--eval-every", "50", "--quiet", "--threads", "1"]  # fmt: skip
STRATEGIES = ["snip", "grasp", "synflow", "movement", "neuron"]
RUNS = {
    **{f"{s}-imp": ["--prune", s] for s in STRATEGIES},
    **{f"{s}-init": ["--prune", s, "--prune-at", "init"] for s in STRATEGIES},
    "synflow-init": ["--prune", "synflow", "--prune-at", "init", "--init-steps", "10"],
    "magnitude-init": ["--prune", "magnitude", "--prune-at", "init"],
}
UNSTRUCTURED = ["snip-imp", "grasp-imp", "synflow-imp", "movement-imp", "magnitude-init",
                "snip-init", "grasp-init", "synflow-init"]  # fmt: skip

# Every CLI command of a {name: argv} dict in one interpreter (torch imported once):
# {name: {"code": exit code, "stdout": text, "stderr": text}}.
DRIVER = """
import contextlib, io, json, sys
from lottery_core import cli
commands, results = json.loads(sys.argv[1]), {}
for name, argv in commands.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    results[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The package installed by pip into a private site folder, from a clean copy of its source
    (so no stale ``build/`` or ``*.egg-info`` is left in, or taken from, the checkout)."""
    source = tmp_path_factory.mktemp("src") / "lottery_examples"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                   "__pycache__"))  # fmt: skip
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=1800,  # a hang guard
    )  # fmt: skip
    entry_points = list(target.glob("lottery_examples-*.dist-info/entry_points.txt"))
    assert entry_points and "[lottery]" in entry_points[0].read_text()
    return target


@pytest.fixture(scope="module")
def runs(site, tmp_path_factory) -> dict[str, dict]:
    """``cli.py plugins`` and every entry of RUNS through ``lottery_core.cli.main``, with the
    package importable; each result has its exit code, output and run folder."""
    work = tmp_path_factory.mktemp("runs")
    argvs = {name: ["run", *args, *BUDGET, "--out", str(work / name)] for name, args in
             RUNS.items()}  # fmt: skip
    argvs["plugins"] = ["plugins"]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{site}")
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(argvs)],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800,  # a hang guard
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, result in results.items():
        result["dir"] = work / name
    return results


@functools.cache
def _all_masks(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    rounds = pd.read_csv(run_dir / "results.csv")["round"]
    return {int(r): ticket_from_run(run_dir, int(r))["masks"] for r in rounds}


def masks_of(run: dict, round_index: int) -> dict[str, torch.Tensor]:
    """The masks round ``round_index`` trained with, from the run's checkpoint."""
    return _all_masks(run["dir"])[round_index]


def layer_pct(run: dict) -> dict[tuple[int, str], float]:
    layers = pd.read_csv(run["dir"] / "layers.csv", dtype={"layer": str})
    return {(r.round, r.layer): round(r.remaining_pct, 1) for r in layers.itertuples()}


@pytest.mark.slow
def test_installed_package_registers_every_strategy(runs):
    listing = runs["plugins"]
    assert listing["code"] == 0, listing["stderr"]
    assert "lottery-examples 0.1.0" in listing["stdout"]
    for name in STRATEGIES:
        assert f"registers pruning strategy {name}" in listing["stdout"]


@pytest.mark.slow
def test_every_strategy_runs_at_init_and_under_imp(runs):
    for name in RUNS:
        if name == "movement-init":
            continue
        run = runs[name]
        assert run["code"] == 0, f"{name}: {run['stderr']}"
        results = pd.read_csv(run["dir"] / "results.csv")
        assert list(results["round"]) == [0, 1, 2], name
        config = json.loads((run["dir"] / "config.json").read_text())["config"]
        assert config["prune"] == RUNS[name][1]
        assert config["prune_at"] == ("init" if name.endswith("init") else "imp")
    synflow = json.loads((runs["synflow-init"]["dir"] / "config.json").read_text())
    assert synflow["config"]["init_steps"] == 10


@pytest.mark.slow
def test_unstructured_strategies_follow_the_schedule(runs):
    """fc layers lose 20% a round, the output layer 10%: 100, 80.0, 64.1 remaining overall."""
    for name in UNSTRUCTURED:
        run = runs[name]
        results = pd.read_csv(run["dir"] / "results.csv")
        assert [round(x, 1) for x in results["remaining"]] == [100.0, 80.0, 64.1], name
        pct = layer_pct(run)
        assert [pct[1, "1"], pct[1, "3"], pct[1, "5"]] == [80.0, 80.0, 90.0], name
        assert [pct[2, "1"], pct[2, "3"], pct[2, "5"]] == [64.0, 64.0, 81.0], name


@pytest.mark.slow
def test_masks_under_imp_only_lose_ones(runs):
    for name in [n for n in RUNS if n.endswith("imp")]:
        masks = [masks_of(runs[name], r) for r in range(3)]
        for earlier, later in zip(masks, masks[1:], strict=False):
            for layer, mask in later.items():
                assert not (mask & ~earlier[layer]).any(), f"{name} layer {layer}"
            assert sum(int(m.sum()) for m in later.values()) < sum(
                int(m.sum()) for m in earlier.values()
            ), name


@pytest.mark.slow
def test_neuron_removes_whole_rows_of_hidden_fc_layers_only(runs):
    for name in ["neuron-imp", "neuron-init"]:
        run = runs[name]
        ticket = torch.load(run["dir"] / "ticket.pt", weights_only=True)
        assert ticket["round"] == 2
        for masks in [ticket["masks"], masks_of(run, 1), masks_of(run, 2)]:
            for layer in ("1", "3"):
                rows = masks[layer].bool()
                assert (rows.all(dim=1) | ~rows.any(dim=1)).all(), f"{name} layer {layer}"
            assert masks["5"].all(), f"{name}: the output layer was pruned"
        pct = layer_pct(run)
        assert [pct[2, "1"], pct[2, "3"], pct[2, "5"]] == [64.0, 64.0, 100.0], name
        # Whole neurons: 300 -> 240 -> 192.
        assert [int(masks_of(run, r)["1"].all(dim=1).sum()) for r in (1, 2)] == [240, 192], name


@pytest.mark.slow
def test_data_dependent_strategies_at_init_choose_their_own_masks(runs):
    """At θ0, SNIP, GraSP and SynFlow each keep the same counts as magnitude but other weights."""
    magnitude = masks_of(runs["magnitude-init"], 1)
    chosen = {}
    for strategy in ("snip", "grasp", "synflow"):
        masks = masks_of(runs[f"{strategy}-init"], 1)
        for layer, mask in masks.items():
            assert int(mask.sum()) == int(magnitude[layer].sum())
        differs = (masks["1"] != magnitude["1"]).float().mean().item()
        assert differs > 0.01, f"{strategy} at init is magnitude in disguise ({differs:.3%})"
        chosen[strategy] = masks["1"]
    assert not torch.equal(chosen["snip"], chosen["grasp"])
    assert not torch.equal(chosen["snip"], chosen["synflow"])


@pytest.mark.slow
def test_movement_at_init_stops_with_one_line_and_keeps_round_zero(runs):
    run = runs["movement-init"]
    assert run["code"] == 2
    lines = run["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: pruning strategy 'movement'")
    assert "--prune-at imp" in lines[0]
    assert list(pd.read_csv(run["dir"] / "results.csv")["round"]) == [0]


# -- the scores themselves, in process ------------------------------------------------------


@pytest.fixture(scope="module")
def examples(site) -> ModuleType:
    """``lottery_examples`` imported from the pip-installed copy, without putting the site
    folder on ``sys.path`` (so other tests' plugin discovery never sees it)."""
    folder = site / "lottery_examples"

    def imported() -> dict[str, ModuleType]:
        return {n: m for n, m in sys.modules.items() if n.split(".")[0] == "lottery_examples"}

    # A copy the user installed (examples/README.md: pip install -e ...) may be imported
    # already: set it aside, or its submodules would stand in for this copy's.
    before = imported()
    for name in before:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        "lottery_examples", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lottery_examples"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in imported():
            del sys.modules[name]
        sys.modules.update(before)


def context(plugins, data, model_name: str, prune_fraction: float = 0.0) -> PruningContext:
    """A ``PruningContext`` over a fresh Glorot-initialised model, as the core builds one;
    ``prune_fraction`` of each layer's weights is already pruned (at random)."""
    model = plugins.models.get(model_name).build(tuple(data.input_shape), data.num_classes)
    generator = torch.Generator().manual_seed(0)
    glorot_init(model, generator)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    for module in layers.values():
        prune.identity(module, "weight")
        with torch.no_grad():
            module.weight_mask.copy_(
                torch.rand(module.weight_mask.shape, generator=generator) >= prune_fraction
            )
    names = list(layers)
    kinds = {n: "conv" if isinstance(m, nn.Conv2d) else "fc" for n, m in layers.items()}
    kinds[[n for n in names if kinds[n] == "fc"][-1]] = "output"
    weights = {n: (m.weight_orig * m.weight_mask).detach().clone() for n, m in layers.items()}

    def batches(count):
        for i in range(count):
            rows = slice(60 * i, 60 * (i + 1))
            yield data.images(data.train_x[rows]), data.train_y[rows]

    return PruningContext(
        model=model, masks={n: m.weight_mask.clone() for n, m in layers.items()},
        weights=weights, initial=weights, rewind=weights, round_index=1, step=0, steps=1,
        config=make_config(dataset="mnist-sample", model=model_name), scope="layerwise",
        rates={n: 0.2 for n in names}, kinds=kinds, generator=generator, batches=batches,
        loss=F.cross_entropy, device=torch.device("cpu"),
    )  # fmt: skip


@pytest.mark.parametrize("model_name", ["lenet_fc", "lenet_conv"])
def test_scores_are_finite_shaped_and_zero_where_pruned(examples, plugins, sample_data,
                                                        model_name, monkeypatch):  # fmt: skip
    monkeypatch.setattr(examples.scores, "SNIP_BATCHES", 2)  # speed; they read it per call
    monkeypatch.setattr(examples.scores, "GRASP_BATCHES", 2)
    ctx = context(plugins, sample_data, model_name, prune_fraction=0.3)
    ctx.weights = {n: w * 1.1 for n, w in ctx.weights.items()}  # as if trained: movement works
    for strategy in (examples.snip_scores, examples.grasp_scores, examples.synflow_scores,
                     examples.movement_scores):  # fmt: skip
        scores = strategy(ctx)
        assert set(scores) == set(ctx.masks)
        for name, score in scores.items():
            assert score.shape == ctx.masks[name].shape
            assert torch.isfinite(score).all(), f"{strategy.__name__} {name}"
            assert score[ctx.masks[name] > 0].abs().sum() > 0, f"{strategy.__name__} {name}"
            if strategy is not examples.movement_scores:  # gradients through the mask
                assert (score[ctx.masks[name] == 0] == 0).all(), f"{strategy.__name__} {name}"
    for name, parameter in ctx.model.named_parameters():
        assert parameter.dtype == torch.float32 and parameter.grad is None, name


@pytest.mark.parametrize("model_name", ["lenet_fc", "lenet_conv"])
def test_synflow_conserves_the_flow_in_every_layer(examples, plugins, sample_data, model_name):
    """Tanaka et al.'s conservation: with zero biases (θ0), the scores of each layer sum to R,
    the same total in every layer (ReLU and max-pooling are positively homogeneous)."""
    ctx = context(plugins, sample_data, model_name)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    sums = [float(s.sum()) for s in examples.synflow_scores(ctx).values()]
    assert max(sums) == pytest.approx(min(sums), rel=1e-9) and min(sums) > 0
    after = ctx.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the live model is untouched


def test_grasp_prunes_the_weights_whose_removal_raises_gradient_flow(examples, plugins,
                                                                     sample_data):  # fmt: skip
    """The sign: pruning GraSP's lowest scores (as the core does) keeps or raises the gradient
    norm; pruning its highest ones (the opposite sign convention) collapses it."""
    ctx = context(plugins, sample_data, "lenet_fc")
    scores = examples.grasp_scores(ctx)
    modules = dict(ctx.model.named_modules())

    def gradient_norm(masks):
        with torch.no_grad():
            for name, mask in masks.items():
                modules[name].weight_mask.copy_(mask)
        weights = [modules[name].weight_orig for name in masks]
        total = [torch.zeros_like(w) for w in weights]
        for x, y in ctx.batches(examples.scores.GRASP_BATCHES):
            loss = ctx.loss(ctx.model(x) / examples.scores.GRASP_TEMPERATURE, y)
            for acc, grad in zip(total, torch.autograd.grad(loss, weights), strict=True):
                acc += grad
        return sum(float((g * g).sum()) for g in total)

    def without(fraction, largest):
        masks = {}
        for name, score in scores.items():
            flat = torch.ones(score.numel())
            flat[torch.topk(score.flatten(), int(fraction * score.numel()), largest=largest)[1]] = 0
            masks[name] = flat.view_as(score)
        return masks

    dense = gradient_norm({name: torch.ones_like(s) for name, s in scores.items()})
    assert gradient_norm(without(0.2, largest=False)) > dense > gradient_norm(without(0.2, True))


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_neuron_masks_leave_conv_and_output_layers_alone(examples, plugins, sample_data, scope):
    ctx = context(plugins, sample_data, "lenet_conv")
    if scope == "global":  # one fraction for the whole network, keyed "*"
        ctx.scope, ctx.rates = "global", {"*": 0.3}
    masks = examples.neuron_masks(ctx)
    for name, mask in masks.items():
        if ctx.kinds[name] != "fc":
            assert torch.equal(mask, ctx.masks[name]), name
        else:
            alive_rows = mask.bool().all(dim=1)
            assert (alive_rows | ~mask.bool().any(dim=1)).all()
            rate = 0.3 if scope == "global" else 0.2
            assert int(alive_rows.sum()) == mask.shape[0] - round(rate * mask.shape[0])
            norms = ctx.weights[name].norm(dim=1)
            assert norms[alive_rows].min() >= norms[~alive_rows].max()  # the weakest went
