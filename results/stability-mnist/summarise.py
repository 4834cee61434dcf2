"""Gather the trunks' stability tables into this folder and print the summary tables.

python results/stability-mnist/summarise.py SWEEP_FOLDER
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
TABLES = ("results.csv", "stability.csv", "stability_path.csv", "between_rounds.csv")
RUN_FILES = ("config.json", "results.csv", "history.csv", "layers.csv", *TABLES[1:])


def gather(sweep: Path) -> dict[str, pd.DataFrame]:
    """Every trunk's tables with its point (optimizer) and trial; each trunk's config.json and
    each stability set's branch.json and one copy's config.json copied here under runs/."""
    found: dict[str, list[pd.DataFrame]] = {}
    for run in sorted(sweep.glob("points/*/runs/imp/trial_*")):
        optimizer = json.loads((run / "config.json").read_text())["config"]["optimizer"]
        trial = int(run.name.split("_")[1])
        target = HERE / "runs" / optimizer / run.name
        target.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:  # the trunk's own tables, so `lottery report` redraws it
            if (run / name).exists():
                shutil.copy(run / name, target / name)
        for branch_set in sorted((run / "branches").glob("stability-*")):
            (target / "branches" / branch_set.name).mkdir(parents=True, exist_ok=True)
            for name in ("branch.json", "results.csv", "stability.csv"):
                shutil.copy(branch_set / name, target / "branches" / branch_set.name)
            copy = next(branch_set.glob("round_*/trial_0/config.json"), None)
            if copy is not None:
                shutil.copy(copy, target / "branches" / branch_set.name / "copy_config.json")
        for name in TABLES:
            file = run / name
            if file.exists():
                frame = pd.read_csv(file)
                frame.insert(0, "trial", trial)
                frame.insert(0, "optimizer", optimizer)
                found.setdefault(name, []).append(frame)
    return {name: pd.concat(frames, ignore_index=True) for name, frames in found.items()}


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer, control, round and k: test barrier mean and std over trials (each trial's
    one pair of copies), stable and matching counts."""
    return (
        table.groupby(["optimizer", "control", "round", "k"])
        .agg(remaining=("remaining", "first"), trials=("test_barrier", "size"),
             test_barrier=("test_barrier", "mean"), sd=("test_barrier", "std"),
             train_barrier=("train_barrier", "mean"), stable=("stable", "sum"),
             matching=("matching", "sum"), final_test=("final_test", "mean"),
             dense=("dense_final_test", "mean"))
        .reset_index()
    )


def markdown(frame: pd.DataFrame) -> str:
    """A pipe table (pandas' own needs the tabulate package)."""
    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    tables = gather(Path(sys.argv[1]))
    for name, frame in tables.items():
        frame.to_csv(HERE / name, index=False)
    if "stability.csv" in tables:
        table = summary(tables["stability.csv"])
        table.to_csv(HERE / "summary.csv", index=False)
        print(markdown(table))
    if "between_rounds.csv" in tables:
        between = tables["between_rounds.csv"].groupby(["optimizer", "round", "next_round"]).agg(
            remaining=("next_remaining", "first"), test_barrier=("test_barrier", "mean"),
            sd=("test_barrier", "std"), train_barrier=("train_barrier", "mean")).reset_index()
        print()
        print(markdown(between))


if __name__ == "__main__":
    main()
