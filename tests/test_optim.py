"""The training recipe: optimizers and learning-rate schedules as plugins, torch's updates bit
for bit, and step counts in OpenLTH's units (``500it``, ``2ep``)."""

from __future__ import annotations

import bisect
import json
import math

import pytest
import torch

from lottery_core import checkpoint, masks, optim, runs
from lottery_core.config import (
    RECIPE_FIELDS,
    ExperimentConfig,
    ResolvedConfig,
    config_of,
    make_config,
    parse_steps,
)
from lottery_core.errors import LotteryError, PluginError
from lottery_core.experiment import Experiment
from lottery_core.hookspecs import hookimpl
from lottery_core.plugins import build_manager, collect
from lottery_core.resolution import resolve
from lottery_core.specs import OptimizerSpec, ScheduleSpec
from lottery_core.training import Recipe, train_round

from .conftest import TINY, pruned_lenet

PER_EPOCH = 3500 // 60  # the sample's training split at batch 60: 58 whole batches


def warmup_step(it: int) -> float:
    """OpenLTH's warmup x step decay, written out: warmup 20, x0.1 at 80 and 150."""
    return min(1.0, (it + 1) / 20) * 0.1 ** bisect.bisect_right([80, 150], it)


@pytest.mark.parametrize("fused", [True, False])
def test_sgd_with_warmup_and_step_decay_is_torch_sgd_with_lambdalr_bit_for_bit(plugins, fused):
    """lottery_core.optim.SGD (momentum, Nesterov, weight decay) at the rate ``Recipe.factor``
    gives, against torch.optim.SGD driven by LambdaLR, 240 steps on a pruned LeNet."""
    config = resolve(make_config(**{**TINY, "iterations": 240}, optimizer="sgd", lr=0.1,
                                 momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="step",
                                 milestones="80,150", warmup=20), plugins)  # fmt: skip
    recipe = Recipe(plugins.optimizers["sgd"], plugins.schedules["step"], config)
    ours, theirs = pruned_lenet(), pruned_lenet()
    mine = optim.SGD(list(ours.parameters()), 0.1, fused=fused, momentum=0.9, nesterov=True,
                     weight_decay=1e-4)  # fmt: skip
    kind = {"fused": True} if fused else {"foreach": True}
    reference = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=1e-4, **kind)  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, warmup_step)
    generator = torch.Generator().manual_seed(1)
    for it in range(240):
        x = torch.randn(60, 784, generator=generator)
        y = torch.randint(0, 10, (60,), generator=generator)
        for model in (ours, theirs):
            for p in model.parameters():
                p.grad = None
            torch.nn.functional.cross_entropy(model(x), y).backward()
        assert 0.1 * recipe.factor(it) == reference.param_groups[0]["lr"]
        mine.step(0.1 * recipe.factor(it))
        reference.step()
        schedule.step()
        if it in (0, 100, 239):
            for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
                assert torch.equal(a, b), it
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


RECIPES = {
    "adam-default": ({}, torch.optim.Adam, dict(lr=1.2e-3), lambda it: 1.0),
    "sgd-warmup-step": (
        dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
             schedule="step", milestones="1ep,150", gamma=0.5, warmup="30it"),
        torch.optim.SGD,
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        lambda it: min(1.0, (it + 1) / 30) * 0.5 ** bisect.bisect_right([PER_EPOCH, 150], it),
    ),
    "adam-cosine": (
        dict(lr=2e-3, weight_decay=1e-4, schedule="cosine", warmup=25),
        torch.optim.Adam,
        dict(lr=2e-3, weight_decay=1e-4),
        lambda it: min(1.0, (it + 1) / 25) * (0.5 * (1.0 + math.cos(math.pi * it / 240))),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_round_trains_as_torch_optim_with_lambdalr_bit_for_bit(plugins, sample_data, name):
    """``train_round`` with a config's recipe against a bare loop over the same batches with
    torch.optim's optimizer (fused, as the round uses) and LambdaLR: the same bits after 240
    steps, Adam at a constant rate (today's runs) included."""
    changes, optimizer, options, factor = RECIPES[name]
    config = make_config(**{**TINY, "iterations": 240, "eval_every": 120, **changes})
    ours = Experiment(config, plugins=plugins, data=sample_data)
    ours.start()
    pruned = masks.current_masks(ours.layers)  # a pruned network, as later rounds train one
    for mask in pruned.values():
        mask.view(-1)[::3] = 0
    masks.apply_masks(ours.layers, pruned)
    model = ours.model
    assert model is not None
    reference = Experiment(config, plugins=plugins, data=sample_data)
    reference.start()
    assert reference.model is not None
    reference.model.load_state_dict(model.state_dict())
    for layer in reference.layers:
        masks.refresh_weight(layer)
    train_round(model, ours.data, ours.settings(0), data_seed=7)

    theirs = reference.model
    assert options["lr"] == ours.config.lr
    torch_optimizer = optimizer(theirs.parameters(), fused=True, **options)
    schedule = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, factor)
    data = reference.data
    from lottery_core.training import epoch_permutation

    n, iteration = data.train_x.shape[0], 0
    theirs.train()
    while iteration < 240:
        order = epoch_permutation(7, iteration // PER_EPOCH, n, data.train_x.device)
        for step in range(PER_EPOCH):
            index = order[step * 60 : (step + 1) * 60]
            x = data.images(torch.index_select(data.train_x, 0, index))
            loss = torch.nn.functional.cross_entropy(theirs(x), data.train_y[index])
            torch_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch_optimizer.step()
            schedule.step()
            iteration += 1
            if iteration == 240:
                break
    for (key, a), b in zip(model.named_parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b), key


def test_a_default_config_keeps_its_name_and_identity(plugins):
    """The recipe's fields count in a run's folder name and identity only when set: a run
    recorded before they existed is the same run (``hashed_config``)."""
    config = resolve(make_config(**TINY), plugins)
    assert not set(RECIPE_FIELDS) & set(config.identity())
    assert "steps" not in config.identity()
    meta = {"config": config.model_dump(mode="json"), "seeds": {"init": 1}, "plugins": {}}
    old = {**meta, "config": {k: v for k, v in meta["config"].items()
                              if k not in RECIPE_FIELDS and k != "steps"}}  # fmt: skip
    assert checkpoint.run_identity(meta) == checkpoint.run_identity(old)
    for changed in (dict(optimizer="sgd", lr=0.1), dict(warmup=10), dict(weight_decay=1e-4)):
        other = resolve(make_config(**TINY, **changed), plugins)
        assert other.short_hash() != config.short_hash(), changed
        other_meta = {**meta, "config": other.model_dump(mode="json")}
        assert checkpoint.run_identity(other_meta) != checkpoint.run_identity(meta), changed


def test_a_setting_the_chosen_optimizer_or_schedule_does_not_read_is_refused(plugins):
    def error(**changes) -> str:
        with pytest.raises(LotteryError) as caught:
            resolve(make_config(**TINY, **changes), plugins)
        return str(caught.value)

    assert "--momentum does not apply to optimizer 'adam'" in error(momentum=0.9)
    assert "--nesterov does not apply to optimizer 'adam'" in error(nesterov=True)
    assert "--milestones does not apply to schedule 'constant'" in error(milestones="100")
    assert "--gamma does not apply to schedule 'cosine'" in error(schedule="cosine", gamma=0.5)
    assert "needs --lr" in error(optimizer="sgd")
    assert "--nesterov needs a --momentum" in error(optimizer="sgd", lr=0.1, nesterov=True)
    assert "needs --milestones" in error(schedule="step")
    assert "must increase" in error(schedule="step", milestones="100,50")
    assert "not below iterations" in error(schedule="step", milestones="3ep")  # 174 >= 150
    assert "warmup (200) must be at most iterations" in error(warmup=200)
    assert "unknown optimizer 'adamw'; known: adam, sgd" in error(optimizer="adamw")
    assert "unknown schedule 'linear'" in error(schedule="linear")


def test_the_builtins_come_through_the_hooks(plugins):
    assert plugins.optimizers.names() == ["adam", "sgd"]
    assert plugins.schedules.names() == ["constant", "cosine", "step"]
    assert {plugins.optimizers.sources["adam"], plugins.schedules.sources["step"]} == {"optim"}
    assert ExperimentConfig.model_fields["optimizer"].json_schema_extra == {"plugin": "optimizers"}
    assert ExperimentConfig.model_fields["schedule"].json_schema_extra == {"plugin": "schedules"}


# -- steps in units -----------------------------------------------------------------------


def test_steps_parse_as_openlth_writes_them():
    assert parse_steps(500) == 500
    assert parse_steps("500") == 500
    assert parse_steps(" 2EP ") == "2ep"
    assert parse_steps("1ep 500it") == "1ep500it"
    assert parse_steps("500it") == "500it"
    for bad in ("", "ep", "2e", "1.5ep", "500it2ep", "-3", True, 1.5, None):
        with pytest.raises(ValueError):
            parse_steps(bad)


def test_steps_in_epochs_resolve_with_the_training_split_and_are_recorded(plugins):
    config = make_config(**{**TINY, "iterations": "4ep"}, rewind_iter="1ep", warmup="10it",
                         schedule="step", milestones=["2ep", "3ep10it"])  # fmt: skip
    resolved = resolve(config, plugins)
    assert (resolved.iterations, resolved.rewind_iter, resolved.warmup) == (
        4 * PER_EPOCH, PER_EPOCH, 10)  # fmt: skip
    assert resolved.milestones == [2 * PER_EPOCH, 3 * PER_EPOCH + 10]
    assert resolved.steps == {"iterations": "4ep", "rewind_iter": "1ep", "warmup": "10it",
                              "milestones": ["2ep", "3ep10it"]}  # fmt: skip
    counts = make_config(**{**TINY, "iterations": 4 * PER_EPOCH}, rewind_iter=PER_EPOCH,
                         warmup=10, schedule="step",
                         milestones=[2 * PER_EPOCH, 3 * PER_EPOCH + 10])  # fmt: skip
    assert resolve(counts, plugins).run_name() == resolved.run_name()  # the same experiment
    assert resolve(resolved, plugins) == resolved  # resolving again changes nothing
    again = make_config(**resolved.model_dump(exclude_none=True))  # the record is dropped
    assert again.iterations == 4 * PER_EPOCH
    wider = resolve(make_config(**{**TINY, "iterations": "4ep", "batch_size": 100}), plugins)
    assert wider.iterations == 4 * (3500 // 100)


def test_steps_in_iterations_need_no_data(plugins, monkeypatch):
    from lottery_core import resolution

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the data")

    monkeypatch.setattr(resolution, "load_data", no_loading)
    resolved = resolve(make_config(**{**TINY, "iterations": "120it"}, warmup="7"), plugins)
    assert (resolved.iterations, resolved.warmup, resolved.steps) == (
        120,
        7,
        {"iterations": "120it"},
    )


def test_config_json_records_the_counts_and_the_text(plugins, sample_data, tmp_path):
    config = make_config(**{**TINY, "iterations": "1ep", "eval_every": 29, "rounds": 1})
    runs.start(Experiment(config, plugins=plugins, data=sample_data), tmp_path / "run",
               progress=False)  # fmt: skip
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["config"]["iterations"] == PER_EPOCH
    assert meta["config"]["steps"] == {"iterations": "1ep"}
    assert config_of(meta).iterations == PER_EPOCH
    assert isinstance(config_of(meta), ResolvedConfig)


def test_config_files_take_steps_and_refuse_the_record(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('iterations = "2ep"\nmilestones = ["1ep", 100]\nschedule = "step"\n'
                    'warmup = 30\nrewind_iter = "500it"\n')  # fmt: skip
    config = make_config(good)
    assert (config.iterations, config.milestones, config.warmup) == ("2ep", ["1ep", 100], 30)
    for text, word in (('steps = {iterations = "2ep"}\n', "steps"),
                       ("iterations = true\n", "iterations"),
                       ("warmup = 1.5\n", "warmup"),
                       ("milestones = [true]\n", "milestones"),
                       ('iterations = "2 epochs"\n', "iterations")):  # fmt: skip
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(LotteryError, match=word):
            make_config(bad)


# -- a plugin's optimizer and schedule ------------------------------------------------------


class SamLike:
    """A plugin with an optimizer that takes the closure's second pass (as SAM does) and a
    schedule that halves the rate after 50 iterations; it records what the core calls."""

    def __init__(self) -> None:
        self.states: list[int] = []
        self.lrs: list[float] = []
        self.second_pass: list[bool] = []

    def make_state(self, params, config):
        self.states.append(len(params))
        return optim.SGD(params, config.lr, fused=True)

    def step(self, params, state, lr, closure):
        loss = closure()
        self.second_pass.append(bool(loss.isfinite()) and all(p.grad is not None for p in params))
        self.lrs.append(lr)
        state.step(lr)

    @hookimpl
    def register_optimizers(self, register):
        register(OptimizerSpec("sam-like", self.make_state, self.step, "two passes"))

    @hookimpl
    def register_schedules(self, register):
        register(ScheduleSpec("halve", lambda it, total, config: 1.0 if it < 50 else 0.5))


def test_a_plugin_optimizer_and_schedule_drive_a_run(sample_data, tmp_path):
    """``register_optimizers`` and ``register_schedules`` feed the round loop: a fresh state each
    round, the rate set at every step from the iteration (a rewound round replays it from its
    rewind point), the closure's second pass on the step's batch."""
    plugin = SamLike()
    plugins = collect(build_manager(load_entrypoints=False, extra=[plugin]))
    assert plugins.optimizers.sources["sam-like"] == "SamLike"
    config = make_config(**{**TINY, "iterations": 100, "rounds": 2, "rewind_iter": 40},
                         optimizer="sam-like", lr=0.05, schedule="halve")  # fmt: skip
    runs.start(Experiment(config, plugins=plugins, data=sample_data), tmp_path / "run",
               progress=False)  # fmt: skip
    assert len(plugin.states) == 2  # one state per round
    assert plugin.lrs == [0.05] * 50 + [0.025] * 50 + [0.05] * 10 + [0.025] * 50
    assert all(plugin.second_pass)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (meta["config"]["optimizer"], meta["config"]["schedule"]) == ("sam-like", "halve")


def test_a_plugin_cannot_take_a_builtin_optimizer_name(capsys):
    class Impostor:
        @hookimpl
        def register_optimizers(self, register):
            register(OptimizerSpec("sgd", lambda params, config: None, lambda *a: None))

    plugins = collect(build_manager(load_entrypoints=False, extra=[Impostor()]))
    assert plugins.optimizers.sources["sgd"] == "optim"
    assert "registers optimizer 'sgd', the name of a built-in" in capsys.readouterr().err


def test_a_broken_schedule_or_optimizer_is_one_line_naming_the_plugin(plugins, sample_data):
    config = resolve(make_config(**TINY), plugins)

    def raising(it, total, config):
        raise ZeroDivisionError("oops")

    adam = plugins.optimizers["adam"]
    cases = [
        (lambda it, total, config: math.nan, "returned nan"),
        (lambda it, total, config: -1.0, "returned -1.0"),
        (lambda it, total, config: "1", "returned a str"),
        (raising, "failed at iteration 0: ZeroDivisionError: oops"),
    ]
    for factor, fragment in cases:
        recipe = Recipe(adam, ScheduleSpec("bad", factor), config, schedule_who="schedule 'bad'")
        with pytest.raises(PluginError, match=f"schedule 'bad'.*{fragment}"):
            recipe.factor(0)

    def failing_step(params, state, lr, closure):
        raise RuntimeError("no step")

    broken = OptimizerSpec("broken", lambda params, config: None, failing_step)
    recipe = Recipe(broken, plugins.schedules["constant"], config, optimizer_who="optimizer 'x'")
    experiment = Experiment(config, plugins=plugins, data=sample_data)
    experiment.start()
    from dataclasses import replace

    settings = replace(experiment.settings(0), recipe=recipe)
    with pytest.raises(PluginError, match="optimizer 'x' failed in its step at iteration 0"):
        train_round(experiment.model, experiment.data, settings, data_seed=0)
