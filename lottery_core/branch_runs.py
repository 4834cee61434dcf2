"""Running branches: a plan's networks one after another in this process, or as units on the
Ray engine (several plans at once), each set analysed once its rounds are trained
(``branch_analysis``); with ``batched`` a set's networks train together as one batched model
(``branch_batch``), one unit per set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import paths, rundir
from .branch_analysis import analyse
from .branch_batch import train_batched
from .branches import (
    BranchPlan,
    BranchSet,
    preflight,
    rows,
    table_of,
    train_network,
    validate_options,
    write_table,
)  # fmt: skip
from .engine import Engine, Event, Plan, Unit
from .errors import RunFailed, Stopped
from .parallel import execute
from .plugins import Plugins
from .specs import DatasetSplits

BRANCH_UNIT = "lottery_core.branch_runs:branch_unit"  # what a parallel unit runs in its worker


def run_serial(
    plan: BranchPlan,
    plugins: Plugins,
    progress: bool = True,
    cache: dict[tuple, DatasetSplits] | None = None,
) -> pd.DataFrame:
    """Every network of ``plan`` in this process, one after another (``cache``: data sets
    already loaded, by ``loading.data_key``)."""
    cache = {} if cache is None else cache
    preflight(plan, plugins, cache)
    plan.branch.write()
    try:
        if batched(plan):
            train_batched([(plan.branch, plan.networks())], plugins, cache)
        for round_index, trial in plan.networks():  # all, or those a batched model could not
            train_network(plan.branch, round_index, trial, plugins, cache, progress=progress)
    finally:
        write_table(plan.branch.folder)
    analyse(plan, plugins, cache)
    return table_of(plan)


def train_together(
    plans: Sequence[BranchPlan], plugins: Plugins, cache: dict[tuple, DatasetSplits]
) -> list[int]:
    """The networks of every batched plan (stability's sets: each k x control) trained as
    batched models across plans, those of equal settings as one, every plan checked before
    any is written; ``run_serial`` then finds them done and writes each set's tables. Returns
    the members of each batched model."""
    together = [plan for plan in plans if batched(plan)]
    if len(together) < 2:
        return []
    for plan in together:
        preflight(plan, plugins, cache)
    for plan in together:
        plan.branch.write()
    return train_batched([(plan.branch, plan.networks()) for plan in together], plugins, cache)


def run_parallel(
    plan: BranchPlan, plugins: Plugins, engine_plan: Plan, progress: bool = True
) -> pd.DataFrame:
    """Every network of ``plan`` as a unit on Ray; ``RunFailed`` lists the failures."""
    run_plans([plan], plugins, engine_plan, progress)
    return table_of(plan)


def run_plans(
    plans: Sequence[BranchPlan], plugins: Plugins, engine_plan: Plan, progress: bool = True
) -> None:
    """Every network of several plans (on one trunk or many) as units on one Ray engine,
    then each plan's analysis; ``RunFailed`` lists the failures."""
    cache: dict[tuple, DatasetSplits] = {}
    for plan in plans:
        preflight(plan, plugins, cache)
    for plan in plans:
        plan.branch.write()
    todo: list[Unit] = []
    folder_of: dict[str, Path] = {}
    trunks = {Path(plan.branch.trunk).absolute() for plan in plans}
    for plan in plans:
        device = rundir.read_meta(plan.branch.trunk)["config"].get("device", "auto")
        # units named as short as stays unique: in the set, in the trunk's branches, or here
        if len(plans) == 1:
            root = plan.branch.folder
        elif len(trunks) == 1:
            root = plan.branch.folder.parent
        else:
            root = Path.cwd()
        found = units(plan, root, gpu=device != "cpu")
        folder_of.update({unit.run: plan.branch.folder for unit in found})
        todo.extend(found)
    failures: dict[str, str] = {}
    if todo:

        def on_event(event: Event) -> None:
            if event.outcome is not None and event.unit is not None:
                write_table(folder_of[event.unit.run])
                if not event.outcome.ok and event.outcome.error != "cancelled":
                    failures[event.unit.run] = event.outcome.error

        with Engine(engine_plan) as engine:
            outcomes = execute(engine, todo, on_event, progress)
        for plan in plans:
            write_table(plan.branch.folder)
        if outcomes is None:
            where = ", ".join(sorted({str(plan.branch.folder) for plan in plans}))
            raise Stopped(f"\nInterrupted: finished networks are saved in {where}; run the "
                          "same command again to continue")  # fmt: skip
    if failures:
        listed = "; ".join(f"{run}: {error}" for run, error in failures.items())
        raise RunFailed(f"{len(failures)} network(s) failed: {listed}; run the same command "
                        "again to continue")  # fmt: skip
    for plan in plans:
        analyse(plan, plugins, cache)


def batched(plan: BranchPlan) -> bool:
    """Whether ``plan``'s networks train as one batched model: as the plan says, else as the
    trunk's config (``batched``)."""
    if plan.branch.batched is not None:
        return plan.branch.batched
    if not (Path(plan.branch.trunk) / paths.CONFIG).exists():  # a trunk yet to start
        return False
    return bool(rundir.read_meta(plan.branch.trunk)["config"].get("batched", False))


def units(plan: BranchPlan, root: Path, after: tuple[str, ...] = (), gpu: bool = True
          ) -> list[Unit]:  # fmt: skip
    """A unit per network still to train (batched: one for all of them), named by its folder
    relative to ``root``; ``after``: the units that must finish first (a group's trunk);
    ``gpu``: may ask for a GPU share."""
    branch = plan.branch
    left = [(r, t) for r, t in plan.networks() if not rows(branch.network(r, t))]
    common = {"trunk": str(Path(branch.trunk).absolute()), "kind": branch.kind,
              "options": branch.options.model_dump(mode="json"), "seed": branch.seed,
              "cwd": str(Path.cwd())}  # fmt: skip
    if batched(plan) and left:
        name = paths.relative(branch.folder, root) if branch.folder != Path(root) else "."
        paths_left = [branch.network(r, t) for r, t in left]
        kwargs = {**common, "networks": [list(n) for n in left], "batched": True}
        return [Unit(name, name, BRANCH_UNIT, kwargs, after, len(left), _counter(paths_left),
                     gpu)]  # fmt: skip
    found = []
    for round_index, trial in left:
        path = branch.network(round_index, trial)
        name = paths.relative(path, root)
        kwargs = {**common, "round_index": round_index, "trial": trial}
        found.append(Unit(name, name, BRANCH_UNIT, kwargs, after, 1, _counter([path]), gpu))
    return found


def _counter(networks: list[Path]) -> Callable[[], int]:
    return lambda: sum(rows(path) for path in networks)


_DATA: dict[tuple, DatasetSplits] = {}  # a worker's data set, kept across its units


def branch_unit(
    trunk: str, kind: str, options: dict[str, Any], seed: int, cwd: str,
    round_index: int | None = None, trial: int | None = None,
    networks: list[list[int]] | None = None, batched: bool | None = None,
) -> int:  # fmt: skip
    """One network (or, batched, ``networks`` as one model) in a Ray worker (a process of its
    own: it finds the installed plugins itself), in the driver's folder ``cwd``."""
    from .plugins import get_plugins

    plugins = get_plugins()
    branch_kind = plugins.branches.get(kind)
    chosen = validate_options(branch_kind, plugins.branches.who(kind), options)
    branch = BranchSet(Path(trunk), kind, chosen, seed, batched)
    branch.write()
    # in the driver's folder ``cwd`` (``engine.call``): a relative data_dir is the driver's; the
    # set's results.csv is the driver's to write, after every unit (no two workers race on it)
    if networks is not None:
        pairs = [(int(r), int(t)) for r, t in networks]
        train_batched([(branch, pairs)], plugins, _DATA)
        for r, t in pairs:  # any a batched model could not train
            train_network(branch, r, t, plugins, _DATA)
        return sum(rows(branch.network(r, t)) for r, t in pairs)
    assert round_index is not None and trial is not None
    train_network(branch, round_index, trial, plugins, _DATA)
    return rows(branch.network(round_index, trial))


@dataclass
class BranchResult:
    """What ``run_branch`` returns: the networks' rows, the trunk's rows, the set's folder and
    its analysis tables by name (a kind with ``analyse``: the plan's rounds' rows)."""

    results: pd.DataFrame
    trunk: pd.DataFrame
    folder: Path
    data_source: str = ""
    analysis: dict[str, pd.DataFrame] = field(default_factory=dict)


def result_of(plan: BranchPlan, table: pd.DataFrame) -> BranchResult:
    trunk = plan.branch.trunk
    meta = rundir.read_meta(trunk)
    frames: dict[str, list[pd.DataFrame]] = {}
    for round_folder in paths.analysis_rounds(plan.branch.folder):
        if paths.round_number(round_folder) not in plan.rounds:
            continue
        for name in json.loads((round_folder / paths.ANALYSIS).read_text()).get("tables", []):
            frames.setdefault(name, []).append(pd.read_csv(round_folder / f"{name}.csv"))
    analysis = {name: pd.concat(found, ignore_index=True) for name, found in frames.items()}
    return BranchResult(table, pd.read_csv(trunk / paths.RESULTS), plan.branch.folder,
                        str(meta.get("data_source", "")), analysis)  # fmt: skip
