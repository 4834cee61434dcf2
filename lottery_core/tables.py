"""Per-round tables: a group's statistics over trials, and what a terminal shows of them.

``aggregate`` sits this low because a group writes its ``aggregate.csv`` with it and a report
plots it: the group need not import the report's rendering to do so.
"""

from __future__ import annotations

import pandas as pd

from .errors import LotteryError

METRICS = ("ES", "val", "test")
STATS = ("mean", "std", "min", "max")

FORMATS = {
    "remaining": "{:.1f}",
    "val": "{:.2f}",
    "test": "{:.2f}",
    "final_test": "{:.2f}",
    "time_s": "{:.1f}",
}


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, round) statistics over trials, as the paper's figures plot them.

    Groups ``frame`` (rows of ``results.csv``, possibly several trials and experiments) by
    ``experiment`` when that column exists, and by ``round``. Returns ``remaining`` (mean),
    ``trials`` (how many rows were combined) and ``ES_mean, ES_std, ES_min, ES_max`` and the
    same for ``val`` and ``test``. The std is pandas' sample std (ddof=1), so it is NaN, not 0,
    for a single trial: one trial says nothing about the spread. Experiments keep their order
    of first appearance; rounds are ascending.
    """
    keys = ["experiment", "round"] if "experiment" in frame.columns else ["round"]
    missing = {"round", "remaining", *METRICS} - set(frame.columns)
    if missing:
        raise LotteryError(f"results table lacks the columns {', '.join(sorted(missing))}")
    columns = keys + ["remaining", "trials"] + [f"{m}_{s}" for m in METRICS for s in STATS]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    grouped = frame.groupby(keys, sort=False)
    out = grouped["remaining"].mean().to_frame()
    out["trials"] = grouped["trial"].nunique() if "trial" in frame.columns else grouped.size()
    for metric in METRICS:
        stats = grouped[metric].agg(list(STATS))
        for stat in STATS:
            out[f"{metric}_{stat}"] = stats[stat]
    out = out.reset_index()
    if "experiment" in keys:
        order = {name: i for i, name in enumerate(pd.unique(frame["experiment"]))}
        out = out.assign(_order=out["experiment"].map(order))
        out = out.sort_values(["_order", "round"], kind="stable").drop(columns="_order")
    else:
        out = out.sort_values("round", kind="stable")
    return out[columns].reset_index(drop=True)


def summary_table(frame: pd.DataFrame) -> str:
    """One run: round, remaining, ES, val and test accuracy at ES, final test, time."""
    columns = [
        c
        for c in ("round", "remaining", "ES", "val", "test", "final_test", "time_s", "flag")
        if c in frame.columns
    ]
    shown = frame[columns].copy()
    for column, fmt in FORMATS.items():
        if column in shown:
            shown[column] = shown[column].map(fmt.format)
    if "flag" in shown:
        shown["flag"] = [flag if isinstance(flag, str) else "" for flag in shown["flag"]]
    return shown.to_string(index=False)


def aggregate_table(frame: pd.DataFrame) -> str:
    """Mean test accuracy at ES (min-max over trials) per experiment and round."""
    lines = []
    for name, part in frame.groupby("experiment", sort=False):
        lines.append(f"[{name}]")
        shown = part[["round", "remaining"]].copy()
        shown["remaining"] = shown["remaining"].map(FORMATS["remaining"].format)
        shown["ES"] = part["ES_mean"].map("{:.0f}".format)
        shown["test"] = [
            f"{m:.2f} ({lo:.2f}-{hi:.2f})"
            for m, lo, hi in zip(part["test_mean"], part["test_min"], part["test_max"], strict=True)
        ]
        lines.append(shown.to_string(index=False))
    return "\n".join(lines)


def branch_table(rows: pd.DataFrame, trunk: pd.DataFrame) -> str:
    """A branch's networks, by round and trial, beside the trunk's test accuracy at ES for the
    same round (``trunk test``) and the difference (``vs trunk``, in points)."""
    if rows.empty:
        return "(no network finished)"
    shown = rows[["round", "trial", "remaining", "ES", "val", "test"]].copy()
    by_round = dict(zip(trunk["round"], trunk["test"], strict=True))
    shown["trunk test"] = [by_round.get(r, float("nan")) for r in shown["round"]]
    shown["vs trunk"] = shown["test"] - shown["trunk test"]
    for column, fmt in {**FORMATS, "trunk test": "{:.2f}", "vs trunk": "{:+.2f}"}.items():
        if column in shown:
            shown[column] = shown[column].map(fmt.format)
    return shown.to_string(index=False)
