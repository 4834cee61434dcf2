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

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import paths, rundir, runs
from .batched import Member, train_members, training_threads, unsupported
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


@dataclass
class _Pending:
    """A network to train: its set, where it goes, and its experiment, started from its
    branch."""

    branch: BranchSet
    round_index: int
    trial: int
    path: Path
    trunk: Trunk
    begin: BranchStart
    experiment: BranchExperiment


def train_batched(
    work: Sequence[tuple[BranchSet, Sequence[tuple[int, int]]]],
    plugins: Plugins,
    cache: dict[tuple, DatasetSplits],
) -> list[int]:
    """Bring the networks (round, trial) of each branch set in ``work`` to their end: those
    finished skipped, those stopped mid-way finished alone, the rest trained in batched groups
    of equal settings, across sets (a group's controls: every trial's, both kinds). Returns
    the members of each batched model trained."""
    groups: dict[str, list[_Pending]] = {}
    for branch, networks in work:
        for round_index, trial in networks:
            path = branch.network(round_index, trial)
            if rows(path):
                continue
            if (path / paths.CHECKPOINT).exists() or rundir.kind(path) == "run":
                train_network(branch, round_index, trial, plugins, cache)  # as it was begun
                continue
            trunk, context, begin, config = begin_network(branch, round_index, trial, plugins,
                                                          cache)  # fmt: skip
            experiment = BranchExperiment(config, plugins, data_for(config, plugins, cache),
                                          begin, round_index, context.initial)  # fmt: skip
            item = _Pending(branch, round_index, trial, path, trunk, begin, experiment)
            groups.setdefault(experiment.batch_key(round_index), []).append(item)
    return [_train_group(group, plugins, cache) for group in groups.values()]


def _train_group(group: list[_Pending], plugins: Plugins, cache: dict[tuple, DatasetSplits]
                 ) -> int:  # fmt: skip
    """One batched model of ``group`` (each network then written); its members (0: the
    model cannot be batched, each trained alone)."""
    first = group[0]
    experiment = first.experiment
    experiment.start()  # the model, as the first network starts
    assert experiment.model is not None
    settings = experiment.settings(first.round_index)
    if unsupported(experiment.model, settings) is not None:
        for item in group:
            train_network(item.branch, item.round_index, item.trial, plugins, cache)
        return 0
    members = [Member(item.begin.masks, item.begin.parameters,
                      item.experiment.seeds["data_order"]) for item in group]  # fmt: skip
    rewind_at = experiment.config.rewind_iter if first.round_index == 0 else 0
    if rewind_at <= settings.start_iteration:  # a round begun past it takes no snapshot
        rewind_at = 0
    config = experiment.config
    started = time.perf_counter()
    with training_threads(config.threads, config.thread_rule, experiment.device) as rule:
        results = train_members(experiment.model, members, experiment.data, settings,
                                snapshot_at=rewind_at or None, threads=rule)  # fmt: skip
    share = (time.perf_counter() - started) / len(group)
    for item, result in zip(group, results, strict=True):
        if result.error is not None:  # diverged: the single path writes it as it does alone
            train_network(item.branch, item.round_index, item.trial, plugins, cache)
            continue
        item.experiment.given[item.round_index] = Trained(
            result.parameters, result.outcome, result.snapshot, share
        )
        meta = network_meta(item.branch, item.trunk, item.experiment, item.round_index, item.trial)
        runs.start(item.experiment, item.path, progress=False, meta=meta)
    return len(group)
