"""A report's inputs: the run, group and sweep folders it reads, and the checks they must pass.

A *series* is one curve of a figure: a single run folder, one experiment (``imp``, or the
controls ``reinit`` and ``random-prune``) of a trials/controls group folder, whose trials are
averaged with a min/max band as in the paper, or a branch set of a run (``lottery branch``),
read with its trunk's dense round as its round 0. Everything is read from the files a run writes,
so a report can be made while a long run is still going.

A report never gives a verdict over tables it cannot trust: where a run folder has a checkpoint,
the checkpoint must verify (checksum, identity, ``config.json``) and every table beside it must
say what it says (``rundir.check_tables``); without one, the tables must parse, list each round
from 0 once, and have a number in every key column. Anything else is one line naming the file.

A run folder's instability analysis (``lottery stability``: ``stability.csv``, the points of its
paths in ``stability_path.csv``, and ``between_rounds.csv``) is read beside it
(``load_stability``) and checked alike; its ``stability`` branch sets are that analysis, not
series of the figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import files, paths, rundir
from .errors import LotteryError
from .tables import METRICS, aggregate

MAIN_EXPERIMENT = paths.MAIN
# ``lottery stability``'s tables in a run folder (``stability.TABLE``, its path points, and Paul
# et al.'s barriers between successive rounds), and the kind of its branch sets.
STABILITY = "stability.csv"
STABILITY_PATH = "stability_path.csv"
BETWEEN_ROUNDS = paths.BETWEEN_ROUNDS
STABILITY_KIND = "stability"


@dataclass
class Trial:
    """One run folder's tables and its ``config.json``."""

    folder: Path
    meta: dict[str, Any]
    results: pd.DataFrame
    history: pd.DataFrame
    layers: pd.DataFrame


@dataclass
class Series:
    """One curve: the trials of one experiment, from one folder given by the user."""

    label: str
    folder: Path
    experiment: str | None
    trials: list[Trial] = field(default_factory=list)
    # Where it came from, for the report's legend: the position of the folder given among the
    # folders given, what that folder is ("run", a "branch" set beside a run, a "group", a
    # "sweep"), and the series' name within it (the label without a folder's prefix).
    source: int = 0
    origin: str = ""
    name: str = ""

    @property
    def config(self) -> dict[str, Any]:
        """The first trial's config, by which the setup line and layer note describe the series."""
        return self.trials[0].meta.get("config", {})

    def frame(self) -> pd.DataFrame:
        """Every trial's ``results.csv`` rows, with a ``trial`` column."""
        frames = [t.results.assign(trial=i) for i, t in enumerate(self.trials)]
        return pd.concat(frames, ignore_index=True)

    def summary(self) -> pd.DataFrame:
        """Per-round statistics over the trials (``tables.aggregate``), as the figures plot them."""
        return aggregate(self.frame())

    def trial_names(self) -> list[str]:
        """Each trial's name in the report: its folder's (``trial_0``), or for a group's branch
        set, its trunk's; by position (``trial 0``) where those would not tell them apart."""
        names = [t.folder.parent.parent.name if (t.folder / paths.BRANCH).is_file()
                 else t.folder.name for t in self.trials]  # fmt: skip
        if len(set(names)) < len(names):
            names = [f"trial {i}" for i in range(len(names))]
        return names

    def flags(self) -> dict[int, list[str]]:
        """Each flagged round's flags (``divergence``), naming the trial when there are several."""
        found: dict[int, list[str]] = {}
        for trial, name in zip(self.trials, self.trial_names(), strict=True):
            if "flag" not in trial.results:
                continue
            results = trial.results
            for round_index, flag in zip(results["round"], results["flag"], strict=True):
                if isinstance(flag, str) and flag:
                    where = f" in {name}" if len(self.trials) > 1 else ""
                    found.setdefault(int(round_index), []).append(flag + where)
        return found


class Unfinished(LotteryError):
    """A run folder with no finished round yet: a group's report skips it with a note."""


def _read_csv(path: Path, required: bool) -> pd.DataFrame:
    """A table of a folder without a checkpoint; one line naming the file if it cannot be read."""
    if not path.is_file():
        if required:
            raise Unfinished(
                f"{str(path.parent)!r} has no {path.name}: not a lottery run or trials folder"
            )
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LotteryError(f"{str(path)!r} is not a readable table ({first})") from None
    except OSError as exc:
        raise LotteryError(f"{str(path)!r} cannot be read: {files.reason(exc)}") from None


# Columns each table must have, and those of them that must hold a finite number in every row.
KEY_COLUMNS = {
    rundir.RESULTS: (("round", "remaining", *METRICS), ("round", "remaining", *METRICS)),
    rundir.HISTORY: (("round", "iteration", "val_acc"), ("round", "iteration", "val_acc")),
    rundir.LAYERS: (
        ("round", "layer", "kind", "remaining_pct", "target_pct"),
        ("round", "remaining_pct"),
    ),
    STABILITY: (
        ("round", "remaining", "k", "control", "pair", "test_barrier", "stable", "matching"),
        ("round", "remaining", "k", "test_barrier"),
    ),
    STABILITY_PATH: (
        ("round", "k", "control", "pair", "split", "alpha", "error"),
        ("round", "k", "alpha", "error"),
    ),
    BETWEEN_ROUNDS: (
        ("round", "next_round", "remaining", "next_remaining", "test_barrier"),
        ("round", "next_round", "remaining", "next_remaining", "test_barrier"),
    ),
}


def _damaged(path: Path, column: str, row: int, value: Any, what: str) -> LotteryError:
    """One line: ``path``'s ``column`` holds no ``what`` at ``row`` (0-based)."""
    shown = repr(value) if isinstance(value, str) else str(value)
    return LotteryError(
        f"{str(path)!r} has no {what} in column {column} (row {row + 1}: {shown}): the table "
        "is damaged; no report over it"
    )


def check_table(frame: pd.DataFrame, path: Path, first: int = 0) -> pd.DataFrame:
    """``frame`` (the table in ``path``) if it is whole: its columns, a finite number in each
    key column, and for ``results.csv`` each round from ``first`` (0; a branch network's own
    round) exactly once; else one line."""
    if frame.empty and path.name != rundir.RESULTS:
        return frame
    columns, numeric = KEY_COLUMNS[path.name]
    missing = set(columns) - set(frame.columns)
    if missing:
        raise LotteryError(f"{str(path)!r} lacks the columns {', '.join(sorted(missing))}")
    if frame.empty:
        raise Unfinished(f"{str(path.parent)!r} has no finished round yet")
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise _damaged(path, column, row, frame[column].iloc[row], "number")
        frame[column] = values
    if path.name == rundir.RESULTS:
        rounds = frame["round"]
        if not (rounds == rounds.round()).all():
            raise LotteryError(f"{str(path)!r} has a round that is not a whole number")
        rounds = rounds.astype(int)
        frame["round"] = rounds
        twice = sorted(set(rounds[rounds.duplicated()]))
        if twice:
            raise LotteryError(
                f"{str(path)!r} lists round {twice[0]} more than once: the table is damaged; "
                "no verdict over it"
            )
        lacking = sorted(set(range(first, int(rounds.max()) + 1)) - set(rounds))
        if lacking or rounds.min() < first:
            listed = ", ".join(map(str, sorted(rounds)))
            gap = ", ".join(map(str, lacking)) if lacking else "a negative round"
            raise LotteryError(
                f"{str(path)!r} lacks round {gap} (it lists {listed}): the table is damaged; "
                "no verdict over a gap"
            )
    return frame


def _whole(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    """``columns`` of ``frame`` (numbers already) as whole numbers; else one line."""
    for column in columns:
        values = frame[column]
        bad = np.flatnonzero((values != values.round()).to_numpy())
        if bad.size:
            raise _damaged(path, column, int(bad[0]), values.iloc[bad[0]], "whole number")
        frame[column] = values.astype(int)


_TRUTH = {"true": True, "false": False}


def _truth(value: Any) -> bool | None:
    """A ``True``/``False`` cell as pandas or a hand edit leaves it; ``None`` for anything else."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    return _TRUTH.get(value.strip().lower()) if isinstance(value, str) else None


def check_stability(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """One of ``lottery stability``'s tables if it is whole (``check_table``'s columns and
    numbers; rounds and k whole numbers, ``stable`` and ``matching`` true or false, a name in
    each of ``control`` and ``split``); else one line naming the file."""
    frame = check_table(frame, path)
    if frame.empty:
        return frame
    _whole(frame, path, tuple(c for c in ("round", "next_round", "k") if c in frame))
    for column in ("stable", "matching"):
        if column in frame:
            truth = [_truth(v) for v in frame[column]]
            if None in truth:
                row = truth.index(None)
                raise _damaged(path, column, row, frame[column].iloc[row], "True or False")
            frame[column] = truth
    for column in ("control", "split"):
        if column in frame:
            names = frame[column]
            bad = [i for i, v in enumerate(names) if not isinstance(v, str) or not v.strip()]
            if bad:
                raise _damaged(path, column, bad[0], names.iloc[bad[0]], "name")
    return frame


@dataclass
class Stability:
    """A run folder's instability analysis (``lottery stability``): the rows of its
    ``stability.csv``, the points of its paths, the barriers between successive rounds; each
    empty where the run has no such file. ``label``: the run's name in the report."""

    label: str
    folder: Path
    table: pd.DataFrame
    path: pd.DataFrame
    between: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.table.empty and self.between.empty


def read_stability(folder: Path, label: str) -> Stability | None:
    """``folder``'s instability analysis, ``None`` where it has none; one line naming the file
    for a table that cannot be read or is damaged."""
    folder = Path(folder)
    names = (STABILITY, STABILITY_PATH, BETWEEN_ROUNDS)
    if not any((folder / name).exists() for name in names):
        return None
    tables = [check_stability(_read_csv(folder / name, required=False), folder / name)
              for name in names]  # fmt: skip
    found = Stability(label, folder, *tables)
    return None if found.empty else found


def load_stability(series: list[Series]) -> list[Stability]:
    """The instability analyses of the run folders among ``series``' trials (a branch set's
    networks have none), in the order of the series, each once."""
    found: list[Stability] = []
    seen: set[Path] = set()
    for item in series:
        for trial, name in zip(item.trials, item.trial_names(), strict=True):
            folder = trial.folder.resolve()
            if (trial.folder / paths.BRANCH).is_file() or folder in seen:
                continue
            seen.add(folder)
            label = item.label if len(item.trials) == 1 else f"{item.label}, {name}"
            analysis = read_stability(trial.folder, label)
            if analysis is not None:
                found.append(analysis)
    return found


def read_trial(folder: Path) -> Trial:
    """A single run folder (or a branch set: ``read_branch_set``); an error naming it if it is
    missing, has no finished round, or its files cannot be trusted (module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LotteryError(f"{str(folder)!r} does not exist or is not a folder")
    if (folder / paths.BRANCH).is_file():
        return read_branch_set(folder)
    meta: dict[str, Any] = {}
    if (folder / rundir.CHECKPOINT).exists():
        meta = rundir.read_meta(folder)
        try:
            body = rundir.verified(folder, meta)
        except LotteryError as exc:
            raise LotteryError(f"{exc}{rundir.fallback_hint(folder, meta)}") from None
        rundir.check_tables(folder, body, names=(rundir.RESULTS, rundir.HISTORY, rundir.LAYERS))
        results, history, layers = rundir.tables_of(body)
    else:
        results = _read_csv(folder / rundir.RESULTS, required=True)
        history = _read_csv(folder / rundir.HISTORY, required=False)
        layers = _read_csv(folder / rundir.LAYERS, required=False)
        if (folder / rundir.CONFIG).is_file():
            meta = rundir.read_meta(folder)
    branch = meta.get("branch")
    first = int(branch["round"]) if isinstance(branch, dict) and "round" in branch else 0
    results = check_table(results, folder / rundir.RESULTS, first)
    return Trial(
        folder,
        meta,
        results.sort_values("round", ignore_index=True),
        check_table(history, folder / rundir.HISTORY),
        check_table(layers, folder / rundir.LAYERS),
    )


def branch_trials(folder: Path) -> list[int]:
    """The branch trials a branch set holds (``--trials``), ascending."""
    return sorted({paths.trial_number(n) or 0 for n in paths.branch_dirs(folder)})


def read_branch_set(folder: Path, trial: int = 0) -> Trial:
    """Trial ``trial`` of a branch set as one trial of a curve: its trunk's dense round as
    round 0 (unless the set branched from round 0 too: then its own network's), then that
    trial's network at each round, every network's files verified like a run's. Its ``meta``
    is the trunk's, with the set's ``branch.json``."""
    folder = Path(folder)
    trunk = read_trial(folder.parent.parent)
    networks = [n for n in paths.branch_dirs(folder) if paths.trial_number(n) == trial]
    trials = []
    for network in networks:
        try:
            trials.append(read_trial(network))
        except Unfinished:  # still training: the curve has the rounds that finished
            continue
    if not trials:
        raise Unfinished(f"{str(folder)!r} has no finished network yet")

    def dense(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["round"] == 0] if "round" in frame else frame

    own_dense = any(bool((t.results["round"] == 0).any()) for t in trials)

    def joined(part: str) -> pd.DataFrame:
        frames = [*([] if own_dense else [dense(getattr(trunk, part))]),
                  *(getattr(t, part) for t in trials)]  # fmt: skip
        return pd.concat(frames, ignore_index=True).sort_values("round", ignore_index=True)

    try:
        record = json.loads((folder / paths.BRANCH).read_text())
    except (OSError, ValueError) as exc:
        raise LotteryError(f"{str(folder / paths.BRANCH)!r} is not readable JSON ({exc})") from None
    meta = {**trunk.meta, "branch": record}
    return Trial(folder, meta, joined("results"), joined("history"), joined("layers"))


def _option_default(record: dict[str, Any], name: str) -> Any:
    """The default of option ``name`` of the record's branch kind (``None`` if the kind is not
    installed or has no such option): a legend names only the options a branch changed."""
    from .plugins import get_plugins

    kinds = get_plugins().branches
    kind = record.get("kind")
    if kind not in kinds.items:
        return None
    field = kinds.items[kind].options.model_fields.get(name)
    return None if field is None else field.get_default(call_default_factory=True)


def branch_label(folder: Path) -> str:
    """A branch set's name in a legend: its kind, and its options where it has any."""
    try:
        record = json.loads((Path(folder) / paths.BRANCH).read_text())
    except (OSError, ValueError):
        return paths.branch_kind_of(folder)
    given = record.get("options", {})
    options = ", ".join(f"{k}={v}" for k, v in given.items()
                        if v is not None and v != _option_default(record, k))  # fmt: skip
    seed = f", seed {record['seed']}" if record.get("seed") else ""
    return f"{record.get('kind', paths.branch_kind_of(folder))}" + (
        f" ({options}{seed})" if options or seed else ""
    )


def is_group(folder: Path) -> bool:
    """A trials/controls folder keeps its runs under ``runs/<experiment>/trial_<i>/``."""
    return rundir.kind(folder) == "group"


def read_group(folder: Path) -> tuple[list[tuple[str, list[Trial]]], list[str]]:
    """Each experiment's finished trials (main experiment first), and notes on what was skipped.

    Trials that have not finished a round yet are skipped with a note, so a group can be
    reported while it is still running.
    """
    from .group_runs import series_folders

    notes: list[str] = []
    found = []
    for name, trial_dirs in series_folders(folder):
        trials = []
        for trial_dir in trial_dirs:
            try:
                trials.append(read_trial(trial_dir))
            except Unfinished as exc:  # still running: anything else is refused
                notes.append(f"skipped {trial_dir.relative_to(folder)}: {exc}")
        if trials:
            found.append((name, trials))
    if not found:
        raise LotteryError(f"{str(folder)!r} is a trials folder with no finished run yet")
    return found, notes


def describe(config: dict[str, Any]) -> str:
    """A run's method in words, from its config: what distinguishes it from plain IMP."""
    words = f"{config.get('prune', '?')} pruning, {config.get('reinit', '?')} reinit"
    if config.get("scope") == "global":
        words += ", global"
    if config.get("rewind_iter"):
        words += f", rewind to iteration {config['rewind_iter']}"
    return words


def load_series(folders: list[Path], by: list[str] | None = None) -> tuple[list[Series], list[str]]:
    """Every series in ``folders`` (single runs, groups and sweeps, whose series ``by``
    chooses), with unique readable labels."""
    if not folders:
        raise LotteryError("no run folder given to report on")
    several = len(folders) > 1
    series: list[Series] = []
    notes: list[str] = []
    for source, folder in enumerate(map(Path, folders)):
        if not folder.is_dir():
            raise LotteryError(f"{str(folder)!r} does not exist or is not a folder")
        if rundir.kind(folder) == "sweep":
            for item in sweep_series(folder, by, several):
                item.source = source
                series.append(item)
        elif is_group(folder):
            experiments, skipped = read_group(folder)
            notes += [f"{folder.name}: {note}" for note in skipped]
            for name, trials in experiments:
                label = f"{folder.name} / {name}" if several else name
                series.append(Series(label, folder, name, trials, source, "group", name))
        else:
            trial = read_trial(folder)
            words = describe(trial.meta.get("config", {}))
            label = f"{folder.name} ({words})" if several else words
            series.append(Series(label, folder, None, [trial], source, "run", words))
            analysis = 0
            for branch_set in paths.branch_sets(folder):  # its branches, beside it
                if paths.branch_kind_of(branch_set) == STABILITY_KIND:
                    analysis += 1  # the instability analysis' copies: its section, not series
                    continue
                try:
                    found = [read_branch_set(branch_set, t) for t in branch_trials(branch_set)]
                except Unfinished as exc:
                    notes.append(f"skipped {branch_set.relative_to(folder)}: {exc}")
                    continue
                name = branch_label(branch_set)
                series.append(Series(f"{folder.name} / {name}" if several else name,
                                     branch_set, name, found, source, "branch", name))  # fmt: skip
            if analysis:
                notes.append(f"{folder.name}: its {analysis} {STABILITY_KIND} branch set(s) "
                             "are the instability analysis, not series")  # fmt: skip
    if by and not any(rundir.kind(f) == "sweep" for f in map(Path, folders)):
        raise LotteryError("--by chooses the series of a sweep folder; none was given")
    seen: dict[str, int] = {}
    for item in series:
        seen[item.label] = seen.get(item.label, 0) + 1
        if seen[item.label] > 1:
            item.label += f" #{seen[item.label]}"
    return series, notes


def sweep_series(folder: Path, by: list[str] | None, several: bool) -> list[Series]:
    """A sweep folder's series: one per grid point and experiment, or per value of the ``by``
    fields (``lottery_core.sweep.report_series``), of the trials that finished a round."""
    from .sweep import report_series

    found = []
    for label, experiment, trial_dirs in report_series(folder, by):
        trials = []
        for trial_dir in trial_dirs:
            try:
                trials.append(read_trial(trial_dir))
            except LotteryError:  # not started, or no finished round yet
                continue
        if trials:
            found.append(Series(f"{folder.name} / {label}" if several else label, folder,
                                experiment, trials, origin="sweep", name=label))  # fmt: skip
    if not found:
        raise LotteryError(f"{str(folder)!r} is a sweep with no finished round yet")
    return found
