"""Analyses of a branch set: a kind that compares a round's trained networks
(``BranchKind.analyse``, the built-in ``stability``) gets them as functions and a batched
evaluator once all the round's trials are trained; its tables are written beside the networks::

    <set>/round_<r>/<name>.csv, analysis.json   one round's tables, and what they came from
    <set>/<name>.csv                            every analysed round's rows
    <trunk>/<name>.csv                          every set's rows, with ``branch`` (the set)

``analysis.json`` records the networks' identities, so running again skips a round analysed from
the same networks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import checkpoint, connectivity, files, guards, paths, rundir, seeds
from .batched_eval import evaluate_states
from .branches import BranchPlan, data_for, open_trunk, rows
from .config import ResolvedConfig
from .errors import LotteryError, PluginError
from .experiment import Experiment
from .plugins import Plugins
from .specs import AnalysisContext, DatasetSplits, Tensors

TRAIN_SUBSET = 10_000  # training examples an analysis evaluates on ("train"), fixed per trunk
_TABLE = re.compile(r"[a-z][a-z0-9_]{0,39}")
# a table's name may not be one a run folder already uses for its own files
RESERVED_TABLES = frozenset({"results", "history", "layers", "aggregate", "status", "config",
                             "between_rounds", "sweep_results"})  # fmt: skip


class Evaluator:
    """``AnalysisContext.evaluate``: states of the trunk's (unpruned) model on its test split
    or on a fixed subset of its training split, in batched forwards."""

    def __init__(self, config: ResolvedConfig, plugins: Plugins, data: DatasetSplits):
        helper = Experiment(config, plugins=plugins, data=data)
        self.data = helper.data  # on the run's device
        self.model = helper.model_spec.build(self.data.input_shape, self.data.num_classes).to(
            helper.device
        )
        self.keys = set(self.model.state_dict())
        n = self.data.train_x.shape[0]
        order = torch.randperm(n, generator=seeds.subset_generator(config.seed))
        index = order[: min(TRAIN_SUBSET, n)].to(self.data.train_x.device)
        self.train_x = torch.index_select(self.data.train_x, 0, index)
        self.train_y = torch.index_select(self.data.train_y, 0, index)

    def __call__(self, states: list[Tensors], split: str) -> list[tuple[float, float]]:
        if split == "test":
            x, y = self.data.test_x, self.data.test_y
        elif split == "train":
            x, y = self.train_x, self.train_y
        else:
            raise LotteryError(f"evaluate: split {split!r} is not 'test' or 'train'")
        for state in states:
            if not isinstance(state, dict) or set(state) != self.keys:
                raise LotteryError(
                    "evaluate: a state is not keyed like the model's state_dict (the unpruned "
                    "model's: <layer>.weight, biases, buffers)"
                )
        return evaluate_states(self.model, states, x, y, self.data.images)


def network_state(path: Path) -> tuple[Tensors, dict[str, Any], str]:
    """A finished branch network's trained function (``connectivity.function_state``), its
    row of ``results.csv`` and its run identity, from its verified checkpoint."""
    meta = rundir.read_meta(path)
    body = rundir.verified(path, meta)
    model = body["model"]
    suffix = ".weight_mask"
    layer_masks = {k[: -len(suffix)]: v for k, v in model.items() if k.endswith(suffix)}
    row = {str(k): v for k, v in pd.read_csv(path / paths.RESULTS).iloc[-1].items()}
    return (connectivity.function_state(model, layer_masks), row,
            checkpoint.run_identity(meta))  # fmt: skip


def check_tables(who: str, got: Any) -> dict[str, list[dict[str, Any]]]:
    """What an ``analyse`` returned: tables by name (lower-case identifiers, none a run's own
    file), each a list of rows of plain values."""
    if not isinstance(got, dict):
        raise PluginError(f"{who} returned {type(got).__name__} from analyse; expected a dict "
                          "of tables by name")  # fmt: skip
    for name, table in got.items():
        if not isinstance(name, str) or not _TABLE.fullmatch(name) or name in RESERVED_TABLES:
            raise PluginError(f"{who}: table name {name!r} is not a lower-case identifier free "
                              "for a run folder's file")  # fmt: skip
        if not isinstance(table, list) or not all(isinstance(row, dict) for row in table):
            raise PluginError(f"{who}: table {name!r} is not a list of rows (dicts)")
        for row in table:
            for column, value in row.items():
                if not isinstance(column, str) or not (
                    value is None or isinstance(value, (bool, int, float, str))
                ):
                    kind_of = type(value).__name__
                    raise PluginError(f"{who}: table {name!r} column {column!r} holds a "
                                      f"{kind_of}; rows hold plain values")  # fmt: skip
    return got


def analyse_round(
    plan: BranchPlan, round_index: int, plugins: Plugins, cache: dict[tuple, DatasetSplits],
    evaluators: dict[Path, Evaluator] | None = None,
) -> bool:  # fmt: skip
    """Round r's analysis, if the kind has one and all the plan's trials of r are trained:
    the kind's tables written in ``<set>/round_<r>/`` with ``analysis.json`` (what they were
    computed from, so running again skips it, reading no checkpoint). ``evaluators``: the
    trunk's evaluator, kept across rounds. True when the round has its analysis."""
    branch = plan.branch
    kind = plugins.branches.get(branch.kind)
    if kind.analyse is None:
        return False
    networks = [branch.network(round_index, t) for t in range(plan.trials)]
    if not all(rows(n) for n in networks):
        return False
    identities = [checkpoint.run_identity(rundir.read_meta(n)) for n in networks]
    source = {"trials": plan.trials, "networks": identities}
    folder = paths.branch_round(branch.folder, round_index)
    marker = folder / paths.ANALYSIS
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("from") == source:
                return True
        except (OSError, ValueError):
            pass  # unreadable: compute it again
    found = [network_state(n) for n in networks]
    trunk = open_trunk(branch.trunk)
    evaluators = {} if evaluators is None else evaluators
    if trunk.path not in evaluators:
        evaluators[trunk.path] = Evaluator(trunk.config, plugins,
                                           data_for(trunk.config, plugins, cache))  # fmt: skip
    context = AnalysisContext(
        round_index=round_index,
        options=branch.options,
        config=trunk.config,
        states=[state for state, _, _ in found],
        rows=[row for _, row, _ in found],
        trunk_rows=[{str(k): v for k, v in row.items()}
                    for row in pd.read_csv(trunk.path / paths.RESULTS).to_dict("records")],
        evaluate=evaluators[trunk.path],
    )
    who = plugins.branches.who(branch.kind)
    got = guards.call(who, f"analysing round {round_index}", kind.analyse, context)
    tables = check_tables(who, got)
    for name, table in tables.items():
        files.write_csv(folder / f"{name}.csv", pd.DataFrame(table))
    files.write_json(marker, {"tables": sorted(tables), "from": source})
    return True


def write_analysis(folder: Path) -> dict[str, pd.DataFrame]:
    """A set's analysis tables: every analysed round's ``<name>.csv`` as ``<set>/<name>.csv``,
    then every set's rows of that name as ``<trunk>/<name>.csv`` (with a ``branch`` column,
    the set's folder name)."""
    rounds: dict[str, list[pd.DataFrame]] = {}
    for round_folder in paths.analysis_rounds(folder):
        names = json.loads((round_folder / paths.ANALYSIS).read_text()).get("tables", [])
        for name in names:
            file = round_folder / f"{name}.csv"
            if file.exists():
                rounds.setdefault(name, []).append(pd.read_csv(file))
    written = {}
    for name, frames in rounds.items():
        table = pd.concat(frames, ignore_index=True)
        files.write_csv(Path(folder) / f"{name}.csv", table)
        written[name] = trunk_table(Path(folder).parent.parent, name)
    return written


def trunk_table(trunk: Path, name: str) -> pd.DataFrame:
    """``<trunk>/<name>.csv``: every branch set's ``<name>.csv`` rows, with ``branch``."""
    frames = []
    for branch_folder in paths.branch_sets(trunk):
        file = branch_folder / f"{name}.csv"
        if file.exists():
            frame = pd.read_csv(file)
            frame.insert(0, "branch", branch_folder.name)
            frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not table.empty:
        files.write_csv(Path(trunk) / f"{name}.csv", table)
    return table


def analyse(plan: BranchPlan, plugins: Plugins, cache: dict[tuple, DatasetSplits]) -> None:
    """Every round of ``plan`` whose networks are all trained, analysed (where the kind
    analyses), and the set's and trunk's tables written."""
    if plugins.branches.get(plan.branch.kind).analyse is None:
        return
    evaluators: dict[Path, Evaluator] = {}
    for round_index in plan.rounds:
        analyse_round(plan, round_index, plugins, cache, evaluators)
    write_analysis(plan.branch.folder)

