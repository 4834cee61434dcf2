"""The parallel executor's driver side: units on the engine, one progress line, Ctrl-C.

Both a trials/controls group (``run --workers``) and a sweep hand their units here; each keeps
its own tables and records current through ``on_event``. The runs train in Ray workers, which
print nothing; the driver prints each round they finish as a row (``progress.Report``), named
by its run, when the command's report prints rows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from . import paths
from .engine import Engine, EngineInterrupted, Event, Outcome, Unit
from .progress import Report, current, duration, estimate, run_name

_duration = duration  # the name this module used


class ProgressLine:
    """One line across runs: done / running / failed and an ETA, rewritten in place on a
    terminal; elsewhere (a log) printed only when the counts change. ``enabled`` (not
    ``--quiet``) draws it; where the command's report prints rows, every round a unit finishes
    is printed as its row on stdout, named by its run, with the estimate for all units."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last: tuple[int, ...] | None = None
        self.start_rounds: int | None = None
        self.shown = False
        self.text = ""
        self.report: Report | None = current()
        self.seen: dict[str, int] = {}  # unit key -> rows of its run printed (or there before)
        self.printed = 0  # rows printed: rounds finished since the start
        self.run_rows: dict[Path, int] = {}  # a multi-run unit's runs: rows printed or there before
        if self.tty and self.report is not None:
            self.report.overlays.append(self)

    def __call__(self, event: Event) -> None:
        if self.report is not None and self.report.lines:
            self.rows(event, self.report)
        if not self.enabled:
            return
        if self.start_rounds is None:
            self.start_rounds = event.rounds_done
        line = (
            f"runs: {event.done}/{event.total} done, {event.running} running, "
            f"{event.failed} failed"
            + (f", {event.skipped} skipped" if event.skipped else "")
            + f"; {duration(event.elapsed)} elapsed, "
            f"ETA {duration(event.eta(self.start_rounds))}"
        )
        counts = (event.done, event.running, event.failed, event.skipped)
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
            self.shown = True
            self.text = line
        elif counts != self.last:
            self.stream.write(line + "\n")
            self.stream.flush()
        self.last = counts

    def rows(self, event: Event, report: Report) -> None:
        """Print the rounds the units' runs finished since the last event (read from each
        run's ``results.csv``), and a line for a unit that failed."""
        units = list(event.running_units)
        if event.unit is not None and event.outcome is not None:
            units.append(event.unit)
        for unit in units:
            if unit.count is None:
                continue
            now = unit.count()
            if unit.key not in self.seen:  # first seen as it starts (or, done, by its rounds)
                ended = unit is event.unit and event.outcome is not None and event.outcome.ok
                self.seen[unit.key] = max(0, now - unit.rounds) if ended else now
                for run in run_folders(unit):  # what its runs had before it started
                    self.run_rows[run] = 0 if ended else len(_records(run, 0, None))
            before = self.seen[unit.key]
            if now > before:
                self.seen[unit.key] = now
                self.print_rows(unit, before, now, event, report)
        outcome = event.outcome
        if (event.unit is not None and outcome is not None and not outcome.ok
                and not outcome.skipped and outcome.error != "cancelled"):  # fmt: skip
            folder = run_folder(event.unit)
            name = (run_name(folder) if folder is not None else None) or event.unit.run
            report.write(f"{name} failed: {outcome.error}")

    def print_rows(self, unit: Unit, start: int, stop: int, event: Event, report: Report) -> None:
        folders = run_folders(unit)
        if folders:  # several runs: each one's rows not yet printed
            self.print_new_rows(unit, folders, event, report)
            return
        folder = run_folder(unit)
        records = _records(folder, start, stop)
        for index in range(start, stop):
            record = records[index - start] if index - start < len(records) else {}
            name = (run_name(folder) if folder is not None else None) or unit.run
            self.show(name, record, event, report)

    def print_new_rows(self, unit: Unit, folders: list[Path], event: Event, report: Report
                       ) -> None:  # fmt: skip
        """The rows each run of a multi-run unit wrote since the last look, round by round
        (its runs write theirs in any order, so an index into all of them would repeat one
        row and skip another)."""
        found = []
        for position, folder in enumerate(folders):
            records = _records(folder, self.run_rows.get(folder, 0), None)
            self.run_rows[folder] = self.run_rows.get(folder, 0) + len(records)
            found += [(int(r.get("round", 0)), position, folder, r) for r in records]
        for _, _, folder, record in sorted(found, key=lambda f: f[:2]):
            self.show(run_name(folder) or unit.run, record, event, report)

    def show(self, name: str, record: dict[str, Any], event: Event, report: Report) -> None:
        """One finished round's row, with the estimate for every unit."""
        self.printed += 1
        total = max(event.rounds_total, self.printed)
        report.show(self.printed, total, event.elapsed, estimate(self.printed, total,
                    event.elapsed), name, record)  # fmt: skip

    def clear(self) -> None:
        """Off the terminal's line, for a row to be printed there."""
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def refresh(self) -> None:
        if self.tty and self.shown and self.text:
            self.stream.write("\r\x1b[K" + self.text)
            self.stream.flush()

    def close(self) -> None:
        if self.report is not None and self in self.report.overlays:
            self.report.overlays.remove(self)
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def run_folder(unit: Unit) -> Path | None:
    """The run folder a unit brings further, from its arguments: a group's run
    (``group_units.advance_unit``) or a branch network (``branch_runs.branch_unit``)."""
    k = unit.kwargs
    try:
        if {"out", "trial", "experiment"} <= k.keys():
            return paths.trial_dir(Path(k["out"]), k["experiment"], int(k["trial"]))
        if {"trunk", "kind", "options", "seed", "round_index", "trial"} <= k.keys():
            branch_set = paths.branch_set(Path(k["trunk"]), k["kind"], k["options"], k["seed"])
            return paths.branch_dir(branch_set, int(k["round_index"]), int(k["trial"]))
    except (TypeError, ValueError):
        return None
    return None


def network_folders(unit: Unit) -> list[Path]:
    """The networks of a batched branch unit (``branch_runs.units``, a group's
    ``group_units.controls_unit``), in the order it trains them; empty for any other unit."""
    k = unit.kwargs
    if isinstance(k.get("folders"), list):  # a group's controls, batched across sets
        return [Path(folder) for folder in k["folders"]]
    if "networks" not in k or not {"trunk", "kind", "options", "seed"} <= k.keys():
        return []
    try:
        branch_set = paths.branch_set(Path(k["trunk"]), k["kind"], k["options"], k["seed"])
        return [paths.branch_dir(branch_set, int(r), int(t)) for r, t in k["networks"]]
    except (TypeError, ValueError):
        return []


def run_folders(unit: Unit) -> list[Path]:
    """The runs of a unit that brings several further (the trials in lockstep, a batched
    unit's networks); empty for a unit of one run."""
    return lockstep_folders(unit) or network_folders(unit)


def lockstep_folders(unit: Unit) -> list[Path]:
    """The run folders of a lockstep unit (``group_units.advance_trials_unit``), in trial
    order; empty for any other unit."""
    k = unit.kwargs
    if not {"out", "trials", "experiment"} <= k.keys():
        return []
    try:
        return [paths.trial_dir(Path(k["out"]), k["experiment"], int(t)) for t in k["trials"]]
    except (TypeError, ValueError):
        return []


def _records(folder: Path | None, start: int, stop: int | None) -> list[dict[str, Any]]:
    """Rows ``start`` to ``stop`` of a run's ``results.csv`` (none if it cannot be read)."""
    if folder is None:
        return []
    import pandas as pd

    try:
        frame = pd.read_csv(folder / paths.RESULTS)
    except (OSError, ValueError):
        return []
    return [{str(k): v for k, v in r.items()} for r in frame.iloc[start:stop].to_dict("records")]


def execute(
    engine: Engine, units: list[Unit], on_event: Callable[[Event], None], progress: bool
) -> dict[str, Outcome] | None:
    """Run ``units`` on a started ``engine``, the progress line and ``on_event`` told of every
    change; the outcomes, or ``None`` on Ctrl-C (the running units cancelled, every finished
    round on disk)."""
    line = ProgressLine(progress)

    def both(event: Event) -> None:
        line(event)
        on_event(event)

    try:
        return engine.run(units, both)
    except EngineInterrupted:
        return None
    finally:
        line.close()
