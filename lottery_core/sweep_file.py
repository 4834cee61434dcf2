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

Everything is validated before anything is written: the sweep's size counted (at most
``MAX_POINTS`` points, grid product times variants, and ``MAX_RUNS`` runs, points times
``trials``; ``trials`` is at most ``config.MAX_TRIALS``), the grid's entries one by one against the
base (an error names ``grid entry lr[2]``), each variant's values likewise (``variant 2``, as
strictly typed as a config file), then every point (an error names the point), then each
point's data and model. Running the points is ``sweep``'s job.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths, preflight
from .config import (
    NOT_IDENTITY,
    ExperimentConfig,
    ResolvedConfig,
    check_file_types,
    check_trials,
    make_config,
    read_table,
)
from .errors import LotteryError
from .experiment import Experiment
from .loading import data_key, load_data
from .plugins import Plugins
from .resolution import resolve
from .specs import DatasetSplits

RESERVED = ("grid", "variant", "trials", "controls")
NOT_IN_SWEEP = ("out",)  # the sweep names its run folders
BASE_POINT = "base"  # the one point of a sweep without a grid
NAME_MAX = 120
MAX_POINTS = 10_000  # a larger grid is refused at once (split it into several sweeps)
MAX_RUNS = 100_000  # points x trials: more are refused at once too (trials: MAX_TRIALS at most)
SAFE = re.compile(r"[^A-Za-z0-9._+-]")
Scalar = str | int | float | bool


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
    try:
        check_trials(trials)  # at once: a billion trials would be planned for minutes
    except LotteryError as exc:
        raise _fail(source, str(exc)) from None
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
    seen: dict[frozenset[tuple[str, Scalar]], int] = {}  # one pass: many variants read at once
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
        earlier = seen.setdefault(frozenset(variant.items()), i)
        if earlier != i:
            raise _fail(source, f"variant {i + 1} repeats variant {earlier + 1}")
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
    config: ResolvedConfig


def validate(
    sweep: Sweep, plugins: Plugins, threads: int | None = None, check_data: bool = True
) -> list[Point]:
    """Every point resolved and checked, or one line naming the grid entry or point at fault.

    ``threads`` fills the thread count of points whose config leaves it open (the engine's
    per-worker share). Nothing is written.
    """
    _check_size(sweep)
    base = dict(sweep.base)
    if threads is not None and "threads" not in base and "threads" not in sweep.grid:
        base["threads"] = threads
    try:
        check_file_types(base, "the sweep")
        make_config(**base)
    except LotteryError as exc:
        raise _fail(sweep.source, f"base config: {_reason(exc)}") from None
    _check_entries(sweep, base, plugins)
    _check_variants(sweep, base)
    points = _resolve_points(sweep, base, plugins)
    _check_distinct(sweep, points)
    if check_data:
        _check_data(sweep, points, plugins)
    return points


def _check_size(sweep: Sweep) -> None:
    """The points (the grid's product times the variants) and runs (points x trials) counted,
    not built: too many are refused at once, before minutes of building and validating."""
    sizes = [(len(v), k) for k, v in sweep.grid.items()]
    if sweep.variants:
        sizes.append((len(sweep.variants), "variants"))
    count = math.prod(n for n, _ in sizes)
    product = " x ".join(f"{n} {k}" for n, k in sizes)
    if count > MAX_POINTS:
        raise _fail(sweep.source, f"the grid has {count:,} points ({product}); a sweep takes at "
                                  f"most {MAX_POINTS:,}: split it into several sweeps")  # fmt: skip
    if count * sweep.trials > MAX_RUNS:
        raise _fail(sweep.source, f"the sweep has {count * sweep.trials:,} runs ({count:,} "
                                  f"points x {sweep.trials:,} trials); a sweep takes at most "
                                  f"{MAX_RUNS:,}: split it into several sweeps")  # fmt: skip


def _check_entries(sweep: Sweep, base: dict[str, Any], plugins: Plugins) -> None:
    """Each grid entry on its own against the base: an error names ``grid entry lr[2]``."""
    for key, values in sweep.grid.items():
        extra = ExperimentConfig.model_fields[key].json_schema_extra
        registry = getattr(plugins, str(extra["plugin"])) if isinstance(extra, dict) else None
        for i, value in enumerate(values):
            try:
                check_file_types({key: value}, "the sweep")
                make_config(**{**base, key: value})
                if registry is not None:  # a name no plugin registers: this entry's fault
                    registry.get(value)
            except LotteryError as exc:
                raise _fail(sweep.source, f"grid entry {key}[{i}] = {value!r}: "
                                          f"{_reason(exc)}") from None  # fmt: skip


def _check_variants(sweep: Sweep, base: dict[str, Any]) -> None:
    """Each variant's values as strictly as the grid's and a config file's (``rounds = true``,
    ``download = "no"`` refused), one by one against the base: an error names ``variant 2``."""
    for i, variant in enumerate(sweep.variants):
        for key, value in variant.items():
            try:
                check_file_types({key: value}, "the sweep")
                make_config(**{**base, key: value})
            except LotteryError as exc:
                raise _fail(sweep.source, f"variant {i + 1}: {key} = {value!r}: "
                                          f"{_reason(exc)}") from None  # fmt: skip


def _resolve_points(sweep: Sweep, base: dict[str, Any], plugins: Plugins) -> list[Point]:
    """Every point's config resolved (the sweep's one ``resolve`` call); folder names unique."""
    points = []
    for values in sweep.combinations():
        name = point_name(values)
        where = f"grid point {name}" if values else "base config"
        try:
            config = resolve(make_config(**{**base, **values}), plugins)
        except LotteryError as exc:
            raise _fail(sweep.source, f"{where}: {_reason(exc)}") from None
        points.append(Point(name, values, config))
    names = [p.name for p in points]
    if len(set(names)) != len(names):  # only if two values format alike: say which
        twice = sorted({n for n in names if names.count(n) > 1})
        raise _fail(sweep.source, f"two grid points would share the folder {twice[0]!r}")
    return points


def _check_data(sweep: Sweep, points: list[Point], plugins: Plugins) -> None:
    """Each point's data loads (once per data set) and its model runs on it."""
    data_cache: dict[tuple, DatasetSplits] = {}
    for point in points:
        key = data_key(point.config)
        try:
            if key not in data_cache:
                data_cache[key] = load_data(point.config, plugins)
            # on the CPU: the driver may lack the workers' GPUs, and shapes are the same
            checked = point.config.model_copy(update={"device": "cpu"})
            preflight.validate(Experiment(checked, plugins=plugins, data=data_cache[key]))
        except LotteryError as exc:
            where = f"grid point {point.name}" if point.values else "base config"
            raise _fail(sweep.source, f"{where}: {_reason(exc)}") from None


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


def sweep_points(folder: Path) -> tuple[Sweep, list[tuple[str, dict[str, Scalar]]]]:
    """A sweep folder's sweep and its points (name, grid values), without resolving."""
    sweep = read_sweep(Path(folder) / paths.SWEEP)
    return sweep, [(point_name(v), v) for v in sweep.combinations()]
