"""An example third-party lottery plugin, installed for real by the tests.

It adds a model (``tiny_mlp``), a pruning strategy (``largest``: prunes the largest weights, an
anti-IMP control) and lifecycle hooks that add a column to ``history.csv`` and ``results.csv``.
"""

import math

from torch import nn

from lottery_core import ModelDefaults, ModelSpec, PruningStrategy, hookimpl


def tiny_mlp(input_shape, num_classes):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), 32), nn.ReLU(), nn.Linear(32, num_classes)
    )


def largest_scores(weights, generator):
    return {name: -w.abs() for name, w in weights.items()}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "tiny_mlp",
            tiny_mlp,
            ModelDefaults(dataset="mnist-sample", iterations=200, lr=1e-3, rounds=3),
            description="one hidden layer of 32 units",
        )
    )


@hookimpl
def register_pruning_strategies(register):
    register(PruningStrategy("largest", largest_scores, "prune the largest |w| (anti-control)"))


@hookimpl
def on_evaluation(round_index, iteration, metrics):
    return {"val_error": 100.0 - metrics["val_acc"]}


@hookimpl
def on_round_end(round_index, record, model):
    return {"example_params": sum(p.numel() for p in model.parameters())}
