"""The per-round tables a terminal shows: one run's rows, or a group's aggregate."""

from __future__ import annotations

import pandas as pd

FORMATS = {
    "remaining": "{:.1f}",
    "val": "{:.2f}",
    "test": "{:.2f}",
    "final_test": "{:.2f}",
    "time_s": "{:.1f}",
}


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
