"""Exported tickets and pruned models, checked against what the run itself recorded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from lottery_core import checkpoint, masks, runs
from lottery_core.config import make_config
from lottery_core.errors import LotteryError
from lottery_core.experiment import Experiment
from lottery_core.export import export_ticket, load_ticket
from lottery_core.plugins import get_plugins
from lottery_core.seeds import derive_seeds

BUDGET = dict(dataset="mnist-sample", rounds=3, iterations=100, eval_every=25, seed=3, threads=1)


def run_into(folder: Path, data, **overrides) -> Path:
    """A real run into ``folder``, on one thread (tiny models only lose time to threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        experiment = Experiment(make_config(**{**BUDGET, **overrides}), data=data)
        runs.start(experiment, folder, progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_data) -> Path:
    return run_into(tmp_path_factory.mktemp("fc") / "run", sample_data)


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory, sample_data) -> Path:
    return run_into(
        tmp_path_factory.mktemp("conv") / "run",
        sample_data,
        model="lenet_conv",
        rounds=2,
        iterations=20,
        eval_every=10,
    )


def mask_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {layer.name: layer.mask.bool() for layer in masks.prunable_layers(model)}


def sample_input(model_run: Path) -> torch.Tensor:
    shape = json.loads((model_run / "config.json").read_text())["input_shape"]
    return torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))


def test_ticket_has_the_masks_round_k_trained_with(run, tmp_path):
    results = pd.read_csv(run / "results.csv").set_index("round")
    layers = pd.read_csv(run / "layers.csv").set_index(["round", "layer"])
    final_model = checkpoint.read(run)["model"]  # the last round trained with the last mask
    kept: dict[int, dict[str, torch.Tensor]] = {}
    for k in (0, 1, 2):
        info = export_ticket(run, k, tmp_path / f"r{k}.pt")
        ticket = load_ticket(tmp_path / f"r{k}.pt")
        kept[k] = mask_of(ticket)
        share = 100.0 * sum(int(m.sum()) for m in kept[k].values()) / info["total"]
        assert share == pytest.approx(results.loc[k, "remaining"], abs=1e-9)
        assert info["remaining"] == pytest.approx(results.loc[k, "remaining"], abs=1e-9)
        for name, mask in kept[k].items():
            assert int(mask.sum()) == layers.loc[(k, int(name)), "remaining"]
        assert info["bytes"] == (tmp_path / f"r{k}.pt").stat().st_size
        assert info["nonzero"] == results.loc[k, "weights"]
    assert all(bool(m.all()) for m in kept[0].values())
    for name in kept[2]:
        assert torch.equal(kept[2][name], final_model[f"{name}.weight_mask"].bool())
        assert not bool((kept[2][name] & ~kept[1][name]).any())  # masks only lose ones
        assert int(kept[2][name].sum()) < int(kept[1][name].sum())


def test_ticket_starts_from_the_initial_weights(run, sample_data, tmp_path):
    export_ticket(run, 2, tmp_path / "t.pt")
    ticket = load_ticket(tmp_path / "t.pt")
    config = make_config(**BUDGET)
    initial = Experiment(config, data=sample_data).fresh_model(derive_seeds(config.seed)["init"])
    original = dict(initial.named_parameters())
    for layer in masks.prunable_layers(ticket):
        survivors = layer.mask.bool()
        start = original[f"{layer.name}.weight"].detach()
        assert torch.equal(layer.weight_orig.detach()[survivors], start[survivors])
        assert bool((layer.module.weight[~survivors] == 0).all())
        assert torch.equal(layer.module.bias.detach(), original[f"{layer.name}.bias"].detach())
    # ready to train: a step moves survivors only, pruned weights stay zero
    before = {
        layer.name: layer.module.weight.detach().clone() for layer in masks.prunable_layers(ticket)
    }
    optimizer = torch.optim.SGD(ticket.parameters(), lr=0.1)
    ticket(sample_input(run)).sum().backward()
    optimizer.step()
    ticket(sample_input(run))
    for layer in masks.prunable_layers(ticket):
        weight = layer.module.weight.detach()
        assert bool((weight[~layer.mask.bool()] == 0).all())
        assert not torch.equal(weight, before[layer.name])


@pytest.mark.slow
def test_pruned_model_loads_with_plain_torch_and_matches_the_ticket(run, tmp_path):
    info = export_ticket(run, 2, tmp_path / "pruned.pt", pruned=True)
    export_ticket(run, 2, tmp_path / "ticket.pt")
    ticket = load_ticket(tmp_path / "ticket.pt")
    survivors = sum(int(m.sum()) for m in mask_of(ticket).values())
    assert info["nonzero"] == survivors and info["kind"] == "pruned model"
    script = (
        "import json, sys, torch\n"
        f"model = torch.load({str(tmp_path / 'pruned.pt')!r}, weights_only=False)\n"
        "weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear,"
        " torch.nn.Conv2d))]\n"
        "print(json.dumps({'type': type(model).__name__,"
        " 'params': [n for n, _ in model.named_parameters()],"
        " 'nonzero': sum(int(torch.count_nonzero(w)) for w in weights),"
        " 'lottery': sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('lottery_core', 'lottery_plugins', 'plugins', 'cli'))}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["lottery"] == [] and seen["type"] == "Sequential"
    assert not any(name.endswith("_orig") for name in seen["params"])
    assert seen["nonzero"] == survivors
    plain = torch.load(tmp_path / "pruned.pt", weights_only=False)
    x = sample_input(run)
    with torch.no_grad():
        assert torch.equal(plain(x), ticket.eval()(x))


def test_conv_ticket_rebuilds_from_the_recorded_input_shape(conv_run, tmp_path):
    export_ticket(conv_run, 1, tmp_path / "t.pt")
    export_ticket(conv_run, 1, tmp_path / "p.pt", pruned=True)
    ticket = load_ticket(tmp_path / "t.pt")
    assert [layer.kind for layer in masks.prunable_layers(ticket)][:2] == ["conv", "conv"]
    raw = checkpoint.read(conv_run)
    for name, mask in mask_of(ticket).items():
        assert torch.equal(mask, raw["model"][f"{name}.weight_mask"].bool())
    x = sample_input(conv_run)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "p.pt", weights_only=False)(x), ticket.eval()(x))


def test_the_runs_own_ticket_file_loads_into_a_given_model(run, tmp_path):
    export_ticket(run, 2, tmp_path / "t.pt")
    exported = load_ticket(tmp_path / "t.pt").eval()
    fresh = get_plugins().models.get("lenet_fc").build((1, 28, 28), 10)
    own = load_ticket(run / "ticket.pt", model=fresh).eval()
    x = sample_input(run)
    with torch.no_grad():
        assert torch.equal(own(x), exported(x))


def test_unknown_round_lists_the_rounds(run, tmp_path):
    with pytest.raises(LotteryError, match="no round 7; finished rounds: 0, 1, 2"):
        export_ticket(run, 7, tmp_path / "t.pt")
    assert not (tmp_path / "t.pt").exists()


def test_unusable_inputs_are_one_line_errors(run, tmp_path):
    with pytest.raises(LotteryError, match="nowhere"):
        export_ticket(tmp_path / "nowhere", 0, tmp_path / "t.pt")
    (tmp_path / "group" / "runs").mkdir(parents=True)
    with pytest.raises(LotteryError, match="trials/controls folder"):
        export_ticket(tmp_path / "group", 0, tmp_path / "t.pt")
    with pytest.raises(LotteryError, match="is a folder"):
        export_ticket(run, 0, tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a ticket")
    with pytest.raises(LotteryError, match="junk.pt"):
        load_ticket(tmp_path / "junk.pt")
    export_ticket(run, 1, tmp_path / "t.pt")
    with pytest.raises(LotteryError, match="does not fit"):
        load_ticket(tmp_path / "t.pt", model=nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))


def test_a_run_without_recorded_shapes_needs_a_model(run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run, old)
    meta = json.loads((old / "config.json").read_text())
    del meta["input_shape"], meta["num_classes"]
    (old / "config.json").write_text(json.dumps(meta))
    with pytest.raises(LotteryError, match="was changed after"):  # export verifies the pair
        export_ticket(old, 1, tmp_path / "t.pt")
    model_state, state = checkpoint.state_of(checkpoint.read(old))
    checkpoint.save(old / "checkpoint.pt", meta, model_state, state)  # as an older run wrote
    export_ticket(old, 1, tmp_path / "t.pt")
    with pytest.raises(LotteryError, match="input_shape/num_classes.*model="):
        load_ticket(tmp_path / "t.pt")
    model = get_plugins().models.get("lenet_fc").build((1, 28, 28), 10)
    assert load_ticket(tmp_path / "t.pt", model=model) is model
    with pytest.raises(LotteryError, match="input_shape/num_classes"):
        export_ticket(old, 1, tmp_path / "p.pt", pruned=True)


def test_a_fresh_runs_ticket_and_its_exports_rebuild_each_rounds_network(sample_data, tmp_path):
    """export -> load_ticket round trip, and the run's own ticket.pt without ``model=``: the
    loaded network gives the logits the run's network gave when that round started (its mask,
    its starting weights)."""
    from lottery_core.hookspecs import hookimpl
    from lottery_core.plugins import build_manager, collect

    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    logits: dict[int, torch.Tensor] = {}

    class Probe:
        @hookimpl
        def on_round_start(self, round_index, model):
            with torch.no_grad():
                logits[round_index] = model(x).clone()

    plugins = collect(build_manager(load_entrypoints=False, extra=[Probe()]))
    run = tmp_path / "run"
    runs.start(Experiment(make_config(**BUDGET), plugins=plugins, data=sample_data), run,
               progress=False)  # fmt: skip
    assert sorted(logits) == [0, 1, 2]
    own = load_ticket(run / "ticket.pt").eval()  # the last round's ticket, from the file alone
    with torch.no_grad():
        assert torch.equal(own(x), logits[2])
    for k in (0, 1, 2):
        export_ticket(run, k, tmp_path / f"r{k}.pt")
        with torch.no_grad():
            assert torch.equal(load_ticket(tmp_path / f"r{k}.pt").eval()(x), logits[k])
