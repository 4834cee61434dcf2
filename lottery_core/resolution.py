"""A config resolved against the installed plugins: names checked, the model's defaults
filled in, step counts in units turned into iterations, the thread rule applied, so
``config.json`` records what actually ran."""

from __future__ import annotations

import os
from itertools import pairwise
from typing import Any

from . import guards
from .config import (
    KEEP_TRAINED,
    LAYERWISE_ONLY,
    MODEL_FILLED,
    MODEL_RECIPE,
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
    _check_retrain(config)
    for name in config.branches:
        plugins.branches.get(name)
    defaults = model.defaults
    values = config.model_dump()
    if config.retrain != "weights":
        values["reinit"] = KEEP_TRAINED  # the trained weights are kept (``_check_retrain``)
    from_model = _fill_recipe(values, config, defaults)
    recipe = ExperimentConfig.model_construct(**values)  # the recipe as it will run
    _check_settings(recipe, plugins.optimizers, recipe.optimizer, OPTIMIZER_SETTINGS)
    _check_settings(recipe, plugins.schedules, recipe.schedule, SCHEDULE_SETTINGS)
    for key, attribute in MODEL_FILLED.items():
        if values[key] is None and (key != "conv_rate" or config.scope == "layerwise"):
            values[key] = getattr(defaults, attribute)
    if config.scope == "layerwise" and values["output_rate"] is None:
        values["output_rate"] = values["rate"] * defaults.output_rate_factor
    model_optimizer = defaults.optimizer or default_of("optimizer")
    if config.lr is None and values["optimizer"] != model_optimizer:
        raise LotteryError(
            f"invalid config: --optimizer {values['optimizer']} needs --lr (the default lr of "
            f"model {config.model!r}, {defaults.lr}, is for {model_optimizer})"
        )
    if values["threads"] is None:
        values["threads"] = default_threads()
    check_threads(values["threads"])  # tens of thousands of threads: a segfault mid-run
    if values["dataset"] is None:
        raise LotteryError(f"model {config.model!r} names no default dataset; give --dataset")
    dataset = plugins.datasets.get(values["dataset"])
    values["augment"] = _augment(config, dataset, defaults.augment)
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
    _check_recipe(resolved, plugins, from_model)
    return resolved


def _check_retrain(config: ExperimentConfig) -> None:
    """``--retrain lr`` and ``--retrain finetune`` (Renda et al. 2020) retrain the trained
    weights, so they set ``--reinit none``: another policy given with them, or pruning at θ0
    (nothing trained to keep), is refused in one line."""
    if config.retrain == "weights":
        return
    if "reinit" in config.model_fields_set and config.reinit != KEEP_TRAINED:
        raise LotteryError(
            f"invalid config: --retrain {config.retrain} keeps the trained weights, so it "
            f"cannot be combined with --reinit {config.reinit}; drop --reinit (it means "
            f"--reinit {KEEP_TRAINED}), or use --retrain weights"
        )
    if config.prune_at == "init":
        raise LotteryError(
            f"invalid config: --retrain {config.retrain} keeps the trained weights, and "
            "--prune-at init trains from θ0; use --retrain weights"
        )


def _fill_recipe(values: dict[str, Any], config: ExperimentConfig, defaults: Any) -> set[str]:
    """The model's training recipe (``ModelDefaults``: optimizer, momentum, schedule, ...) for
    every recipe field the user did not set, in place; returns the fields it filled.

    The optimizer's settings (momentum, Nesterov, weight decay) come with the model's optimizer
    only, and the schedule's (milestones, gamma) with its schedule: ``--optimizer adam`` on a
    model whose recipe is SGD with momentum does not inherit the momentum. A model without a
    recipe (every built-in of the paper) fills nothing, so its runs are what they were."""
    given = config.model_fields_set
    filled: set[str] = set()
    groups = {"optimizer": OPTIMIZER_SETTINGS, "schedule": SCHEDULE_SETTINGS, "warmup": ()}
    for head, settings in groups.items():
        model_value = getattr(defaults, MODEL_RECIPE[head])
        if head not in given and model_value is not None:
            values[head] = model_value
            filled.add(head)
        model_head = model_value if model_value is not None else default_of(head)
        if values[head] != model_head:
            continue  # the user's own optimizer or schedule: none of the model's settings
        for name in settings:
            value = getattr(defaults, MODEL_RECIPE[name])
            if name not in given and value is not None:
                values[name] = list(value) if isinstance(value, tuple) else value
                filled.add(name)
    return filled


def _augment(config: ExperimentConfig, dataset: Any, model_default: bool | None) -> bool:
    """Whether the run augments its training batches: as the config says, else as the model
    says (``ModelDefaults.augment``), else as the dataset declares (on where it has an
    augmentation); asking a dataset without one is an error, a model's default is not."""
    if config.augment is None:
        return dataset.augment is not None and model_default is not False
    if config.augment and dataset.augment is None:
        raise LotteryError(
            f"invalid config: dataset {dataset.name!r} declares no augmentation; drop --augment"
        )
    return config.augment


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


def _check_recipe(
    config: ResolvedConfig, plugins: Plugins, from_model: set[str] | None = None
) -> None:
    """The step fields against each other, then the optimizer's and schedule's own checks.
    ``from_model``: the recipe fields the model filled in, named when they do not fit."""
    if from_model and {"milestones", "warmup"} & from_model:
        _check_model_steps(config, from_model)
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


def _check_model_steps(config: ResolvedConfig, from_model: set[str]) -> None:
    """The model's milestones or warmup against the run's iterations, in words that say they
    are the model's (a short ``--iterations`` is the usual cause) and how to override them."""
    shown = {name: config.steps.get(name, getattr(config, name)) for name in from_model}
    if "milestones" in from_model and config.milestones:
        if config.milestones[-1] >= config.iterations:
            raise LotteryError(
                f"invalid config: model {config.model!r} drops the learning rate at "
                f"{_steps_text(shown['milestones'])} ({config.milestones} iterations here), not "
                f"all below --iterations {config.iterations}; give --milestones, or --schedule "
                "constant"
            )
    if "warmup" in from_model and config.warmup > config.iterations:
        raise LotteryError(
            f"invalid config: model {config.model!r} warms up over {shown['warmup']} "
            f"({config.warmup} iterations here), more than --iterations {config.iterations}; "
            "give --warmup"
        )


def _steps_text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
