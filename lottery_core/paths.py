"""Every file and folder name of a run, a trials/controls group and a sweep, in one place.

A run folder holds ``config.json``, the checkpoint (and the one before it), the tables and the
ticket. A trials/controls group keeps its runs under ``runs/<experiment>/trial_<i>/``; a sweep
keeps its groups under ``points/<point>/`` beside ``sweep.toml`` and ``status.json``. Each
compound name has one builder and one parser here, so no other module spells or splits them.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

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
TRAINED = "trained"  # with keep_trained: trained/round_<r>.pt, each round's trained weights
TABLES = (HISTORY, LAYERS, TICKET, RESULTS)  # written after the checkpoint, in this order
OWN_FILES = (CONFIG, CHECKPOINT, PREVIOUS, *TABLES)

# -- a trials/controls group (its results.csv and config.json as above)
MAIN = "imp"  # the experiment of a group's IMP runs: runs/imp/trial_<i>/
AGGREGATE = "aggregate.csv"
RUNS = "runs"
TRIAL_PREFIX = "trial_"
_TRIAL = re.compile(rf"{TRIAL_PREFIX}(\d+)")

# -- branches of a run: <run>/branches/<kind>-<hash>/round_<r>/trial_<t>/, each a run folder
BRANCHES = "branches"
BRANCH = "branch.json"  # a branch set's kind, options, seed stream and trunk
ANALYSIS = "analysis.json"  # a branch round's analysis: the tables its kind wrote, from what
BETWEEN_ROUNDS = "between_rounds.csv"  # a run's barriers between successive rounds' networks
ROUND_PREFIX = "round_"
_ROUND = re.compile(rf"{ROUND_PREFIX}(\d+)")
_BRANCH_SET = re.compile(r"(.+)-([0-9a-f]{8})")

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


def trained_file(run_dir: Path, round_index: int) -> Path:
    """``<run>/trained/round_<r>.pt``: round r's trained weights (``keep_trained``)."""
    return Path(run_dir) / TRAINED / f"{ROUND_PREFIX}{round_index}.pt"


def branch_set(trunk: Path, kind: str, options: dict[str, Any], seed: int) -> Path:
    """``<trunk>/branches/<kind>-<hash>``: one branch kind with one set of options (``options``
    as JSON values) and branch seed; the hash is of all three, so the same branch command
    lands in the same folder."""
    blob = json.dumps({"kind": kind, "options": options, "seed": seed}, sort_keys=True)
    return Path(trunk) / BRANCHES / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def branch_sets(trunk: Path) -> list[Path]:
    """Every branch set of a run, sorted by name."""
    found = (Path(trunk) / BRANCHES).glob("*")
    return sorted(p for p in found if _BRANCH_SET.fullmatch(p.name) and p.is_dir())


def branch_kind_of(branch_set_dir: Path) -> str:
    """The kind named by a branch set's folder (``<kind>-<hash>``)."""
    match = _BRANCH_SET.fullmatch(Path(branch_set_dir).name)
    return match.group(1) if match else Path(branch_set_dir).name


def branch_dir(branch_set_dir: Path, round_index: int, trial: int) -> Path:
    """``<set>/round_<r>/trial_<t>``: one branch network, an ordinary run folder."""
    return Path(branch_set_dir) / f"{ROUND_PREFIX}{round_index}" / f"{TRIAL_PREFIX}{trial}"


def branch_round(branch_set_dir: Path, round_index: int) -> Path:
    """``<set>/round_<r>``: round r's networks, and its analysis tables (``<name>.csv``)."""
    return Path(branch_set_dir) / f"{ROUND_PREFIX}{round_index}"


def round_number(folder: Path) -> int | None:
    """The ``r`` of a ``round_<r>`` folder name, or ``None`` for any other name."""
    match = _ROUND.fullmatch(Path(folder).name)
    return int(match.group(1)) if match else None


def analysis_rounds(branch_set_dir: Path) -> list[Path]:
    """A branch set's round folders that hold an analysis, by round."""
    found = []
    for folder in Path(branch_set_dir).glob(f"{ROUND_PREFIX}*"):
        match = _ROUND.fullmatch(folder.name)
        if match and (folder / ANALYSIS).exists():
            found.append((int(match.group(1)), folder))
    return [folder for _, folder in sorted(found)]


def branch_of(folder: Path) -> tuple[Path, int, int] | None:
    """``(branch set, round, trial)`` of a branch's run folder, else ``None``."""
    path = Path(folder)
    trial = trial_number(path)
    match = _ROUND.fullmatch(path.parent.name)
    if trial is None or match is None or path.parent.parent.parent.name != BRANCHES:
        return None
    return path.parent.parent, int(match.group(1)), trial


def branch_dirs(branch_set_dir: Path) -> list[Path]:
    """A branch set's run folders, by round then trial."""
    found = []
    for folder in Path(branch_set_dir).glob(f"{ROUND_PREFIX}*/{TRIAL_PREFIX}*"):
        where = branch_of(folder)
        if where is not None:
            found.append((where[1], where[2], folder))
    return [folder for _, _, folder in sorted(found)]


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (how units and status lines name a run), else as given."""
    try:
        return str(Path(path).absolute().relative_to(Path(root).absolute()))
    except ValueError:
        return str(path)
