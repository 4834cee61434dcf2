"""Running a sweep: every grid point a trials/controls group, every run a unit of the parallel
executor, the sweep's tables kept current, and a folder any later command resumes.

The sweep file, its grid and its points are ``sweep_file``'s; ``status.json`` and
``sweep status`` are ``sweep_status``'s. The runs are units of the engine (``group_units.units``):
each trial's dense round first (it writes the controls' branches), then the rest of its main run
and every control at once. Running the same sweep again, or ``--resume DIR``, skips finished
runs and resumes the others from their last round.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import files, group, group_runs, group_units, paths, rundir
from .config import config_of
from .engine import Engine, Event, plan
from .errors import LotteryError, Stopped, command
from .parallel import execute
from .plugins import Plugins
from .sweep_file import (
    BASE_POINT,
    Point,
    Scalar,
    Sweep,
    format_value,
    read_sweep,
    sweep_points,
    to_toml,
    validate,
)
from .sweep_status import StatusFile

SweepStopped = Stopped  # Ctrl-C during a sweep: the message says how to resume


@dataclass
class SweepResult:
    folder: Path
    results: pd.DataFrame
    aggregate: pd.DataFrame
    runs: int
    done: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # run -> its own error
    skipped: dict[str, str] = field(default_factory=dict)  # run -> why it did not run
    resume_command: str = ""
    plan: str = ""
    startup_s: float = 0.0
    seconds: float = 0.0


def default_folder(file: Path) -> Path:
    return rundir.RESULTS_ROOT / f"sweep-{Path(file).stem}"


def resume_command(folder: Path, workers: int | None, address: str | None) -> str:
    parts: list[object] = ["sweep", "--resume", folder]
    if workers is not None:
        parts += ["--workers", workers]
    if address is not None:
        parts += ["--address", address]
    return command(*parts)


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def run_sweep(
    file: Path | None = None,
    *,
    plugins: Plugins,
    out: Path | None = None,
    resume: Path | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = _say,
) -> SweepResult:
    """Run (or continue) a sweep; returns its tables and the runs that failed."""
    sweep, folder = _target(file, out, resume)
    engine_plan = plan(workers, address, sweep.base.get("threads"))
    points = validate(sweep, plugins, engine_plan.threads)
    started = time.perf_counter()
    again = resume_command(folder, workers, address)
    new = rundir.kind(folder) in ("missing", "empty")
    engine = Engine(engine_plan)
    try:
        if new:  # Ray first: a cluster that cannot be reached leaves nothing behind
            engine.start()
            rundir.create(folder)
        with rundir.locked(folder):
            if new:
                again_with = command("sweep", "--resume", "DIR")
                header = f"The sweep as run. Continue it with: {again_with}"
                files.write_text(folder / paths.SWEEP, to_toml(sweep, header))
            drive = _Drive(folder, sweep, points, engine, again)
            drive.run(progress, say)
    finally:
        engine.stop()
    return drive.result(started)


def _target(file: Path | None, out: Path | None, resume: Path | None) -> tuple[Sweep, Path]:
    """The sweep and its folder: a new one (checked before anything is created), or the one
    ``resume`` names (with ``file``: checked to be the same sweep)."""
    if resume is not None:
        if out is not None:
            raise LotteryError("--resume continues the sweep in its folder; drop --out")
        folder = Path(resume)
        if rundir.kind(folder) != "sweep":
            rundir.check_not_held(folder)  # a sweep starting there: name its driver
            raise LotteryError(f"{str(folder)!r} is not a sweep folder (it has no {paths.SWEEP})")
        sweep = read_sweep(folder / paths.SWEEP)
        if file is not None:
            _check_same(read_sweep(file), sweep, folder)
        return sweep, folder
    if file is None:
        raise LotteryError("give a sweep file, or --resume DIR")
    sweep = read_sweep(file)
    folder = Path(out) if out is not None else default_folder(file)
    found = rundir.kind(folder)
    if found == "sweep":
        _check_same(sweep, read_sweep(folder / paths.SWEEP), folder)
    elif found not in ("missing", "empty"):
        rundir.check_new(folder)
    else:
        rundir.check_writable(folder)
    return sweep, folder


def _runs_and_networks(runs: list[str]) -> str:
    """``"3 runs"``, or ``"3 runs + 90 branch networks"`` where a group runs branches."""
    networks = sum(paths.branch_of(Path(run)) is not None for run in runs)
    trunks = len(runs) - networks
    text = f"{trunks} run{'s' * (trunks != 1)}"
    return text + (f" + {networks} branch network{'s' * (networks != 1)}" if networks else "")


class _Drive:
    """One driver's pass over a locked sweep folder: its points prepared, its units run on the
    engine, its tables and ``status.json`` kept current."""

    def __init__(self, folder: Path, sweep: Sweep, points: list[Point], engine: Engine, again: str):
        self.folder, self.sweep, self.engine, self.again = folder, sweep, engine, again
        self.point_dirs = _prepare_points(folder, points, sweep)
        self.names = [(p.name, p.values) for p in points]
        self.units = [u for p in self.point_dirs for u in group_units.units(p, folder)]
        self.every_run = [r for p in self.point_dirs for r in group_runs.all_runs(p, folder)]
        self.status = StatusFile(folder, engine.plan.describe(), again)

    def run(self, progress: bool, say: Callable[[str], None]) -> None:
        count = len(self.names)
        intro = (
            f"sweep {self.sweep.source}: {count} grid point{'s' * (count != 1)} x "
            f"{self.sweep.trials} trial{'s' * (self.sweep.trials != 1)} = "
            f"{_runs_and_networks(self.every_run)} in {self.folder}"
        )
        if not self.units:
            say(f"{intro}: all {len(self.every_run)} runs are done")
            # A killed driver's workers may have finished runs after its last tables.
            self.write_tables(self.point_dirs)
            return
        if self.engine.ray is None:
            self.engine.start()
        owned = f", Ray started in {self.engine.startup_s:.1f} s" if self.engine.owned else ""
        say(f"{intro} ({self.engine.plan.describe()}{owned})")
        todo = {u.run for u in self.units}
        trained = sum(group_runs.rows(self.folder / run) for run in self.every_run)
        if trained:
            say(f"resuming: {len(self.every_run) - len(todo)} of {len(self.every_run)} runs "
                f"done, {trained} rounds trained")  # fmt: skip
        self.status.retrying(sorted(todo))
        self.status.write()
        outcomes = execute(self.engine, self.units, self.on_event, progress)
        if outcomes is None:
            self.status.write(finished=True)
            self.write_tables(self.point_dirs)
            raise SweepStopped(
                f"\nInterrupted: finished rounds are saved in {self.folder}. Resume with: "
                f"{self.again}"
            )
        self.write_tables(self.point_dirs)
        self.status.write(finished=True)

    def on_event(self, event: Event) -> None:
        by_dir = {str(p.absolute()): p for p in self.point_dirs}
        if event.outcome is not None and event.unit is not None:
            point = by_dir.get(event.unit.kwargs.get("out", ""))
            if point is not None:
                self.write_tables([point])
            self.status.update(event)
        elif event.outcome is None and event.running_units != []:
            running = sorted({u.run for u in event.running_units})
            if running != self.status.running:
                self.status.update(event)

    def write_tables(self, groups: list[Path]) -> None:
        """The groups' tables from their runs', then the sweep's from the groups'."""
        group.write_all_tables(groups)
        write_sweep_tables(self.folder, self.names)

    def result(self, started: float) -> SweepResult:
        folder = self.folder
        finished = {r for p in self.point_dirs for r in group_runs.finished_runs(p, folder)}
        every = set(self.every_run)
        failed = {r: i for r, i in self.status.failures.items() if r in every and r not in finished}
        return SweepResult(
            folder,
            _read(folder / paths.RESULTS),
            _read(folder / paths.AGGREGATE),
            len(self.every_run),
            done=len(finished),
            failures={r: i["error"] for r, i in failed.items() if not i.get("skipped")},
            skipped={r: i["error"] for r, i in failed.items() if i.get("skipped")},
            resume_command=self.again,
            plan=self.engine.plan.describe(),
            startup_s=self.engine.startup_s,
            seconds=time.perf_counter() - started,
        )


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def _check_same(sweep: Sweep, existing: Sweep, folder: Path) -> None:
    changed = existing.differences(sweep)
    if changed:
        raise LotteryError(
            f"{str(folder)!r} holds a different sweep ({'; '.join(changed)[:300]}, in the folder "
            f"vs the file); choose another --out, or continue that one with: "
            f"{command('sweep', '--resume', folder)}"
        )


def _prepare_points(folder: Path, points: list[Point], sweep: Sweep) -> list[Path]:
    (folder / paths.POINTS).mkdir(exist_ok=True)
    dirs = []
    for point in points:
        path = paths.point_dir(folder, point.name)
        if rundir.kind(path) in ("missing", "empty"):
            path.mkdir(exist_ok=True)
            group_runs.write_group_config(path, point.config, sweep.trials, sweep.controls)
        else:
            saved = config_of(rundir.read_group_meta(path))
            if saved.identity() != point.config.identity():
                raise LotteryError(
                    f"{str(path)!r} holds another config than its grid point computes (an "
                    "edited folder, or defaults that changed since); nothing was run"
                )
        dirs.append(path)
    return dirs


def write_sweep_tables(folder: Path, points: list[tuple[str, dict[str, Scalar]]]) -> None:
    """The sweep's ``results.csv`` and ``aggregate.csv`` from its points' own tables."""
    results: list[pd.DataFrame] = []
    aggregates: list[pd.DataFrame] = []
    grid_keys = list(points[0][1]) if points else []
    for name, values in points:
        point_dir = paths.point_dir(folder, name)
        for table, frames in ((paths.RESULTS, results), (paths.AGGREGATE, aggregates)):
            path = point_dir / table
            if path.exists():
                frame = pd.read_csv(path)
                lead = pd.DataFrame(
                    {
                        "point": [name] * len(frame),
                        **{k: [values[k]] * len(frame) for k in grid_keys},
                    }
                )
                frames.append(pd.concat([lead, frame], axis=1))  # fmt: skip
    if results:
        files.write_csv(Path(folder) / paths.RESULTS, pd.concat(results, ignore_index=True))
    if aggregates:
        files.write_csv(Path(folder) / paths.AGGREGATE, pd.concat(aggregates, ignore_index=True))


def summary_table(aggregate: pd.DataFrame) -> str:
    """Per point and experiment: the dense test accuracy and the last round's (mean over
    trials, min-max), at the last round's weights remaining."""
    if aggregate.empty:
        return ""
    out = []
    for (point, experiment), part in aggregate.groupby(["point", "experiment"], sort=False):
        part = part.sort_values("round")
        first, last = part.iloc[0], part.iloc[-1]
        out.append({
            "point": point,
            "experiment": experiment,
            "trials": int(last["trials"]),
            "rounds": int(last["round"]) + 1,
            "dense test": f"{first['test_mean']:.2f}",
            "remaining": f"{last['remaining']:.1f}",
            "test": f"{last['test_mean']:.2f} ({last['test_min']:.2f}-{last['test_max']:.2f})",
        })  # fmt: skip
    return pd.DataFrame(out).to_string(index=False)


def report_series(folder: Path, by: list[str] | None) -> list[tuple[str, str | None, list[Path]]]:
    """The series ``report`` draws for a sweep folder: one per value of the ``by`` fields
    (default: every grid field and the experiment, i.e. one per point and experiment), each
    with the run folders whose trials it averages, in the sweep's order."""
    sweep, points = sweep_points(folder)
    fields = list(by) if by else [*sweep.fields, "experiment"]
    allowed = [*sweep.fields, "experiment"]
    for name in fields:
        if name.replace("-", "_") not in allowed:
            raise LotteryError(
                f"--by {name}: not a grid field of the sweep in {str(folder)!r} (its grid: "
                f"{', '.join(sweep.fields) or 'no grid field'}; or experiment)"
            )
    fields = [f.replace("-", "_") for f in fields]
    found: dict[tuple, list[Path]] = {}
    experiment_of: dict[tuple, str | None] = {}
    for name, values in points:
        point_dir = paths.point_dir(folder, name)
        for experiment, trials in group_runs.series_folders(point_dir):
            key = tuple(experiment if f == "experiment" else values[f] for f in fields)
            found.setdefault(key, []).extend(trials)
            experiment_of[key] = experiment if "experiment" in fields else None
    series = []
    for key, runs in found.items():
        parts = [f"{f}={format_value(v)}" for f, v in zip(fields, key, strict=True)
                 if f != "experiment"]  # fmt: skip
        label = ", ".join(parts)
        if "experiment" in fields:
            label = f"{label} / {experiment_of[key]}" if label else str(experiment_of[key])
        series.append((label or BASE_POINT, experiment_of[key], runs))
    if not series:
        raise LotteryError(f"{str(folder)!r} is a sweep with no run yet")
    return series
