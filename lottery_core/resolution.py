"""A config resolved against the installed plugins: names checked, the model's defaults
filled in, the thread rule applied, so ``config.json`` records what actually ran."""

from __future__ import annotations

import os

from .config import LAYERWISE_ONLY, MODEL_FILLED, ExperimentConfig, ResolvedConfig
from .errors import LotteryError
from .plugins import Plugins
from .threads import check_threads


def default_threads() -> int:
    """The thread rule: one intra-op thread per core this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve(config: ExperimentConfig, plugins: Plugins) -> ResolvedConfig:
    """Check every plugin name and fill unset fields from the model's defaults.

    With ``scope = "global"`` one rate ranks every layer, so a per-kind rate would be ignored:
    giving one is an error naming it.
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
    defaults = model.defaults
    values = config.model_dump()
    for key, attribute in MODEL_FILLED.items():
        if values[key] is None and (key != "conv_rate" or config.scope == "layerwise"):
            values[key] = getattr(defaults, attribute)
    if config.scope == "layerwise" and values["output_rate"] is None:
        values["output_rate"] = values["rate"] * defaults.output_rate_factor
    if values["threads"] is None:
        values["threads"] = default_threads()
    check_threads(values["threads"])  # tens of thousands of threads: a segfault mid-run
    if values["dataset"] is None:
        raise LotteryError(f"model {config.model!r} names no default dataset; give --dataset")
    plugins.datasets.get(values["dataset"])
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
    return resolved
