"""``sweep status DIR`` and ``status.json``: what a sweep's driver is doing, and every run's state.

The driver rewrites ``status.json`` on each change: its pid, host and plan, the runs running
now, every failure with its error, and where each unit ran. ``status_text`` reads it beside the
runs' own tables, so it answers while the sweep runs, after it stopped, or after its driver died.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd

from . import files, group_runs, paths, rundir
from .config import config_of, make_config
from .errors import LotteryError, command
from .plugins import Plugins
from .resolution import resolve
from .sweep_file import Sweep, sweep_points


class StatusFile:
    """``status.json``: the driver (pid, host, times), its plan, the runs running now, every
    failure with its error, and where each unit ran (node, pid, seconds, its worker's peak
    RSS), rewritten on each change."""

    def __init__(self, folder: Path, plan_text: str, command: str):
        self.path = Path(folder) / paths.STATUS
        old = self.read(folder)
        self.failures: dict[str, dict] = old.get("failed", {}) if old else {}
        self.places: dict[str, dict] = old.get("placed", {}) if old else {}
        self.driver = {"pid": os.getpid(), "host": socket.gethostname(), "plan": plan_text,
                       "command": command, "started": time.time()}  # fmt: skip
        self.running: list[str] = []

    @staticmethod
    def read(folder: Path) -> dict:
        try:
            return json.loads((Path(folder) / paths.STATUS).read_text())
        except (OSError, ValueError):
            return {}

    def retrying(self, runs: list[str]) -> None:
        for run in runs:
            self.failures.pop(run, None)

    def update(self, event, finished: bool = False) -> None:
        if event is not None:
            outcome, unit = event.outcome, event.unit
            if outcome is not None and unit is not None:
                if outcome.ok:
                    self.places[unit.key] = {
                        "run": unit.run,
                        "node": outcome.node,
                        "host": outcome.host,
                        "pid": outcome.pid,
                        "seconds": round(outcome.seconds, 3),
                        "rounds": unit.rounds,
                        "peak_rss_mb": round(outcome.peak_rss_mb, 1),
                        "niceness": outcome.niceness,
                    }
                elif outcome.skipped:
                    if unit.run not in self.failures:  # a run's own failure stays its record
                        self.failures[unit.run] = {"error": outcome.error, "skipped": True}
                elif outcome.error != "cancelled":
                    self.failures[unit.run] = {"error": outcome.error, "host": outcome.host,
                                               "pid": outcome.pid}  # fmt: skip
                    if outcome.traceback:
                        self.failures[unit.run]["traceback"] = outcome.traceback
            self.running = sorted({u.run for u in event.running_units})
        self.write(finished)

    def write(self, finished: bool = False) -> None:
        body = {
            "driver": {**self.driver, "updated": time.time(), "finished": finished},
            "running": [] if finished else self.running,
            "failed": self.failures,
            "placed": self.places,
        }
        files.write_json(self.path, body)


def status_text(folder: Path, plugins: Plugins) -> str:
    """``sweep status DIR``: every run's rounds, what runs now, the failures, how to resume."""
    folder = Path(folder)
    if rundir.kind(folder) != "sweep":
        raise LotteryError(f"{str(folder)!r} is not a sweep folder (it has no {paths.SWEEP})")
    sweep, points = sweep_points(folder)
    state = StatusFile.read(folder)
    driver = state.get("driver", {})
    alive = _driver_alive(driver)
    running = set(state.get("running", [])) if alive else set()
    board = _Board(folder, running, state.get("failed", {}))
    table = []
    for name, values in points:
        point_dir = paths.point_dir(folder, name)
        rounds = _rounds_of(point_dir, sweep, values, plugins)
        config = make_config(**{**sweep.base, **values})
        for trial in range(sweep.trials):
            cells = {group_runs.MAIN: board.cell(paths.trial_dir(point_dir, group_runs.MAIN,
                                                                 trial), rounds)}  # fmt: skip
            kinds = group_runs.branch_kinds({"group": {"controls": sweep.controls},
                                             "config": config.model_dump()})  # fmt: skip
            for kind in kinds:
                plan = group_runs.control_plan(point_dir, trial, kind, rounds, plugins)
                networks = [plan.branch.network(r, t) for r, t in plan.networks()]
                cells[kind] = board.networks_cell(networks)
            table.append({"point": name, "trial": trial, **cells})
    total = sum(board.counts.values())
    summary = ", ".join(f"{n} {what}" for what, n in board.counts.items() if n or what == "done")
    lines = [
        f"sweep {folder}: {len(points)} point(s) x {sweep.trials} trial(s)"
        f"{' with controls' if sweep.controls else ''} = {total} runs: {summary}",
        *_driver_lines(driver, alive),
        "",
        pd.DataFrame(table).fillna("").to_string(index=False),
    ]
    if board.failures:
        lines += ["", f"failed ({len(board.failures)}):"]
        lines += [f"  {run}: {error}" for run, error in board.failures.items()]
    if board.counts["done"] < total and not alive:
        line = driver.get("command") or command("sweep", "--resume", folder)
        lines += ["", f"resume with: {line}"]
    return "\n".join(lines)


class _Board:
    """The status table's cells, counted by state, with each failed run's error."""

    def __init__(self, folder: Path, running: set[str], failed: dict[str, Any]):
        self.folder, self.running, self.failed = folder, running, failed
        self.counts = dict.fromkeys(("done", "running", "failed", "skipped", "waiting"), 0)
        self.failures: dict[str, str] = {}

    def cell(self, run_dir: Path, rounds: int) -> str:
        run = paths.relative(run_dir, self.folder)
        done = group_runs.rows(run_dir)
        info = self.failed.get(run)
        if rounds and done >= rounds:
            cell, what = "done", "done"
        elif run in self.running:
            cell, what = f"{done}/{rounds} running", "running"
        elif info is not None and info.get("skipped"):
            cell, what = "skipped", "skipped"
        elif info is not None:
            cell, what = f"{done}/{rounds} failed", "failed"
            self.failures[run] = info.get("error", "?")
        else:
            cell, what = (f"{done}/{rounds}" if done else "-"), "waiting"
        self.counts[what] += 1
        return cell


    def networks_cell(self, networks: list[Path]) -> str:
        """A control's cell: its networks (each a run of one round) counted, each by state."""
        states = [self.cell(network, 1) for network in networks]
        done = sum(state == "done" for state in states)
        for what in ("failed", "running", "skipped"):
            if any(state.startswith(f"0/1 {what}") or state == what for state in states):
                return f"{done}/{len(networks)} {what}"
        if networks and done == len(networks):
            return "done"
        return f"{done}/{len(networks)}" if done else "-"


def _driver_lines(driver: dict[str, Any], alive: bool) -> list[str]:
    if not driver:
        return []
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(driver.get("updated", 0)))
    if alive:
        return [
            f"driver: pid {driver.get('pid')} on {driver.get('host')} is running "
            f"({driver.get('plan', '')}); updated {when}"
        ]
    return [f"driver: not running (last update {when})"]


def _rounds_of(point_dir: Path, sweep: Sweep, values: dict, plugins: Plugins) -> int:
    """A point's rounds: its group's config, or (a point not started) its config resolved."""
    try:
        return config_of(rundir.read_group_meta(point_dir)).rounds
    except LotteryError:
        try:
            return resolve(make_config(**{**sweep.base, **values}), plugins).rounds
        except LotteryError:
            return 0


def _driver_alive(driver: dict) -> bool:
    if not driver or driver.get("finished", True):
        return False
    if driver.get("host") == socket.gethostname():
        try:
            os.kill(int(driver.get("pid", 0)), 0)
            return True
        except (OSError, ValueError):
            return False
    return time.time() - float(driver.get("updated", 0)) < 120
