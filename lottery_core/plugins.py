"""The plugin manager and the name registries built from it.

Plugins come from the ``lottery`` entry-point group, built-ins included (this project's own
``pyproject.toml`` declares them). When the project is run from a checkout that was never
installed, the built-in modules are registered by name instead, through the very same hooks.
Set ``LOTTERY_NO_ENTRYPOINTS=1`` to load built-ins only, or ``LOTTERY_BLOCK_PLUGINS=a,b`` to skip
plugins by name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, TypeVar

import pluggy

from . import hookspecs
from .errors import LotteryError
from .specs import DatasetSpec, ModelSpec, PruningStrategy, ReinitPolicy

GROUP = "lottery"
BUILTIN_MODULES = {
    "datasets": "plugins.datasets",
    "models": "plugins.models",
    "pruning": "plugins.pruning",
    "reinit": "plugins.reinit",
}

T = TypeVar("T")


@dataclass
class Registry(Generic[T]):
    """Named plugin objects of one kind, remembering which plugin registered each."""

    kind: str
    expected: type
    items: dict[str, T] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def add(self, item: T, source: str) -> None:
        if not isinstance(item, self.expected):
            raise LotteryError(
                f"plugin {source!r} registered a {type(item).__name__} as a {self.kind}; "
                f"expected {self.expected.__name__}"
            )
        name = item.name  # type: ignore[attr-defined]
        if name in self.items:
            raise LotteryError(
                f"{self.kind} {name!r} is registered twice: by plugin {self.sources[name]!r} "
                f"and by plugin {source!r}"
            )
        self.items[name] = item
        self.sources[name] = source

    def get(self, name: str) -> T:
        if name not in self.items:
            known = ", ".join(sorted(self.items)) or "(none)"
            raise LotteryError(f"unknown {self.kind} {name!r}; known: {known}")
        return self.items[name]

    def names(self) -> list[str]:
        return sorted(self.items)


@dataclass
class Plugins:
    """Everything the installed plugins provide, resolved once."""

    manager: pluggy.PluginManager
    datasets: Registry[DatasetSpec]
    models: Registry[ModelSpec]
    strategies: Registry[PruningStrategy]
    reinits: Registry[ReinitPolicy]

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def describe(self) -> list[dict[str, Any]]:
        """One entry per plugin: its name, where it comes from, its hooks and what it registers."""
        dists = {id(plugin): dist for plugin, dist in self.manager.list_plugin_distinfo()}
        rows = []
        for name, plugin in self.manager.list_name_plugin():
            if plugin is None:
                continue
            dist = dists.get(id(plugin))
            if dist is not None:
                origin = f"{dist.project_name} {dist.version}"
            else:
                origin = "built-in (not installed)"
            registers = []
            for registry in (self.datasets, self.models, self.strategies, self.reinits):
                for item, source in sorted(registry.sources.items()):
                    if source == name:
                        registers.append(f"{registry.kind} {item}")
            hooks = sorted(h.name for h in self.manager.get_hookcallers(plugin) or [])
            rows.append(
                {
                    "name": name,
                    "origin": origin,
                    "module": getattr(plugin, "__name__", type(plugin).__name__),
                    "hooks": hooks,
                    "registers": registers,
                }
            )
        return rows


def _collect(manager: pluggy.PluginManager, hook_name: str, registry: Registry) -> Registry:
    """Call one registration hook plugin by plugin, so each registered name keeps its source."""
    caller = getattr(manager.hook, hook_name)
    for impl in caller.get_hookimpls():

        def register(item: Any, _source: str = impl.plugin_name) -> None:
            registry.add(item, _source)

        impl.function(register=register)
    return registry


def build_manager(
    load_entrypoints: bool | None = None, extra: list[Any] | None = None
) -> pluggy.PluginManager:
    """A plugin manager with entry points loaded, built-ins ensured and spelling checked."""
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    for blocked in filter(None, os.environ.get("LOTTERY_BLOCK_PLUGINS", "").split(",")):
        manager.set_blocked(blocked.strip())
    if load_entrypoints is None:
        load_entrypoints = os.environ.get("LOTTERY_NO_ENTRYPOINTS", "") in ("", "0")
    try:
        if load_entrypoints:
            manager.load_setuptools_entrypoints(GROUP)
        for name, module_path in BUILTIN_MODULES.items():
            if manager.has_plugin(name) or manager.is_blocked(name):
                continue
            module = importlib.import_module(module_path)
            if not manager.is_registered(module):
                manager.register(module, name=name)
        for plugin in extra or []:
            manager.register(plugin, name=getattr(plugin, "__name__", type(plugin).__name__))
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise LotteryError(f"plugin {exc.plugin!r} is invalid: {exc}") from exc
    except ImportError as exc:
        raise LotteryError(f"a lottery plugin failed to import: {exc}") from exc
    return manager


def collect(manager: pluggy.PluginManager) -> Plugins:
    """Resolve every registration hook of ``manager`` into name registries."""
    return Plugins(
        manager=manager,
        datasets=_collect(manager, "register_datasets", Registry("dataset", DatasetSpec)),
        models=_collect(manager, "register_models", Registry("model", ModelSpec)),
        strategies=_collect(
            manager, "register_pruning_strategies", Registry("pruning strategy", PruningStrategy)
        ),
        reinits=_collect(
            manager, "register_reinit_policies", Registry("reinit policy", ReinitPolicy)
        ),
    )


@lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    return collect(build_manager())
