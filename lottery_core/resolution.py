"""A config resolved against the installed plugins: names checked, the model's defaults
filled in, step counts in units turned into iterations, the thread rule applied, so
``config.json`` records what actually ran."""

from __future__ import annotations

import os
from itertools import pairwise
from typing import Any

from . import guards
from .config import (
    LAYERWISE_ONLY,
    MODEL_FILLED,
    OPTIMIZER_SETTINGS,
    SCHEDULE_SETTINGS,
    STEP_FIELDS,
    ExperimentConfig,
    ResolvedConfig,
    default_of,
    needs_epochs,
    to_iterations,
)
from .errors import LotteryError
from .loading import load_data
from .plugins import Plugins, Registry
from .threads import check_threads

# The training split's size by (dataset spec, folder, split seed, validation size): steps in
# epochs need it, and a process loads a dataset for it once (a sweep resolves many points).
_TRAIN_SIZES: dict[tuple, int] = {}


def default_threads() -> int:
    """The thread rule: one intra-op thread per core this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve(config: ExperimentConfig, plugins: Plugins) -> ResolvedConfig:
    """Check every plugin name and fill unset fields from the model's defaults.

    With ``scope = "global"`` one rate ranks every layer, so a per-kind rate would be ignored:
    giving one is an error naming it; so is a setting the chosen optimizer or schedule does not
    read (``--momentum`` with Adam). Step fields given in units become iteration counts, and
    ``steps`` records the text; a count in epochs needs the training split's size, so the
    dataset is loaded for it (once per process).
    """
    if config.scope == "global":
        ignored = [name for name in LAYERWISE_ONLY if getattr(config, name) is not None]
        if ignored:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in ignored)
            raise LotteryError(
                f"invalid config: {flags} only apply with --scope layerwise; with --scope "
                "global, --rate prunes all layers together"
            )
    model = plugins.models.get(config.model)
    plugins.strategies.get(config.prune)
    plugins.reinits.get(config.reinit)
    for name in config.branches:
        plugins.branches.get(name)
    _check_settings(config, plugins.optimizers, config.optimizer, OPTIMIZER_SETTINGS)
    _check_settings(config, plugins.schedules, config.schedule, SCHEDULE_SETTINGS)
    defaults = model.defaults
    values = config.model_dump()
    for key, attribute in MODEL_FILLED.items():
        if values[key] is None and (key != "conv_rate" or config.scope == "layerwise"):
            values[key] = getattr(defaults, attribute)
    if config.scope == "layerwise" and values["output_rate"] is None:
        values["output_rate"] = values["rate"] * defaults.output_rate_factor
    if config.lr is None and config.optimizer != default_of("optimizer"):
        raise LotteryError(
            f"invalid config: --optimizer {config.optimizer} needs --lr (the default lr of "
            f"model {config.model!r}, {defaults.lr}, is for {default_of('optimizer')})"
        )
    if values["threads"] is None:
        values["threads"] = default_threads()
    check_threads(values["threads"])  # tens of thousands of threads: a segfault mid-run
    if values["dataset"] is None:
        raise LotteryError(f"model {config.model!r} names no default dataset; give --dataset")
    plugins.datasets.get(values["dataset"])
    _resolve_steps(values, plugins)
    resolved = ResolvedConfig(**values)
    if resolved.prune_at == "init" and resolved.rewind_iter:
        raise LotteryError(
            "invalid config: --prune-at init prunes and trains from θ0; drop --rewind-iter"
        )
    if resolved.rewind_iter >= resolved.iterations:
        raise LotteryError(
            f"invalid config: rewind_iter ({resolved.rewind_iter}) must be below "
            f"iterations ({resolved.iterations})"
        )
    _check_recipe(resolved, plugins)
    return resolved


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_settings(
    config: ExperimentConfig, registry: Registry, name: str, governed: tuple[str, ...]
) -> None:
    """Refuse a setting the chosen optimizer or schedule does not read, set away from its
    default: it would be silently ignored."""
    spec = registry.get(name)
    for field in governed:
        if field not in spec.settings and getattr(config, field) != default_of(field):
            reads = ", ".join(_flag(f) for f in spec.settings) or "none of them"
            raise LotteryError(
                f"invalid config: {_flag(field)} does not apply to {registry.kind} {name!r} "
                f"(the settings it reads: {reads})"
            )


def _resolve_steps(values: dict[str, Any], plugins: Plugins) -> None:
    """Step fields given in units (``2ep``, ``500it``) as iteration counts, in place; their
    text goes to ``steps`` (a resolved config's own record is kept)."""
    given = {name: values[name] for name in STEP_FIELDS if _in_units(values[name])}
    if not given:
        return
    per_epoch = None
    if any(needs_epochs(value) for value in given.values()):
        size = train_size(values, plugins)
        per_epoch = size // values["batch_size"]
        if per_epoch < 1:
            raise LotteryError(
                f"--batch-size {values['batch_size']} is larger than the {size} training "
                f"examples of {values['dataset']!r}, so an epoch has no step"
            )
    for name, value in given.items():
        counts = []
        for item in value if isinstance(value, list) else [value]:
            count = to_iterations(item, per_epoch)
            if count < STEP_FIELDS[name]:
                raise LotteryError(
                    f"invalid config: {name} {item!r} is {count} iterations here; it must be at "
                    f"least {STEP_FIELDS[name]}"
                )
            counts.append(count)
        values[name] = counts if isinstance(value, list) else counts[0]
    values["steps"] = {**(values.get("steps") or {}), **given}


def _in_units(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) for v in values)


def train_size(values: dict[str, Any], plugins: Plugins) -> int:
    """The size of the training split a run of these config values trains on (its dataset
    loaded as the run loads it, once per process)."""
    spec = plugins.datasets.get(values["dataset"])
    key = (spec, str(values["data_dir"]), values["split_seed"], values["validation_size"])
    if key not in _TRAIN_SIZES:
        data = load_data(ResolvedConfig.model_construct(**values), plugins)
        _TRAIN_SIZES[key] = int(data.train_x.shape[0])
    return _TRAIN_SIZES[key]


def _check_recipe(config: ResolvedConfig, plugins: Plugins) -> None:
    """The step fields against each other, then the optimizer's and schedule's own checks."""
    if config.warmup > config.iterations:
        raise LotteryError(
            f"invalid config: warmup ({config.warmup}) must be at most iterations "
            f"({config.iterations})"
        )
    milestones = config.milestones
    if any(later <= earlier for earlier, later in pairwise(milestones)):
        raise LotteryError(
            f"invalid config: milestones {milestones} must increase (iterations, in order)"
        )
    if milestones and milestones[-1] >= config.iterations:
        raise LotteryError(
            f"invalid config: milestone {milestones[-1]} is not below iterations "
            f"({config.iterations}): it would never be reached"
        )
    for registry, name in ((plugins.optimizers, config.optimizer),
                           (plugins.schedules, config.schedule)):  # fmt: skip
        spec = registry.get(name)
        if spec.check is not None:
            guards.call(registry.who(name), "checking the config", spec.check, config)
