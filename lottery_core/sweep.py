"""Sweeps: a base config, a grid over any config fields, and trials/controls, as one folder.

A sweep file (TOML or JSON) holds the base config at its top level (the same keys as
``run --config``), ``trials``, ``controls`` and a ``[grid]`` table of lists::

    trials = 2
    controls = true
    dataset = "mnist-sample"
    rounds = 6

    [grid]
    scope = ["layerwise", "global"]
    rewind_iter = [0, 100]

Where the methods to compare are not a product of fields (IMP at ``prune_at = "imp"`` beside
SNIP at ``"init"``, SynFlow with ``init_steps = 100``), ``[[variant]]`` tables list them, each
naming the same fields; the points are then every grid combination with every variant::

    [[variant]]
    prune = "snip"
    init_steps = 1

    [[variant]]
    prune = "synflow"
    init_steps = 100

Every grid point (one value of each grid field and variant) is a trials/controls group folder under
``<sweep>/points/<name>/``, named from its values (``rewind_iter=100,scope=global``: the fields
sorted, so the name does not depend on the file's order), and every trial of every experiment
in it is an ordinary run folder. The sweep folder holds the sweep as run (``sweep.toml``),
``results.csv`` (every run's rows with the grid's columns, ``point``, ``experiment`` and
``trial``), ``aggregate.csv`` (per point, experiment and round) and ``status.json`` (the driver,
and the runs that failed, with their errors).

Everything is validated before anything is written: the grid's entries one by one against the
base (an error names ``grid entry lr[2]``), then every point (an error names the point), then
each point's data and model. The runs are units of the engine (``lottery_core.engine``): the
main run's dense round first (it writes the controls' branches), then the rest of the main run
and every control at once. Running the same sweep again, or ``--resume DIR``, skips finished
runs and resumes the others from their last round.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import files, group, rundir
from .config import NOT_IDENTITY, ExperimentConfig, check_file_types, make_config, read_table
from .errors import LotteryError, RunFailed, command
from .plugins import Plugins, get_plugins

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

SWEEP_FILE = rundir.SWEEP
POINTS = "points"
STATUS = "status.json"
RESERVED = ("grid", "variant", "trials", "controls")
NOT_IN_SWEEP = ("out",)  # the sweep names its run folders
BASE_POINT = "base"  # the one point of a sweep without a grid
NAME_MAX = 120
MAX_POINTS = 10_000  # a larger grid is refused at once (split it into several sweeps)
SAFE = re.compile(r"[^A-Za-z0-9._+-]")
Scalar = str | int | float | bool


class SweepStopped(LotteryError):
    """Ctrl-C during a sweep: what finished is saved; the message says how to resume."""

    exit_code = 130


# -- the sweep file ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: ``base`` config values, ``grid`` lists (file order), trials."""

    base: dict[str, Any]
    grid: dict[str, list[Scalar]]
    trials: int = 1
    controls: bool = False
    source: str = ""
    variants: list[dict[str, Scalar]] = field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        spec = {"trials": self.trials, "controls": self.controls, "base": self.base,
                "grid": self.grid}  # fmt: skip
        return {**spec, "variants": self.variants} if self.variants else spec

    @property
    def fields(self) -> list[str]:
        """The fields that tell points apart: the grid's, then the variants'."""
        return [*self.grid, *(self.variants[0] if self.variants else {})]

    def combinations(self) -> list[dict[str, Scalar]]:
        """Every grid point's values, the last grid field varying fastest, then each variant."""
        keys = list(self.grid)
        product = [dict(zip(keys, values, strict=True)) for values in
                   itertools.product(*(self.grid[k] for k in keys))]  # fmt: skip
        return [{**point, **variant} for point in product for variant in self.variants or [{}]]

    def differences(self, other: Sweep) -> list[str]:
        """What makes ``other`` compute something else (where and how it runs aside)."""
        out = []
        for key in ("trials", "controls"):
            if getattr(self, key) != getattr(other, key):
                out.append(f"{key}: {getattr(self, key)!r} vs {getattr(other, key)!r}")
        mine = {k: v for k, v in self.base.items() if k not in NOT_IDENTITY}
        theirs = {k: v for k, v in other.base.items() if k not in NOT_IDENTITY}
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                out.append(f"{key}: {mine.get(key)!r} vs {theirs.get(key)!r}")
        if self.grid != other.grid:
            out.append(f"grid: {self.grid!r} vs {other.grid!r}")
        if self.variants != other.variants:
            out.append(f"variants: {self.variants!r} vs {other.variants!r}")
        return out


def _fail(source: str, message: str) -> LotteryError:
    return LotteryError(f"invalid sweep file {source!r}: {message}")


def _reason(error: LotteryError) -> str:
    """A config error without its ``invalid config...:`` prefix, to be put after a name."""
    text = str(error)
    if text.startswith("invalid config"):
        return text.split(": ", 1)[1] if ": " in text else text
    return text


def read_sweep(path: Path) -> Sweep:
    """Parse and check the shape of a sweep file (values are checked by :func:`validate`)."""
    path = Path(path)
    source = str(path)
    # the shared reader's reasons, worded as this file's other errors are
    reasons = {"must hold a table of settings": "it must hold a table of settings"}
    raw = read_table(
        path,
        "sweep file",
        lambda reason: _fail(source, reasons.get(reason, reason.removeprefix("is "))),
    )
    trials = raw.pop("trials", 1)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise _fail(source, f"trials must be an integer of at least 1 (got {trials!r})")
    controls = raw.pop("controls", False)
    if not isinstance(controls, bool):
        raise _fail(source, f"controls must be true or false (got {controls!r})")
    grid_raw = raw.pop("grid", {})
    variant_raw = raw.pop("variant", [])
    if not isinstance(grid_raw, dict):
        raise _fail(source, f"grid must be a table of lists (got {grid_raw!r})")
    known = ", ".join(ExperimentConfig.model_fields)
    for key in raw:
        if key in NOT_IN_SWEEP:
            raise _fail(source, f"{key}: a sweep names its run folders; give --out for the "
                                "sweep folder instead")  # fmt: skip
        if key not in ExperimentConfig.model_fields:
            reserved = ", ".join(RESERVED)
            raise _fail(source, f"unknown key {key!r} (known: {reserved}, {known})")
    grid: dict[str, list[Scalar]] = {}
    for key, values in grid_raw.items():
        name = str(key).replace("-", "_")
        if name in NOT_IN_SWEEP:
            raise _fail(source, f"grid.{name}: a sweep names its run folders itself")
        if name not in ExperimentConfig.model_fields:
            raise _fail(source, f"grid.{name}: unknown config key (known keys: {known})")
        if name in raw:
            raise _fail(source, f"{name} is in the base config and in the grid; keep one")
        if not isinstance(values, list) or not values:
            raise _fail(
                source,
                f"grid.{name} must be a non-empty list of values (got "
                f"{values!r}); a single value belongs in the base config",
            )
        listed: set[tuple[type, Scalar]] = set()  # one pass: a long list is read at once
        for i, value in enumerate(values):
            if not isinstance(value, (str, int, float, bool)):
                raise _fail(source, f"grid entry {name}[{i}] = {value!r}: must be a single "
                                    "value (a string, number or boolean)")  # fmt: skip
            if (type(value), value) in listed:
                raise _fail(source, f"grid entry {name}[{i}] = {value!r} is listed twice")
            listed.add((type(value), value))
        grid[name] = list(values)
    variants = _read_variants(source, variant_raw, raw, grid)
    return Sweep(raw, grid, trials, controls, source, variants)


def _read_variants(
    source: str, tables: Any, base: dict[str, Any], grid: dict[str, list[Scalar]]
) -> list[dict[str, Scalar]]:
    """The ``[[variant]]`` tables: config fields, the same in each, in neither base nor grid."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise _fail(source, "variant must be a list of tables ([[variant]] in TOML)")
    known = ", ".join(ExperimentConfig.model_fields)
    variants: list[dict[str, Scalar]] = []
    for i, table in enumerate(tables):
        variant = {str(k).replace("-", "_"): v for k, v in table.items()}
        for name, value in variant.items():
            if name not in ExperimentConfig.model_fields or name in NOT_IN_SWEEP:
                raise _fail(source, f"variant {i + 1}: {name}: not a config field a sweep "
                                    f"varies (known keys: {known})")  # fmt: skip
            if name in base or name in grid:
                where = "base config" if name in base else "grid"
                raise _fail(source, f"variant {i + 1}: {name} is in the {where} too; keep one")
            if not isinstance(value, (str, int, float, bool)):
                raise _fail(source, f"variant {i + 1}: {name} = {value!r}: must be a single "
                                    "value (a string, number or boolean)")  # fmt: skip
        if variants and set(variant) != set(variants[0]):
            first = sorted(variants[0])
            raise _fail(source, f"variant {i + 1} sets {sorted(variant)}, variant 1 sets "
                                f"{first}: every variant names the same fields")  # fmt: skip
        if not variant:
            raise _fail(source, f"variant {i + 1} is empty")
        if variant in variants:
            raise _fail(source, f"variant {i + 1} repeats variant {variants.index(variant) + 1}")
        variants.append(variant)
    return variants


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string


def to_toml(sweep: Sweep, header: str = "") -> str:
    """The sweep as a file :func:`read_sweep` reads back to the same sweep."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"trials = {sweep.trials}", f"controls = {_toml_value(sweep.controls)}"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in sweep.base.items()]
    if sweep.grid:
        lines += ["", "[grid]"] + [f"{k} = {_toml_value(v)}" for k, v in sweep.grid.items()]
    for variant in sweep.variants:
        lines += ["", "[[variant]]"] + [f"{k} = {_toml_value(v)}" for k, v in variant.items()]
    return "\n".join(lines) + "\n"


# -- points and their names ----------------------------------------------------------------


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def format_value(value: Scalar) -> str:
    """A grid value as a folder name shows it: ``global``, ``0.0012``, ``100``, ``true``; a
    string with characters a file name should not hold gets them replaced and a hash added."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    safe = SAFE.sub("_", value)
    return safe if safe == value and value else f"{safe}_{_short_hash(value)}"


def point_name(values: dict[str, Scalar]) -> str:
    """A grid point's folder name: ``field=value`` pairs, fields sorted, joined by commas.

    Stable across versions and independent of the grid's order in the file (a test pins it);
    a name longer than ``NAME_MAX`` is cut and ends in a hash of the whole.
    """
    if not values:
        return BASE_POINT
    name = ",".join(f"{k}={format_value(values[k])}" for k in sorted(values))
    if len(name) > NAME_MAX:
        name = f"{name[: NAME_MAX - 9]},{_short_hash(name, 8)}"
    return name


@dataclass(frozen=True)
class Point:
    name: str
    values: dict[str, Scalar]
    config: ExperimentConfig  # resolved


def validate(
    sweep: Sweep, plugins: Plugins, threads: int | None = None, check_data: bool = True
) -> list[Point]:
    """Every point resolved and checked, or one line naming the grid entry or point at fault.

    ``threads`` fills the thread count of points whose config leaves it open (the engine's
    per-worker share). Nothing is written.
    """
    from .experiment import Experiment, load_data
    from .resolution import resolve

    source = sweep.source
    count = math.prod(len(values) for values in sweep.grid.values())
    if count > MAX_POINTS:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in sweep.grid.items())
        raise _fail(source, f"the grid has {count:,} points ({sizes}); a sweep takes at most "
                            f"{MAX_POINTS:,}: split it into several sweeps")  # fmt: skip
    base = dict(sweep.base)
    if threads is not None and "threads" not in base and "threads" not in sweep.grid:
        base["threads"] = threads

    try:
        check_file_types(base, "the sweep")
        make_config(**base)
    except LotteryError as exc:
        raise _fail(source, f"base config: {_reason(exc)}") from None
    for key, values in sweep.grid.items():
        extra = ExperimentConfig.model_fields[key].json_schema_extra
        registry = getattr(plugins, extra["plugin"]) if isinstance(extra, dict) else None
        for i, value in enumerate(values):
            try:
                check_file_types({key: value}, "the sweep")
                make_config(**{**base, key: value})
                if registry is not None:  # a name no plugin registers: this entry's fault
                    registry.get(value)
            except LotteryError as exc:
                raise _fail(source, f"grid entry {key}[{i}] = {value!r}: {_reason(exc)}") from None
    points = []
    for values in sweep.combinations():
        name = point_name(values)
        where = f"grid point {name}" if values else "base config"
        try:
            config = resolve(make_config(**{**base, **values}), plugins)
        except LotteryError as exc:
            raise _fail(source, f"{where}: {_reason(exc)}") from None
        points.append(Point(name, values, config))
    names = [p.name for p in points]
    if len(set(names)) != len(names):  # only if two values format alike: say which
        twice = sorted({n for n in names if names.count(n) > 1})
        raise _fail(source, f"two grid points would share the folder {twice[0]!r}")
    _check_distinct(sweep, points)
    if check_data:
        data_cache: dict[tuple, Any] = {}
        for point in points:
            key = _data_key(point.config)
            try:
                if key not in data_cache:
                    data_cache[key] = load_data(point.config, plugins)
                # on the CPU: the driver may lack the workers' GPUs, and shapes are the same
                checked = point.config.model_copy(update={"device": "cpu"})
                Experiment(checked, plugins=plugins, data=data_cache[key]).validate()
            except LotteryError as exc:
                where = f"grid point {point.name}" if point.values else "base config"
                raise _fail(source, f"{where}: {_reason(exc)}") from None
    return points


def _check_distinct(sweep: Sweep, points: list[Point]) -> None:
    """Two points whose resolved configs are equal (``lr = [1, 1.0]``) would run the same
    experiment twice under two names: one line naming their grid entries."""
    seen: dict[str, Point] = {}
    for point in points:
        key = json.dumps(point.config.model_dump(mode="json"), sort_keys=True, default=str)
        first = seen.setdefault(key, point)
        if first is point:
            continue
        entries = [
            f"{_entry(sweep, k, first.values[k])} and {_entry(sweep, k, point.values[k])}"
            for k in sweep.grid
            if not _same_value(first.values[k], point.values[k])
        ]
        raise _fail(sweep.source, f"grid entries {'; '.join(entries)} give the same "
                                  f"configuration (points {first.name} and {point.name}); "
                                  "keep one")  # fmt: skip


def _same_value(a: Scalar, b: Scalar) -> bool:
    return type(a) is type(b) and a == b


def _entry(sweep: Sweep, key: str, value: Scalar) -> str:
    index = next(i for i, v in enumerate(sweep.grid[key]) if _same_value(v, value))
    return f"{key}[{index}] = {value!r}"


def _data_key(config: ExperimentConfig) -> tuple:
    return (config.dataset, str(config.data_dir), config.split_seed, config.validation_size)


# -- units of work -------------------------------------------------------------------------


def rows(run_dir: Path) -> int:
    """Rounds a run folder has finished (the rows of its ``results.csv``)."""
    try:
        with open(Path(run_dir) / rundir.RESULTS) as handle:
            return max(0, sum(1 for _ in handle) - 1)
    except OSError:
        return 0


_DATA: dict[tuple, Any] = {}


def advance_unit(out: str, trial: int, experiment: str, dense_only: bool, cwd: str) -> int:
    """One unit in a Ray worker: ``group.advance`` with the data loaded once per process.

    A relative ``data_dir`` is taken from the driver's folder ``cwd``. Returns the rounds the
    run has finished.
    """
    from .experiment import load_data
    from .resolution import resolve

    plugins = get_plugins()
    meta = group.read_group_config(Path(out))
    data_dir = Path(meta["config"].get("data_dir") or "data")
    if not data_dir.is_absolute():
        meta["config"]["data_dir"] = str(Path(cwd) / data_dir)
    config = resolve(ExperimentConfig(**meta["config"]), plugins)
    key = _data_key(config)
    if key not in _DATA:
        _DATA.clear()  # one data set per worker at a time: memory stays one copy
        _DATA[key] = load_data(config, plugins)
    group.advance(Path(out), trial, experiment, dense_only=dense_only, progress=False,
                  plugins=plugins, data=_DATA[key], meta=meta)  # fmt: skip
    return rows(group.trial_dir(Path(out), experiment, trial))


def group_units(out: Path, root: Path):
    """The units a group folder still needs, named by run folder relative to ``root``."""
    from .engine import Unit

    out = Path(out).absolute()
    meta = group.read_group_config(out)
    config = ExperimentConfig(**meta["config"])
    rounds = int(config.rounds or 1)
    names = list(group.experiments(config, meta["group"]["controls"]))
    cwd = str(Path.cwd())
    units = []
    for trial in range(meta["group"]["trials"]):
        main_path = group.trial_dir(out, group.MAIN, trial)
        main_run = _relative(main_path, root)
        kwargs = {"out": str(out), "trial": trial, "experiment": group.MAIN, "cwd": cwd}
        wants_gpu = config.device != "cpu"
        after: tuple[str, ...] = ()
        main_done = rows(main_path)
        counter = _counter(main_path)
        if main_done == 0:
            key = f"{main_run}#dense"
            units.append(Unit(key, main_run, "lottery_core.sweep:advance_unit",
                              {**kwargs, "dense_only": True}, (), 1, counter, wants_gpu,
                              first=True))  # fmt: skip
            after = (key,)
        left = rounds - max(main_done, 1)
        if left > 0:
            units.append(Unit(main_run, main_run, "lottery_core.sweep:advance_unit",
                              {**kwargs, "dense_only": False}, after, left, counter,
                              wants_gpu))  # fmt: skip
        for name in names[1:]:
            path = group.trial_dir(out, name, trial)
            left = rounds - max(rows(path), 1)
            if left > 0:
                run = _relative(path, root)
                units.append(Unit(run, run, "lottery_core.sweep:advance_unit",
                                  {**kwargs, "experiment": name, "dense_only": False},
                                  after, left, _counter(path), wants_gpu))  # fmt: skip
    return units


def _counter(path: Path) -> Callable[[], int]:
    return lambda: rows(path)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).absolute().relative_to(Path(root).absolute()))
    except ValueError:
        return str(path)


def all_runs(out: Path, root: Path) -> list[str]:
    """Every run folder a group folder will hold, relative to ``root``."""
    meta = group.read_group_config(out)
    config = ExperimentConfig(**meta["config"])
    names = list(group.experiments(config, meta["group"]["controls"]))
    return [
        _relative(group.trial_dir(out, name, trial), root)
        for trial in range(meta["group"]["trials"])
        for name in names
    ]


def finished_runs(out: Path, root: Path) -> list[str]:
    """The run folders of a group that have trained all their rounds, relative to ``root``."""
    meta = group.read_group_config(out)
    rounds = int(ExperimentConfig(**meta["config"]).rounds or 1)
    return [run for run in all_runs(out, root) if rows(Path(root) / run) >= rounds]


# -- progress ------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLine:
    """One line across runs: done / running / failed and an ETA, rewritten in place on a
    terminal; elsewhere (a log) printed only when the counts change."""

    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = None
        self.start_rounds: int | None = None
        self.shown = False

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if self.start_rounds is None:
            self.start_rounds = event.rounds_done
        line = (
            f"runs: {event.done}/{event.total} done, {event.running} running, "
            f"{event.failed} failed"
            + (f", {event.skipped} skipped" if event.skipped else "")
            + f"; {_duration(event.elapsed)} elapsed, "
            f"ETA {_duration(event.eta(self.start_rounds))}"
        )
        counts = (event.done, event.running, event.failed, event.skipped)
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
            self.shown = True
        elif counts != self.last:
            self.stream.write(line + "\n")
            self.stream.flush()
        self.last = counts

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


# -- the status file -----------------------------------------------------------------------


class StatusFile:
    """``status.json``: the driver (pid, host, times), its plan, the runs running now, every
    failure with its error, and where each unit ran (node, pid, seconds, its worker's peak
    RSS), rewritten on each change."""

    def __init__(self, folder: Path, plan_text: str, command: str):
        self.path = Path(folder) / STATUS
        old = self.read(folder)
        self.failures: dict[str, dict] = old.get("failed", {}) if old else {}
        self.places: dict[str, dict] = old.get("placed", {}) if old else {}
        self.driver = {"pid": os.getpid(), "host": socket.gethostname(), "plan": plan_text,
                       "command": command, "started": time.time()}  # fmt: skip
        self.running: list[str] = []

    @staticmethod
    def read(folder: Path) -> dict:
        try:
            return json.loads((Path(folder) / STATUS).read_text())
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


# -- tables --------------------------------------------------------------------------------


def write_sweep_tables(folder: Path, points: list[tuple[str, dict[str, Scalar]]]) -> None:
    """The sweep's ``results.csv`` and ``aggregate.csv`` from its points' own tables."""
    results, aggregates = [], []
    grid_keys = list(points[0][1]) if points else []
    for name, values in points:
        point_dir = Path(folder) / POINTS / name
        for table, frames in ((rundir.RESULTS, results), (rundir.AGGREGATE, aggregates)):
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
        files.write_csv(Path(folder) / rundir.RESULTS, pd.concat(results, ignore_index=True))
    if aggregates:
        files.write_csv(Path(folder) / rundir.AGGREGATE, pd.concat(aggregates, ignore_index=True))


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


# -- running -------------------------------------------------------------------------------


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
    out: Path | None = None,
    resume: Path | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = _say,
) -> SweepResult:
    """Run (or continue) a sweep; returns its tables and the runs that failed."""
    from .engine import Engine, plan

    plugins = get_plugins()
    if resume is not None:
        if out is not None:
            raise LotteryError("--resume continues the sweep in its folder; drop --out")
        folder = Path(resume)
        if rundir.kind(folder) != "sweep":
            rundir.check_not_held(folder)  # a sweep starting there: name its driver
            raise LotteryError(f"{str(folder)!r} is not a sweep folder (it has no {SWEEP_FILE})")
        sweep = read_sweep(folder / SWEEP_FILE)
        if file is not None:
            _check_same(read_sweep(file), sweep, folder)
    else:
        if file is None:
            raise LotteryError("give a sweep file, or --resume DIR")
        sweep = read_sweep(file)
        folder = Path(out) if out is not None else default_folder(file)
        found = rundir.kind(folder)
        if found == "sweep":
            _check_same(sweep, read_sweep(folder / SWEEP_FILE), folder)
        elif found not in ("missing", "empty"):
            rundir.check_new(folder)
        else:
            rundir.check_writable(folder)
    engine_plan = plan(workers, address, sweep.base.get("threads"))
    points = validate(sweep, plugins, engine_plan.threads)
    started = time.perf_counter()
    command = resume_command(folder, workers, address)
    new = rundir.kind(folder) in ("missing", "empty")
    engine = Engine(engine_plan)
    try:
        if new:  # Ray first: a cluster that cannot be reached leaves nothing behind
            engine.start()
            rundir.create(folder)
        with rundir.locked(folder):
            if new:
                header = "The sweep as run. Continue it with: python cli.py sweep --resume DIR"
                files.write_text(folder / SWEEP_FILE, to_toml(sweep, header))
            point_dirs = _prepare_points(folder, points, sweep)
            units = [u for p in point_dirs for u in group_units(p, folder)]
            every_run = [r for p in point_dirs for r in all_runs(p, folder)]
            names = [(p.name, p.values) for p in points]
            status = StatusFile(folder, engine_plan.describe(), command)
            intro = (
                f"sweep {sweep.source}: {len(points)} grid point{'s' * (len(points) != 1)} x "
                f"{sweep.trials} trial{'s' * (sweep.trials != 1)} = {len(every_run)} runs in "
                f"{folder}"
            )
            todo = {u.run for u in units}
            if not units:
                say(f"{intro}: all {len(every_run)} runs are done")
                # A killed driver's workers may have finished runs after its last tables.
                write_all_tables(point_dirs, folder, names)
            else:
                if engine.ray is None:
                    engine.start()
                started_in = f", Ray started in {engine.startup_s:.1f} s" if engine.owned else ""
                say(f"{intro} ({engine_plan.describe()}{started_in})")
                trained = sum(rows(folder / run) for run in every_run)
                if trained:
                    say(f"resuming: {len(every_run) - len(todo)} of {len(every_run)} runs done, "
                        f"{trained} rounds trained")  # fmt: skip
                status.retrying(sorted(todo))
                status.write()
                outcomes = _execute(engine, units, progress, status, folder, names, point_dirs)
                if outcomes is None:
                    raise SweepStopped(
                        f"\nInterrupted: finished rounds are saved in {folder}. Resume with: "
                        f"{command}"
                    )
    finally:
        engine.stop()
    finished = {r for p in point_dirs for r in finished_runs(p, folder)}
    failed = {r: i for r, i in status.failures.items() if r in set(every_run) and r not in finished}
    return SweepResult(
        folder,
        _read(folder / rundir.RESULTS),
        _read(folder / rundir.AGGREGATE),
        len(every_run),
        done=len(finished),
        failures={r: i["error"] for r, i in failed.items() if not i.get("skipped")},
        skipped={r: i["error"] for r, i in failed.items() if i.get("skipped")},
        resume_command=command,
        plan=engine_plan.describe(),
        startup_s=engine.startup_s,
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
    (folder / POINTS).mkdir(exist_ok=True)
    dirs = []
    for point in points:
        path = folder / POINTS / point.name
        if rundir.kind(path) in ("missing", "empty"):
            path.mkdir(exist_ok=True)
            group.write_group_config(path, point.config, sweep.trials, sweep.controls)
        else:
            saved = ExperimentConfig(**group.read_group_config(path)["config"])
            if saved.identity() != point.config.identity():
                raise LotteryError(
                    f"{str(path)!r} holds another config than its grid point computes (an "
                    "edited folder, or defaults that changed since); nothing was run"
                )
        dirs.append(path)
    return dirs


def write_all_tables(
    groups: list[Path],
    folder: Path | None = None,
    points: list[tuple[str, dict[str, Scalar]]] | None = None,
) -> None:
    """Every group's tables from its runs' own results, then, given the sweep ``folder`` and
    its ``points``, the sweep's tables from the groups'."""
    for g in groups:
        group.write_tables(g)
    if folder is not None and points is not None:
        write_sweep_tables(folder, points)


def _execute(engine, units, progress, status, folder, names, point_dirs):
    """Run the units, keeping the tables and ``status.json`` current; ``None`` on Ctrl-C."""
    from .engine import EngineInterrupted

    line = ProgressLine(progress)
    by_dir = {str(p.absolute()): p for p in point_dirs}

    def on_event(event) -> None:
        line(event)
        if event.outcome is not None and event.unit is not None:
            point = by_dir.get(event.unit.kwargs.get("out", ""))
            if point is not None:
                write_all_tables([point], folder, names)
            status.update(event)
        elif event.outcome is None and event.running_units != []:
            running = sorted({u.run for u in event.running_units})
            if running != status.running:
                status.update(event)

    try:
        outcomes = engine.run(units, on_event)
    except EngineInterrupted:
        line.close()
        status.write(finished=True)
        write_all_tables(point_dirs, folder, names)
        return None
    line.close()
    write_all_tables(point_dirs, folder, names)
    status.write(finished=True)
    return outcomes


def run_groups(groups: list[Path], engine_plan, progress: bool = True, data_source=None):
    """``run --trials/--controls --workers``: the groups' runs on the engine; the first
    group's tables, or ``RunFailed`` listing the failures and the resume command."""
    from .engine import Engine

    groups = [Path(g) for g in groups]
    root = groups[0]
    units = [u for g in groups for u in group_units(g, root)]
    workers = engine_plan.workers
    command_line = command("run", "--resume", root, *(["--workers", workers] if workers else []))
    failures: dict[str, str] = {}
    line = ProgressLine(progress)

    def on_event(event) -> None:
        line(event)
        if event.outcome is not None:
            write_all_tables(groups)
            if not event.outcome.ok and event.outcome.error != "cancelled":
                failures[event.unit.run] = event.outcome.error

    from .engine import EngineInterrupted

    if units:  # a finished group needs no Ray
        with Engine(engine_plan) as engine:
            try:
                engine.run(units, on_event)
            except EngineInterrupted:
                line.close()
                write_all_tables(groups)
                raise SweepStopped(
                    f"\nInterrupted: finished rounds are saved in {root}. Resume with: "
                    f"{command_line}"
                ) from None
        line.close()
    write_all_tables(groups)
    if failures:
        listed = "; ".join(f"{run}: {error}" for run, error in failures.items())
        raise RunFailed(f"{len(failures)} run(s) failed: {listed}. Resume with: {command_line}")
    if data_source is None:
        data_source = _data_source(root)
    frame = pd.read_csv(root / rundir.RESULTS)
    return group.GroupResult(frame, pd.read_csv(root / rundir.AGGREGATE), root, data_source)


def _data_source(root: Path) -> str:
    for config in sorted(Path(root).glob(f"{rundir.RUNS}/*/trial_*/{rundir.CONFIG}")):
        try:
            return json.loads(config.read_text()).get("data_source", "")
        except (OSError, ValueError):
            continue
    return ""


# -- reading a sweep folder ----------------------------------------------------------------


def sweep_points(folder: Path) -> tuple[Sweep, list[tuple[str, dict[str, Scalar]]]]:
    """A sweep folder's sweep and its points (name, grid values), without resolving."""
    sweep = read_sweep(Path(folder) / SWEEP_FILE)
    return sweep, [(point_name(v), v) for v in sweep.combinations()]


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
        point_dir = Path(folder) / POINTS / name
        order = list(group.experiments(make_config(**{**sweep.base, **values}), True))
        experiments = sorted(
            (p.name for p in (point_dir / rundir.RUNS).glob("*") if p.is_dir()),
            key=lambda e: (order.index(e) if e in order else len(order), e),
        )
        for experiment in experiments:
            trials = sorted((point_dir / rundir.RUNS / experiment).glob("trial_*"),
                            key=lambda p: int(p.name.split("_")[-1]))  # fmt: skip
            key = tuple(experiment if f == "experiment" else values[f] for f in fields)
            found.setdefault(key, []).extend(trials)
            experiment_of[key] = experiment if "experiment" in fields else None
    series = []
    for key, trials in found.items():
        parts = [f"{f}={format_value(v)}" for f, v in zip(fields, key, strict=True)
                 if f != "experiment"]  # fmt: skip
        label = ", ".join(parts)
        if "experiment" in fields:
            label = f"{label} / {experiment_of[key]}" if label else str(experiment_of[key])
        series.append((label or BASE_POINT, experiment_of[key], trials))
    if not series:
        raise LotteryError(f"{str(folder)!r} is a sweep with no run yet")
    return series


def status_text(folder: Path) -> str:
    """``sweep status DIR``: every run's rounds, what runs now, the failures, how to resume."""
    folder = Path(folder)
    if rundir.kind(folder) != "sweep":
        raise LotteryError(f"{str(folder)!r} is not a sweep folder (it has no {SWEEP_FILE})")
    sweep, points = sweep_points(folder)
    state = StatusFile.read(folder)
    driver = state.get("driver", {})
    alive = _driver_alive(driver)
    running = set(state.get("running", [])) if alive else set()
    failed = state.get("failed", {})
    plugins = get_plugins()
    table, own_failures = [], {}
    counts = dict.fromkeys(("done", "running", "failed", "skipped", "waiting"), 0)
    for name, values in points:
        point_dir = folder / POINTS / name
        rounds = _rounds_of(point_dir, sweep, values, plugins)
        names = [group.MAIN]
        if sweep.controls:
            config = make_config(**{**sweep.base, **values})
            names = list(group.experiments(config, True))
        for trial in range(sweep.trials):
            cells = {}
            for experiment in names:
                run_dir = group.trial_dir(point_dir, experiment, trial)
                run = _relative(run_dir, folder)
                done = rows(run_dir)
                info = failed.get(run)
                if rounds and done >= rounds:
                    cell, what = "done", "done"
                elif run in running:
                    cell, what = f"{done}/{rounds} running", "running"
                elif info is not None and info.get("skipped"):
                    cell, what = "skipped", "skipped"
                elif info is not None:
                    cell, what = f"{done}/{rounds} failed", "failed"
                    own_failures[run] = info.get("error", "?")
                else:
                    cell, what = (f"{done}/{rounds}" if done else "-"), "waiting"
                counts[what] += 1
                cells[experiment] = cell
            table.append({"point": name, "trial": trial, **cells})
    total = sum(counts.values())
    summary = ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "done")
    lines = [
        f"sweep {folder}: {len(points)} point(s) x {sweep.trials} trial(s)"
        f"{' with controls' if sweep.controls else ''} = {total} runs: {summary}"
    ]
    if driver:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(driver.get("updated", 0)))
        if alive:
            lines.append(
                f"driver: pid {driver.get('pid')} on {driver.get('host')} is running "
                f"({driver.get('plan', '')}); updated {when}"
            )
        else:
            lines.append(f"driver: not running (last update {when})")
    lines += ["", pd.DataFrame(table).fillna("").to_string(index=False)]
    if own_failures:
        lines += ["", f"failed ({len(own_failures)}):"]
        lines += [f"  {run}: {error}" for run, error in own_failures.items()]
    if counts["done"] < total and not alive:
        line = driver.get("command") or command("sweep", "--resume", folder)
        lines += ["", f"resume with: {line}"]
    return "\n".join(lines)


def _rounds_of(point_dir: Path, sweep: Sweep, values: dict, plugins: Plugins) -> int:
    try:
        return int(ExperimentConfig(**group.read_group_config(point_dir)["config"]).rounds or 0)
    except LotteryError:
        from .resolution import resolve

        try:
            return int(resolve(make_config(**{**sweep.base, **values}), plugins).rounds or 0)
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
