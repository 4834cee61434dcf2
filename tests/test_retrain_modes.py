"""Renda et al. 2020's three ways to retrain a pruned network (``--retrain``): weight rewinding
(today's runs), learning-rate rewinding and fine-tuning, for T - k iterations each."""

from __future__ import annotations

import json

import pytest
import torch

from lottery_core import checkpoint, optim, runs
from lottery_core.config import make_config
from lottery_core.errors import LotteryError
from lottery_core.experiment import Experiment
from lottery_core.hookspecs import hookimpl
from lottery_core.plugins import build_manager, collect
from lottery_core.resolution import resolve
from lottery_core.specs import OptimizerSpec

from .conftest import TINY

T, K, LR = 100, 40, 0.05
STEP = dict(schedule="step", milestones=[30, 70], gamma=0.1)  # x0.1 at 30 and at 70


class Recording:
    """SGD (torch's update) that records the learning rate of every step, by round."""

    def __init__(self) -> None:
        self.rounds: list[list[float]] = []

    def make_state(self, params, config):
        self.rounds.append([])
        return optim.SGD(params, config.lr, fused=True)

    def step(self, params, state, lr, closure):
        self.rounds[-1].append(lr)
        state.step(lr)

    @hookimpl
    def register_optimizers(self, register):
        register(OptimizerSpec("recording-sgd", self.make_state, self.step, "records its lr"))


def run(plugins, data, tmp_path=None, **changes):
    config = make_config(**{**TINY, "iterations": T, "eval_every": 50, "rounds": 2,
                            "rewind_iter": K, "threads": 1, **changes})  # fmt: skip
    exp = Experiment(config, plugins=plugins, data=data)
    if tmp_path is None:
        result = exp.run(progress=False)
    else:
        result = runs.start(exp, tmp_path, progress=False)
    return exp, result


def recorded_run(data, **changes) -> tuple[Experiment, list[list[float]]]:
    plugin = Recording()
    plugins = collect(build_manager(load_entrypoints=False, extra=[plugin]))
    exp, _ = run(plugins, data, optimizer="recording-sgd", lr=LR, **changes)
    return exp, plugin.rounds


def step_lr(iteration: int) -> float:
    """The step schedule's rate at an absolute iteration, written out."""
    return LR * (0.1 ** sum(iteration >= m for m in STEP["milestones"]))


def test_the_default_keeps_names_and_identities_and_a_mode_changes_them(plugins):
    config = resolve(make_config(**TINY), plugins)
    assert config.retrain == "weights"
    assert "retrain" not in config.identity()
    meta = {"config": config.model_dump(mode="json"), "seeds": {"init": 1}, "plugins": {}}
    old = {**meta, "config": {k: v for k, v in meta["config"].items() if k != "retrain"}}
    assert checkpoint.run_identity(meta) == checkpoint.run_identity(old)
    explicit = resolve(make_config(**TINY, retrain="weights"), plugins)
    assert explicit.run_name() == config.run_name()
    for mode in ("lr", "finetune"):
        other = resolve(make_config(**TINY, retrain=mode), plugins)
        assert other.identity()["retrain"] == mode
        assert other.short_hash() != config.short_hash()
        other_meta = {**meta, "config": other.model_dump(mode="json")}
        assert checkpoint.run_identity(other_meta) != checkpoint.run_identity(meta)


def test_lr_and_finetune_keep_the_trained_weights_and_refuse_another_policy(plugins):
    for mode in ("lr", "finetune"):
        assert resolve(make_config(**TINY, retrain=mode), plugins).reinit == "none"
        assert resolve(make_config(**TINY, retrain=mode, reinit="none"), plugins).reinit == "none"
        for policy in ("rewind", "random"):
            with pytest.raises(LotteryError, match=f"--retrain {mode} keeps the trained") as err:
                resolve(make_config(**TINY, retrain=mode, reinit=policy), plugins)
            assert "\n" not in str(err.value)
        with pytest.raises(LotteryError, match="--prune-at init trains from θ0"):
            resolve(make_config(**TINY, retrain=mode, prune_at="init"), plugins)
        again = resolve(make_config(**TINY, retrain=mode), plugins)  # config.json's, re-resolved
        assert resolve(make_config(**again.model_dump()), plugins) == again
    for policy in ("rewind", "random", "none"):  # weight rewinding: the policy as given
        assert resolve(make_config(**TINY, reinit=policy), plugins).reinit == policy
    with pytest.raises(LotteryError, match="retrain"):
        make_config(**TINY, retrain="rewind")


def test_with_a_constant_rate_lr_rewinding_is_fine_tuning_bit_for_bit(plugins, sample_data):
    """Renda et al.: with a constant schedule learning-rate rewinding and fine-tuning are the
    same thing, and both are keeping the trained weights (``--reinit none``), as before."""
    done = {}
    for name, changes in {"lr": dict(retrain="lr"), "finetune": dict(retrain="finetune"),
                          "keep": dict(reinit="none")}.items():  # fmt: skip
        exp, result = run(plugins, sample_data, **changes)
        done[name] = (exp.snapshot(), result)
    reference, ref_result = done["keep"]
    assert ref_result.results["iterations"].tolist() == [T, T - K]
    for name in ("lr", "finetune"):
        params, result = done[name]
        for key, value in params.items():
            assert torch.equal(value, reference[key]), (name, key)
        columns = [c for c in ref_result.results.columns if c != "time_s"]
        assert result.results[columns].equals(ref_result.results[columns]), name
        assert result.history.equals(ref_result.history), name


def test_lr_rewinding_replays_the_schedule_and_finetuning_holds_its_final_rate(sample_data):
    original = [step_lr(it) for it in range(T)]
    _, weights = recorded_run(sample_data, **STEP)
    _, lr = recorded_run(sample_data, retrain="lr", **STEP)
    finetune_exp, finetune = recorded_run(sample_data, retrain="finetune", **STEP)
    for rounds in (weights, lr, finetune):
        assert rounds[0] == original  # the dense round: the whole schedule
    assert lr[1] == original[K:] == weights[1]  # iterations k..T-1 at their own rates
    assert finetune[1] == [LR * 0.1 * 0.1] * (T - K)  # T - k steps at the final rate
    assert finetune_exp.settings(1).recipe.factor(K) == pytest.approx(0.01)
    assert finetune_exp.settings(0).recipe.factor(K) == pytest.approx(0.1)


def test_lr_rewinding_retrains_the_trained_weights_weight_rewinding_does_not(sample_data):
    """Same schedule replayed; only where the survivors start differs."""
    weights_exp, _ = recorded_run(sample_data, **STEP)
    lr_exp, _ = recorded_run(sample_data, retrain="lr", **STEP)
    a, b = weights_exp.snapshot(), lr_exp.snapshot()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_config_json_records_the_mode(plugins, sample_data, tmp_path):
    run(plugins, sample_data, tmp_path / "run", retrain="finetune")
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (meta["config"]["retrain"], meta["config"]["reinit"]) == ("finetune", "none")


def test_the_flag_is_made_from_the_field_and_a_contradiction_is_one_line(invoke):
    result = invoke("run", "--help")
    assert "--retrain" in result.stdout and "finetune" in result.stdout
    result = invoke("run", "--dataset", "mnist-sample", "--retrain", "lr", "--reinit", "rewind",
                    "--quiet")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--retrain lr keeps the trained weights" in result.stderr
