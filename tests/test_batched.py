"""Many tickets as one model (``lottery_core.batched``): N members trained at once are their N
single runs (``training.train_round``), bit for bit with the ``bmm`` forward on the CPU, within
a stated tolerance with ``vmap``; pruned weights stay zero, each member keeps its own data order,
a member that diverges fails alone, and what is not supported is refused in one line.

Every run here is short (tens of steps on the 5,000-digit sample, one thread), and nothing
depends on timing."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery_core import masks
from lottery_core.batched import (
    Member,
    MemberResult,
    choose_backend,
    nll_sum,
    train_members,
)
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.resolution import resolve
from lottery_core.specs import DatasetSplits, OptimizerSpec
from lottery_core.training import (
    NonFiniteLoss,
    Recipe,
    RoundOutcome,
    TrainSettings,
    recipe_of,
    train_round,
)

Tensors = dict[str, torch.Tensor]
BASE: dict[str, Any] = dict(dataset="mnist-sample", batch_size=60, seed=0, device="cpu")
FC_TOLERANCE = 1e-6  # max abs parameter difference, vmap vs single: LeNet-300-100, 60 steps
CONV_TOLERANCE = 1e-6  # LeNet-5 with SGD, 20 steps


def experiment(plugins: Any, data: DatasetSplits, **overrides: Any) -> Experiment:
    """A built (masks attached) experiment on the sample with ``overrides``."""
    config = resolve(make_config(**{**BASE, **overrides}), plugins)
    built = Experiment(config, plugins=plugins, data=data)
    built.build_model()
    return built


def make_members(built: Experiment, count: int, seed: int = 0, data_seed: int = 3) -> list[Member]:
    """``count`` members with their own masks (a density of their own per member, 20-80%),
    their own fresh initialisation and their own data-order seed."""
    members = []
    for i in range(count):
        generator = torch.Generator().manual_seed(1_000 + seed + i)
        keep = 0.2 + 0.6 * (i + 1) / (count + 1)
        layer_masks = {
            layer.name: (torch.rand(layer.mask.shape, generator=generator) < keep).float()
            for layer in built.layers
        }
        parameters = built.fresh_parameters(torch.Generator().manual_seed(seed + i))
        members.append(Member(layer_masks, parameters, data_seed=data_seed + 17 * (seed + i)))
    return members


def single_run(
    built: Experiment,
    member: Member,
    settings: TrainSettings,
    snapshot_at: int | None = None,
    on_evaluation: Callable[[dict], dict | None] | None = None,
) -> tuple[RoundOutcome, Tensors, Tensors | None]:
    """``member`` trained by the single path: an ordinary model with its masks and parameters;
    its outcome, trained parameters and (at ``snapshot_at``) the snapshot ``on_iteration``
    takes, as ``Experiment.train`` takes the rewind point."""
    built.build_model()
    model = model_of(built)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(member.parameters[name])
        for layer in built.layers:
            layer.mask.copy_(member.masks[layer.name])
            masks.refresh_weight(layer)
    snapshot: dict[str, Tensors] = {}

    def on_iteration(iteration: int) -> None:
        if iteration == snapshot_at:
            snapshot["at"] = {n: p.detach().clone() for n, p in model.named_parameters()}

    outcome = train_round(
        model,
        built.data,
        settings,
        member.data_seed,
        on_evaluation=on_evaluation,
        on_iteration=on_iteration if snapshot_at else None,
    )
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    return outcome, trained, snapshot.get("at")


def model_of(built: Experiment) -> nn.Module:
    assert built.model is not None
    return built.model


def same_tensors(a: Tensors, b: Tensors) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def max_difference(a: Tensors, b: Tensors) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def assert_same_outcome(batched: RoundOutcome, single: RoundOutcome) -> None:
    """Every field, every history row (floats compared exactly)."""
    assert batched.history == single.history
    assert batched.es_iteration == single.es_iteration
    assert batched.es_val_loss == single.es_val_loss
    assert batched.es_val_acc == single.es_val_acc
    assert batched.es_test_acc == single.es_test_acc
    assert batched.final_test_acc == single.final_test_acc


# -- the exact loss sum --------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 2, 15, 16, 17, 33, 60, 256, 257, 1000, 4097])
def test_nll_sum_adds_as_cross_entropy_does_bit_for_bit(rows: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    logits = torch.randn(3, rows, 10, generator=generator) * 4
    target = torch.randint(0, 10, (3, rows), generator=generator)
    per_example = F.cross_entropy(logits.reshape(-1, 10), target.reshape(-1), reduction="none")
    summed = nll_sum(per_example.view(3, rows))
    for i in range(3):
        assert torch.equal(summed[i], F.cross_entropy(logits[i], target[i], reduction="sum"))
        assert torch.equal(summed[i] / rows, F.cross_entropy(logits[i], target[i]))


# -- 1, 2: a batch of members is its single runs -------------------------------------------


def test_one_member_is_its_single_run_bit_for_bit(plugins: Any, sample_data: DatasetSplits) -> None:
    """Adam at a constant rate (no recipe, the default); the callbacks as ``train_round``'s:
    ``on_evaluation``'s columns in the rows, ``progress`` told of every step."""
    built = experiment(plugins, sample_data, iterations=120)
    settings = TrainSettings(iterations=120, batch_size=60, lr=1.2e-3, eval_every=40)
    [member] = make_members(built, 1)
    steps: list[int] = []
    [result] = train_members(
        model_of(built),
        [member],
        sample_data,
        settings,
        on_evaluation=lambda i, row: {"member": i, "twice": 2 * row["iteration"]},
        progress=steps.append,
    )
    outcome, trained, _ = single_run(
        built,
        member,
        settings,
        on_evaluation=lambda row: {"member": 0, "twice": 2 * row["iteration"]},
    )
    assert result.error is None
    assert same_tensors(result.parameters, trained)
    assert_same_outcome(result.outcome, outcome)
    assert [row["twice"] for row in outcome.history] == [80, 160, 240]
    assert steps == [40, 40, 40]


def test_two_threads_give_the_same_bits(plugins: Any, sample_data: DatasetSplits) -> None:
    """MKL's strict mode makes every GEMM, batched ones included, the same bits on any thread
    count: members trained on two threads are their single runs on one."""
    built = experiment(plugins, sample_data, iterations=12)
    settings = TrainSettings(iterations=12, batch_size=60, lr=1.2e-3, eval_every=6)
    members = make_members(built, 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = train_members(model_of(built), members, sample_data, settings)
    finally:
        torch.set_num_threads(before)
    for member, result in zip(members, results, strict=True):
        outcome, trained, _ = single_run(built, member, settings)
        assert same_tensors(result.parameters, trained)
        assert_same_outcome(result.outcome, outcome)


def flip(stored: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A toy augmentation: a random half of the batch mirrored, drawn from ``generator``."""
    chosen = torch.rand(stored.shape[0], generator=generator) < 0.5
    return torch.where(chosen.view(-1, 1, 1, 1), stored.flip(-1), stored)


RECIPES: dict[str, dict[str, Any]] = {
    # Adam with weight decay, a cosine schedule and warmup; a rewound round from iteration 10
    "adam": dict(optimizer="adam", lr=1.2e-3, weight_decay=1e-4, schedule="cosine", warmup=15),
    # SGD with Nesterov momentum, weight decay and a step; every evaluation also on the test set,
    # and the training batches through an augmentation
    "sgd": dict(
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        schedule="step",
        milestones=[45],
        gamma=0.1,
    ),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_members_are_their_single_runs_bit_for_bit(
    name: str, plugins: Any, sample_data: DatasetSplits
) -> None:
    built = experiment(plugins, sample_data, iterations=90, **RECIPES[name])
    sgd = name == "sgd"
    settings = TrainSettings(
        iterations=90,
        batch_size=60,
        lr=float(built.config.lr),
        eval_every=20,
        start_iteration=0 if sgd else 10,
        test_every_eval=sgd,
        recipe=recipe_of(built.config, plugins),
        augment=flip if sgd else None,
    )
    members = make_members(built, 3)
    results = train_members(model_of(built), members, sample_data, settings, snapshot_at=35)
    assert choose_backend(model_of(built)) == "bmm"
    for member, result in zip(members, results, strict=True):
        outcome, trained, snapshot = single_run(built, member, settings, snapshot_at=35)
        assert result.error is None
        assert same_tensors(result.parameters, trained)
        assert result.snapshot is not None and snapshot is not None
        assert same_tensors(result.snapshot, snapshot)
        assert_same_outcome(result.outcome, outcome)
        assert ("test_acc" in outcome.history[0]) == sgd
    # the members really differ: their own masks, inits and data orders
    assert len({r.outcome.history[0]["train_loss"] for r in results}) == 3


def test_the_vmap_forward_agrees_within_its_tolerance(
    plugins: Any, sample_data: DatasetSplits
) -> None:
    """``vmap``'s batched ``F.linear`` (a matmul and a separate bias add) and its grouped
    convolutions round differently from the single path. LeNet-300-100 with Adam: parameters
    within ``FC_TOLERANCE`` after 60 steps (9e-8 measured), the same early-stopping iterations.
    LeNet-5 with SGD: within ``CONV_TOLERANCE`` after 20 steps (5e-8 measured). With Adam,
    LeNet-5 differs by up to 2e-5 after one step already: Adam divides a gradient by its own
    size, so where a gradient is near ``eps`` (1e-8) a rounding-level difference in it is a
    visible difference in the update, which training then amplifies (module docstring)."""
    cases: tuple[tuple[str, int, dict[str, Any], float], ...] = (
        ("lenet_fc", 60, {}, FC_TOLERANCE),
        ("lenet_conv", 20, {"optimizer": "sgd", "lr": 0.05}, CONV_TOLERANCE),
    )
    for model, iterations, recipe, tolerance in cases:
        built = experiment(plugins, sample_data, model=model, iterations=iterations, **recipe)
        settings = TrainSettings(
            iterations=iterations,
            batch_size=60,
            lr=float(built.config.lr),
            eval_every=10,
            recipe=recipe_of(built.config, plugins),
        )
        members = make_members(built, 2)
        results = train_members(model_of(built), members, sample_data, settings, backend="vmap")
        for member, result in zip(members, results, strict=True):
            outcome, trained, _ = single_run(built, member, settings)
            assert max_difference(result.parameters, trained) < tolerance, model
            assert result.outcome.es_iteration == outcome.es_iteration
    assert choose_backend(model_of(built)) == "vmap"  # lenet_conv: auto


# -- 3: pruned weights, masks, data orders -------------------------------------------------


def test_pruned_weights_stay_zero_and_nothing_given_is_changed(
    plugins: Any, sample_data: DatasetSplits
) -> None:
    """Adam without weight decay moves any weight whose gradient is not exactly zero, by about
    ``lr`` a step: a pruned ``weight_orig`` entry that keeps its starting bits had a zero
    gradient at every step, and the effective weight there is exactly zero."""
    built = experiment(plugins, sample_data, iterations=60)
    settings = TrainSettings(iterations=60, batch_size=60, lr=1.2e-3, eval_every=30)
    members = make_members(built, 3)
    given = [
        (
            {k: v.clone() for k, v in m.masks.items()},
            {k: v.clone() for k, v in m.parameters.items()},
        )
        for m in members
    ]
    model = model_of(built)
    model_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    results = train_members(model, members, sample_data, settings)
    for member, (layer_masks, parameters), result in zip(members, given, results, strict=True):
        assert same_tensors(dict(member.masks), layer_masks)  # nothing handed in is changed
        assert same_tensors(dict(member.parameters), parameters)
        for layer, mask in layer_masks.items():
            trained = result.parameters[f"{layer}.weight_orig"]
            pruned = mask == 0
            assert bool(pruned.any())
            assert bool(((trained * mask)[pruned] == 0).all())
            assert torch.equal(trained[pruned], parameters[f"{layer}.weight_orig"][pruned])
            assert not torch.equal(trained[~pruned], parameters[f"{layer}.weight_orig"][~pruned])
    assert same_tensors({k: v.detach() for k, v in model.state_dict().items()}, model_before)


def test_each_member_keeps_its_own_data_order(plugins: Any, sample_data: DatasetSplits) -> None:
    """Three copies of one network: two with the same data-order seed end equal, bit for bit;
    the third, with another seed, ends elsewhere. (The architecture given as a model without
    its masks attached trains the same.)"""
    built = experiment(plugins, sample_data, iterations=30)
    settings = TrainSettings(iterations=30, batch_size=60, lr=1.2e-3, eval_every=30)
    [member] = make_members(built, 1)
    copies = [Member(member.masks, member.parameters, seed) for seed in (5, 5, 6)]
    first, again, other = train_members(model_of(built), copies, sample_data, settings)
    assert same_tensors(first.parameters, again.parameters)
    assert first.outcome.history == again.outcome.history
    assert not same_tensors(first.parameters, other.parameters)
    unpruned = built.model_spec.build(sample_data.input_shape, sample_data.num_classes)
    [alone] = train_members(unpruned, copies[:1], sample_data, settings)
    assert same_tensors(alone.parameters, first.parameters)


# -- 4: the statistics ----------------------------------------------------------------------


def test_batched_accuracies_lie_within_the_spread_of_seeds(
    plugins: Any, sample_data: DatasetSplits
) -> None:
    """Six members through the inexact ``vmap`` forward against six single runs of other
    seeds (other inits, other data orders, the same mask density): the mean final test
    accuracies differ by less than two standard errors of their difference. And against their
    own single runs, paired: the mean difference is a small fraction of the seeds' spread."""
    built = experiment(plugins, sample_data, iterations=60)
    settings = TrainSettings(iterations=60, batch_size=60, lr=1.2e-3, eval_every=30)
    members = make_members(built, 6)
    others = make_members(built, 6, seed=100)
    batched = [
        r.outcome.final_test_acc
        for r in train_members(model_of(built), members, sample_data, settings, backend="vmap")
    ]
    own = [single_run(built, m, settings)[0].final_test_acc for m in members]
    other = [single_run(built, m, settings)[0].final_test_acc for m in others]
    spread = statistics.stdev(other)
    error = math.sqrt(statistics.variance(batched) / 6 + statistics.variance(other) / 6)
    assert abs(statistics.mean(batched) - statistics.mean(other)) < 2 * error
    assert abs(statistics.mean(batched) - statistics.mean(own)) < 0.25 * spread
    assert statistics.mean(batched) > 80  # it learned (88% measured; chance is 10%)


# -- failures and refusals ------------------------------------------------------------------


def test_a_member_whose_loss_is_not_finite_fails_alone(
    plugins: Any, sample_data: DatasetSplits
) -> None:
    built = experiment(plugins, sample_data, iterations=40)
    settings = TrainSettings(iterations=40, batch_size=60, lr=1.2e-3, eval_every=20)
    members = make_members(built, 3)
    broken = dict(members[1].parameters)
    broken["5.bias"] = torch.full_like(broken["5.bias"], math.nan)
    members[1] = Member(members[1].masks, broken, members[1].data_seed)
    results: list[MemberResult] = train_members(model_of(built), members, sample_data, settings)
    failed = results[1]
    assert isinstance(failed.error, NonFiniteLoss) and failed.error.iteration == 20
    assert failed.outcome.history == []
    with pytest.raises(NonFiniteLoss) as raised:
        single_run(built, members[1], settings)
    assert raised.value.iteration == 20
    for i in (0, 2):  # the others are untouched by it: still their single runs, bit for bit
        outcome, trained, _ = single_run(built, members[i], settings)
        assert results[i].error is None
        assert same_tensors(results[i].parameters, trained)
        assert_same_outcome(results[i].outcome, outcome)


def refused(build: Callable[[], Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        build()


def test_what_is_not_supported_is_refused(plugins: Any, sample_data: DatasetSplits) -> None:
    built = experiment(plugins, sample_data, iterations=10)
    model = model_of(built)
    settings = TrainSettings(iterations=10, batch_size=60, lr=1.2e-3, eval_every=10)
    [member] = make_members(built, 1)

    def train(*members: Member, on: nn.Module = model, **kwargs: Any) -> list[MemberResult]:
        return train_members(
            on, list(members), sample_data, kwargs.pop("settings", settings), **kwargs
        )

    batch_norm = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.BatchNorm1d(10))
    refused(lambda: train(member, on=batch_norm), "only buffers are its masks")
    missing = {k: v for k, v in member.parameters.items() if k != "1.bias"}
    refused(lambda: train(Member(member.masks, missing, 0)), "no parameter '1.bias'")
    halves = {k: v * 0.5 for k, v in member.masks.items()}
    refused(lambda: train(Member(halves, member.parameters, 0)), "not all 0 or 1")
    extra = {**member.parameters, "9.weight": torch.zeros(1)}
    refused(lambda: train(Member(member.masks, extra, 0)), "does not have")
    conv = model_of(experiment(plugins, sample_data, model="lenet_conv", iterations=10))
    refused(lambda: choose_backend(conv, "bmm"), "bmm backend")
    sam = OptimizerSpec("sam", lambda params, config: None, lambda *args: None)
    recipe = recipe_of(built.config, plugins)
    custom = Recipe(sam, recipe.schedule, recipe.config, "optimizer 'sam'")
    with_sam = TrainSettings(iterations=10, batch_size=60, lr=1.2e-3, eval_every=10, recipe=custom)
    refused(lambda: train(member, settings=with_sam), "supports the optimizers")
    assert train() == []
