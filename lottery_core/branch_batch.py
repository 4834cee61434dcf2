"""A branch set's networks trained together as one batched model (``lottery_core.batched``),
then each written as the single path writes it.

With ``batched`` (the config field, or ``--batched`` on ``branch`` and ``stability``), the
networks of a set that share everything but their seed (the same config and starting
iteration: a set's trials and rounds) train as the members of one model, each with its own masks,
starting weights and data order. Each network is then written through the ordinary round loop
(``runs.start``), which records the round the batched model trained (``Experiment.given``):
the same folder, checkpoint, tables and hooks as a single network, which stays the reference.
On the CPU, LeNet-300-100's members are their single runs bit for bit (``batched``'s ``bmm``
forward); conv nets agree to float rounding. Networks a batched model cannot train (BatchNorm,
an optimizer plugin), and one stopped mid-way or whose loss stopped being finite, train alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import paths, rundir, runs
from .batched import Member, train_members, unsupported
from .branches import (
    BranchExperiment,
    BranchSet,
    Trunk,
    begin_network,
    data_for,
    network_meta,
    rows,
    train_network,
)  # fmt: skip
from .experiment import Trained
from .plugins import Plugins
from .specs import BranchStart, DatasetSplits
from .threads import use_threads


@dataclass
class _Pending:
    """A network to train: where it goes, and its experiment, started from its branch."""

    round_index: int
    trial: int
    path: Path
    trunk: Trunk
    begin: BranchStart
    experiment: BranchExperiment


def train_batched(
    branch: BranchSet,
    networks: Sequence[tuple[int, int]],
    plugins: Plugins,
    cache: dict[tuple, DatasetSplits],
) -> None:
    """Bring ``networks`` (round, trial) of ``branch`` to their end: those finished skipped,
    those stopped mid-way finished alone, the rest trained in batched groups of equal
    settings."""
    groups: dict[str, list[_Pending]] = {}
    for round_index, trial in networks:
        path = branch.network(round_index, trial)
        if rows(path):
            continue
        if (path / paths.CHECKPOINT).exists() or rundir.kind(path) == "run":
            train_network(branch, round_index, trial, plugins, cache)  # as it was begun
            continue
        trunk, context, begin, config = begin_network(branch, round_index, trial, plugins, cache)
        experiment = BranchExperiment(config, plugins, data_for(config, plugins, cache), begin,
                                      round_index, context.initial)  # fmt: skip
        item = _Pending(round_index, trial, path, trunk, begin, experiment)
        groups.setdefault(_settings_key(item), []).append(item)
    for group in groups.values():
        _train_group(branch, group, plugins, cache)


def _settings_key(item: _Pending) -> str:
    """What members of one batched model must share: the config but its seed, the round's
    starting iteration and whether the round is the first (late rewinding's snapshot, the
    pruned rounds' fine-tuning rate)."""
    config = item.experiment.config.model_dump(mode="json", exclude={"seed", "out"})
    start = item.experiment.settings(item.round_index).start_iteration
    return json.dumps([config, start, item.round_index > 0], sort_keys=True, default=str)


def _train_group(
    branch: BranchSet, group: list[_Pending], plugins: Plugins, cache: dict[tuple, DatasetSplits]
) -> None:
    first = group[0]
    experiment = first.experiment
    experiment.start()  # the model, as the first network starts
    assert experiment.model is not None
    settings = experiment.settings(first.round_index)
    if unsupported(experiment.model, settings) is not None:
        for item in group:
            train_network(branch, item.round_index, item.trial, plugins, cache)
        return
    members = [Member(item.begin.masks, item.begin.parameters,
                      item.experiment.seeds["data_order"]) for item in group]  # fmt: skip
    rewind_at = experiment.config.rewind_iter if first.round_index == 0 else 0
    if rewind_at <= settings.start_iteration:  # a round begun past it takes no snapshot
        rewind_at = 0
    threads = torch.get_num_threads()
    if experiment.data.train_x.device.type == "cpu":
        use_threads(1)  # one large step: two threads measured ~25x slower on a busy 2-core CPU
    started = time.perf_counter()
    try:
        results = train_members(experiment.model, members, experiment.data, settings,
                                snapshot_at=rewind_at or None)  # fmt: skip
    finally:
        use_threads(threads)
    share = (time.perf_counter() - started) / len(group)
    for item, result in zip(group, results, strict=True):
        if result.error is not None:  # diverged: the single path writes it as it does alone
            train_network(branch, item.round_index, item.trial, plugins, cache)
            continue
        item.experiment.given[item.round_index] = Trained(
            result.parameters, result.outcome, result.snapshot, share
        )
        meta = network_meta(branch, item.trunk, item.experiment, item.round_index, item.trial)
        runs.start(item.experiment, item.path, progress=False, meta=meta)
