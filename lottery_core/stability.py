"""``lottery stability``: the instability analysis of Frankle et al. (2020) on a finished run,
in one command.

For each k and each subnetwork kind asked for (the ticket, or the random-reinit and
random-prune controls), a ``stability`` branch set (``plugins/branches.py``): copies of round
r's subnetwork at iteration k trained with different data orders, and the linear path between
them evaluated (``connectivity``, ``batched_eval``). Every set is an ordinary branch set, so it
resumes, runs on Ray workers and lands in ``<run>/branches/stability-<hash>/``; the sets' rows
together are ``<run>/stability.csv`` (and the points of every path ``stability_path.csv``).
``--between-rounds`` adds Paul et al.'s (2023) barrier between the trained networks of
successive rounds (``between_rounds.csv``: evaluation only, from the weights the run kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import connectivity, files, paths
from .branch_analysis import Evaluator, trunk_table
from .branches import BranchPlan, data_for, open_trunk, plan_branch
from .errors import LotteryError
from .plugins import Plugins

KIND = "stability"
# the paper's controls as the stability kind names them; any other ``control`` is the ticket
CONTROL_KINDS = ("reinit", "random-prune")
TABLE = "stability"  # the analysis table the kind writes (and its path points: ``_path``)
DEFAULT_K = "0,100,500,2000"


@dataclass
class StabilityResult:
    """What a stability analysis returns: its rows of ``stability.csv``, the barriers between
    rounds (when asked for), and the run."""

    table: pd.DataFrame
    between: pd.DataFrame | None
    trunk: Path


def is_ticket(control: str) -> bool:
    """Whether a ``stability.csv`` row's ``control`` is the ticket itself, not a control."""
    return control not in CONTROL_KINDS


def parse_list(text: str | int | Sequence[str | int], flag: str) -> list[str]:
    """``"0,100,2ep"`` (or a list, or one number) as its entries, stripped; one line for an
    empty list."""
    if isinstance(text, int):
        text = str(text)
    items = text.split(",") if isinstance(text, str) else [str(v) for v in text]
    found = ["".join(str(v).split()).lower() for v in items if str(v).strip()]
    if not found:
        raise LotteryError(f"{flag} names nothing")
    return list(dict.fromkeys(found))


def plan_stability(
    run_dir: Path,
    plugins: Plugins,
    k: str | int | Sequence[str | int] = DEFAULT_K,
    controls: str | Sequence[str] | None = None,
    copies: int = 2,
    alphas: int = connectivity.ALPHAS,
    rounds: Sequence[int] | str | None = None,
    seed: int = 0,
    batched: bool | None = None,
) -> list[BranchPlan]:
    """A ``stability`` branch plan for every k x control (``controls`` ``None``: the ticket
    alone, the kind's default), each checked before anything is written (``rounds``: default
    every round the run finished, the dense round 0 included)."""
    if copies < 2:
        raise LotteryError(f"--copies must be at least 2 (got {copies}): the analysis compares "
                           "copies")  # fmt: skip
    if rounds is None:
        rounds = list(range(open_trunk(Path(run_dir)).done))
    plans = []
    chosen: list[str | None] = [None] if controls is None else [
        *parse_list(controls, "--control")]  # fmt: skip
    for control in chosen:
        for step in parse_list(k, "--k"):
            options: dict = {"k": step, "alphas": alphas}
            if control is not None:
                options["control"] = control
            plans.append(plan_branch(KIND, Path(run_dir), rounds, options, plugins, copies, seed,
                                     batched))  # fmt: skip
    return plans


def table_of(plans: Sequence[BranchPlan]) -> pd.DataFrame:
    """The plans' rows of their runs' ``stability.csv`` (which may hold other sets' too)."""
    trunks = {Path(plan.branch.trunk) for plan in plans}
    frames = [trunk_table(trunk, TABLE) for trunk in sorted(trunks)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if table.empty:
        return table
    wanted = {(plan.branch.folder.name, r) for plan in plans for r in plan.rounds}
    keep = [(b, int(r)) in wanted for b, r in zip(table["branch"], table["round"], strict=True)]
    return table[keep].sort_values(["control", "round", "k", "pair"]).reset_index(drop=True)


def between_rounds(
    run_dir: Path, plugins: Plugins, alphas: int = connectivity.ALPHAS
) -> pd.DataFrame:
    """Paul et al. (2023): the barrier on the linear path between the trained networks of
    rounds r and r+1 (their functions: each round's weights under its own mask), on the test
    set and the training subset, for every pair of successive rounds whose weights the run
    kept (``--keep-trained``; the last round's are in its checkpoint). Written to
    ``<run>/between_rounds.csv``; evaluation only."""
    trunk = open_trunk(Path(run_dir))
    weights = {r: trunk.trained(r) for r in range(trunk.done)}
    pairs = [r for r in range(trunk.done - 1) if weights[r] is not None
             and weights[r + 1] is not None]  # fmt: skip
    if not pairs:
        raise LotteryError(
            f"{str(trunk.path)!r} kept no two successive rounds' trained weights; run it with "
            "--keep-trained to compare rounds"
        )
    results = pd.read_csv(trunk.path / paths.RESULTS)
    remaining = dict(zip(results["round"].astype(int), results["remaining"], strict=True))
    evaluator = Evaluator(trunk.config, plugins, data_for(trunk.config, plugins, {}))
    rows = []
    for r in pairs:
        ends = [
            connectivity.function_state(weights[q] or {}, trunk.masks(q)) for q in (r, r + 1)
        ]
        points = connectivity.path(ends[0], ends[1], alphas)
        row: dict = {"round": r, "next_round": r + 1, "remaining": remaining.get(r),
                     "next_remaining": remaining.get(r + 1)}  # fmt: skip
        for split in ("test", "train"):
            errors = [100.0 - accuracy for _, accuracy in evaluator(points, split)]
            row[f"{split}_barrier"] = connectivity.barrier(errors)
            row[f"{split}_error_ends"] = (errors[0] + errors[-1]) / 2.0
        row["distance"] = connectivity.distance(ends[0], ends[1])
        rows.append(row)
    table = pd.DataFrame(rows)
    files.write_csv(trunk.path / paths.BETWEEN_ROUNDS, table)
    return table


def pivot(table: pd.DataFrame) -> pd.DataFrame:
    """Mean test barrier by subnetwork (control, round, remaining) and k, over pairs."""
    if table.empty:
        return table
    table = table.assign(remaining=table["remaining"].round(1))
    return table.pivot_table(
        index=["control", "round", "remaining"], columns="k", values="test_barrier",
        aggfunc="mean",
    )  # fmt: skip


def verdict(table: pd.DataFrame) -> list[str]:
    """The analysis in words: for each subnetwork, the least k tried from which it is stable
    (test barrier under 2 points at that k and every larger one) and whether it matches the
    dense network there."""
    lines: list[str] = []
    if table.empty:
        return lines
    label = {"reinit": "random reinit", "random-prune": "random pruning"}
    grouped = table.groupby(["control", "round"], sort=True)
    for (control, round_index), rows in grouped:
        by_k = rows.groupby("k").agg(barrier=("test_barrier", "mean"),
                                     matching=("matching", "mean")).sort_index()  # fmt: skip
        ks = list(by_k.index)
        stable_from = None
        for index in range(len(ks)):
            if (by_k["barrier"].iloc[index:] < connectivity.STABLE_BELOW).all():
                stable_from = ks[index]
                break
        remaining = float(rows["remaining"].iloc[0])
        name = "IMP" if is_ticket(str(control)) else label.get(str(control), str(control))
        who = f"{name} round {round_index} ({remaining:.1f}%)"
        if stable_from is None:
            lines.append(f"{who}: not stable at any k tried ({', '.join(map(str, ks))}); "
                         f"barrier {by_k['barrier'].iloc[-1]:.2f} at k={ks[-1]}")  # fmt: skip
            continue
        share = float(by_k.loc[stable_from, "matching"])
        match = "matching" if share == 1.0 else ("not matching" if share == 0.0 else
                                                 f"matching in {share:.0%} of pairs")  # fmt: skip
        lines.append(f"{who}: stable from k={stable_from} (barrier "
                     f"{by_k.loc[stable_from, 'barrier']:.2f} < {connectivity.STABLE_BELOW:g}), "
                     f"{match} there")  # fmt: skip
    return lines
