"""Exported tickets and pruned models, checked against what the run itself recorded."""

from __future__ import annotations

import json
import os
import re
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

from .conftest import run_into

BUDGET = dict(dataset="mnist-sample", rounds=3, iterations=100, eval_every=25, seed=3, threads=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_data) -> Path:
    return run_into(tmp_path_factory.mktemp("fc") / "run", BUDGET, sample_data)


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory, sample_data) -> Path:
    return run_into(
        tmp_path_factory.mktemp("conv") / "run",
        BUDGET,
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


def _first(ticket: dict) -> tuple[str, str]:
    """The first layer of a ticket and its weight's name."""
    layer = sorted(ticket["masks"])[0]
    return layer, f"{layer}.weight_orig"


def _half_mask(t):
    layer, _ = _first(t)
    t["masks"][layer] = t["masks"][layer].float()
    t["masks"][layer].view(-1)[0] = 0.5
    return f"masks['{layer}'] holds 1 value(s) other than 0 and 1 (e.g. 0.5); a mask holds 0 and 1"


def _nan_weight(t, kept: bool):
    layer, weight = _first(t)
    index = int(torch.nonzero(t["masks"][layer].flatten() == kept)[0])
    t["weights"][weight].view(-1)[index] = float("nan")
    return f"weights['{weight}'] holds 1 NaN or infinite value(s)"


def _inf_bias(t):
    layer, _ = _first(t)
    t["weights"][f"{layer}.bias"][:3] = float("inf")
    return f"weights['{layer}.bias'] holds 3 NaN or infinite value(s)"


def _list_masks(t):
    t["masks"] = list(t["masks"].values())
    return "masks must be a table of tensors by layer name (got list)"


def _list_weight(t):
    _, weight = _first(t)
    t["weights"][weight] = t["weights"][weight].tolist()
    return f"weights['{weight}'] is a list, not a tensor"


def _int_bias(t):
    layer, _ = _first(t)
    t["weights"][f"{layer}.bias"] = t["weights"][f"{layer}.bias"].long()
    return f"weights['{layer}.bias'] is torch.int64, not a floating-point tensor"


def _narrow_mask(t):
    layer, _ = _first(t)
    shape = tuple(t["masks"][layer].shape)
    t["masks"][layer] = t["masks"][layer][:, :-1]
    return (f"does not fit this model: layer {layer} has shape {shape}, the mask "
            f"{(shape[0], shape[1] - 1)}")  # fmt: skip


def _narrow_weight(t):
    _, weight = _first(t)
    shape = tuple(t["weights"][weight].shape)
    t["weights"][weight] = t["weights"][weight][:, :-1].clone()
    return (f"does not fit this model: {weight} has shape {shape}, the ticket's "
            f"{(shape[0], shape[1] - 1)}")  # fmt: skip


def _no_weights(t):
    del t["weights"]
    return "is not a lottery ticket"


def _model_number(t):
    t["model"] = 3
    return "model must be a model name (got 3)"


def _text_shape(t):
    t["input_shape"] = [1, "28", 28]
    return "input_shape must be a list of positive sizes (got [1, '28', 28])"


@pytest.mark.parametrize(
    "damage",
    [_half_mask, lambda t: _nan_weight(t, True), lambda t: _nan_weight(t, False), _inf_bias,
     _list_masks, _list_weight, _int_bias, _narrow_mask, _narrow_weight, _no_weights,
     _model_number, _text_shape],
    ids=["mask-0.5", "nan-kept", "nan-pruned", "inf-bias", "masks-list", "weight-list",
         "int-bias", "mask-shape", "weight-shape", "no-weights", "model-number", "input-shape"],
)  # fmt: skip
def test_a_damaged_ticket_is_one_line_naming_the_file_and_the_fault(run, tmp_path, damage):
    """A mask of 0.5 or a NaN weight loaded without a word, a list of masks raised a bare
    RuntimeError: now one line naming the file, and a given model is left as it was."""
    export_ticket(run, 1, tmp_path / "t.pt")
    ticket = torch.load(tmp_path / "t.pt", weights_only=True)
    fault = damage(ticket)
    bad = tmp_path / "bad.pt"
    torch.save(ticket, bad)
    listing = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(LotteryError) as error:
        load_ticket(bad)
    line = str(error.value)
    assert "\n" not in line and line.startswith(f"{str(bad)!r} ") and fault in line, line
    model = get_plugins().models.get("lenet_fc").build((1, 28, 28), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LotteryError, match="^" + re.escape(f"{str(bad)!r}")):
        load_ticket(bad, model=model)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing written
