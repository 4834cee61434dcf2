"""Every file and folder name of a run, a trials/controls group and a sweep, in one place.

A run folder holds ``config.json``, the checkpoint (and the one before it), the tables and the
ticket. A trials/controls group keeps its runs under ``runs/<experiment>/trial_<i>/``; a sweep
keeps its groups under ``points/<point>/`` beside ``sweep.toml`` and ``status.json``. Each
compound name has one builder and one parser here, so no other module spells or splits them.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS_ROOT = Path("results")  # where a run without --out goes

# -- a run folder
CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"  # the checkpoint of the round before, kept as a fallback
SET_ASIDE = "checkpoint.damaged"  # where --from-previous moves a damaged checkpoint.pt
RESULTS = "results.csv"
HISTORY = "history.csv"
LAYERS = "layers.csv"
TICKET = "ticket.pt"
LOCK = ".lock"
TABLES = (HISTORY, LAYERS, TICKET, RESULTS)  # written after the checkpoint, in this order
OWN_FILES = (CONFIG, CHECKPOINT, PREVIOUS, *TABLES)

# -- a trials/controls group (its results.csv and config.json as above)
AGGREGATE = "aggregate.csv"
RUNS = "runs"
TRIAL_PREFIX = "trial_"
_TRIAL = re.compile(rf"{TRIAL_PREFIX}(\d+)")

# -- a sweep
SWEEP = "sweep.toml"  # the sweep as run
POINTS = "points"
STATUS = "status.json"


def trial_dir(group: Path, experiment: str, trial: int) -> Path:
    """``<group>/runs/<experiment>/trial_<trial>``."""
    return Path(group) / RUNS / experiment / f"{TRIAL_PREFIX}{trial}"


def trial_number(folder: Path) -> int | None:
    """The ``i`` of a ``trial_<i>`` folder name, or ``None`` for any other name."""
    match = _TRIAL.fullmatch(Path(folder).name)
    return int(match.group(1)) if match else None


def trial_of(folder: Path) -> tuple[Path, str, int] | None:
    """``(group, experiment, trial)`` of a run folder inside a group, else ``None``."""
    path = Path(folder)
    number = trial_number(path)
    if number is None or path.parent.parent.name != RUNS:
        return None
    return path.parent.parent.parent, path.parent.name, number


def trial_dirs(group: Path, experiment: str) -> list[Path]:
    """An experiment's run folders in a group, in trial order."""
    found = [p for p in (Path(group) / RUNS / experiment).glob(f"{TRIAL_PREFIX}*")
             if trial_number(p) is not None]  # fmt: skip
    return sorted(found, key=lambda p: trial_number(p) or 0)


def group_runs(group: Path) -> list[Path]:
    """Every run folder of a group, sorted by path (the row order of the group's tables)."""
    found = (Path(group) / RUNS).glob(f"*/{TRIAL_PREFIX}*")
    return sorted(p for p in found if trial_number(p) is not None)


def point_dir(sweep: Path, point: str) -> Path:
    """``<sweep>/points/<point>``: one grid point's group folder."""
    return Path(sweep) / POINTS / point
