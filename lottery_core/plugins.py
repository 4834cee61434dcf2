"""The plugin manager and the name registries built from it.

Plugins come from the ``lottery`` entry-point group, built-ins included (this project's own
``pyproject.toml`` declares them). When the project is run from a checkout that was never
installed, the built-in modules are registered by name instead, through the very same hooks.
Set ``LOTTERY_NO_ENTRYPOINTS=1`` to load built-ins only, or ``LOTTERY_BLOCK_PLUGINS=a,b`` to skip
plugins by name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, TypeVar

import pluggy

from . import hookspecs
from .errors import LotteryError, PluginError
from .guards import blame, describe_error
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

    def who(self, name: str) -> str:
        """``pruning strategy 'snip' (plugin 'lottery_examples')``: for one-line errors."""
        return f"{self.kind} {name!r} (plugin {self.sources.get(name, '?')!r})"


@dataclass
class Plugins:
    """Everything the installed plugins provide, resolved once."""

    manager: pluggy.PluginManager
    datasets: Registry[DatasetSpec]
    models: Registry[ModelSpec]
    strategies: Registry[PruningStrategy]
    reinits: Registry[ReinitPolicy]
    broken: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def notify(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a lifecycle hook plugin by plugin (pluggy's order: last registered first); an
        exception names the hook and the plugin; a non-dict, non-None result is refused."""
        results = []
        caller = getattr(self.manager.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            who = f"plugin {impl.plugin_name!r}"
            with blame(who, f"in {hook_name}"):
                result = impl.function(**{name: kwargs[name] for name in impl.argnames})
            if result is not None and not isinstance(result, dict):
                raise PluginError(
                    f"{who} returned a {type(result).__name__} from {hook_name}; expected a dict "
                    "of extra columns or None"
                )
            results.append(result)
        return results

    def describe(self) -> list[dict[str, Any]]:
        """One entry per plugin: its name, where it comes from, its hooks and what it registers."""
        rows = []
        for name, plugin in self.manager.list_name_plugin():
            if plugin is None:
                continue
            origin = self.origins.get(name, "built-in (not installed)")
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
                    "broken": "",
                }
            )
        for name, reason in sorted(self.broken.items()):
            rows.append(
                {
                    "name": name,
                    "origin": self.origins.get(name, "?"),
                    "module": "",
                    "hooks": [],
                    "registers": [],
                    "broken": reason,
                }
            )
        return rows


def _collect(
    manager: pluggy.PluginManager, hook_name: str, registry: Registry, broken: dict[str, str]
) -> Registry:
    """Call one registration hook plugin by plugin, so each registered name keeps its source.

    A plugin whose hook raises is marked broken (with the reason) and what it registered in
    that call is dropped; a mistake such as a wrong type or a duplicate name still stops."""
    caller = getattr(manager.hook, hook_name)
    for impl in caller.get_hookimpls():
        if impl.plugin_name in broken:
            continue
        added: list[str] = []

        def register(item: Any, _source: str = impl.plugin_name, _added=added) -> None:
            registry.add(item, _source)
            _added.append(item.name)

        try:
            impl.function(register=register)
        except LotteryError:
            raise
        except Exception as exc:  # a third-party bug must not take the tool down
            for name in added:
                registry.items.pop(name, None)
                registry.sources.pop(name, None)
            _mark_broken(broken, impl.plugin_name, f"{hook_name} raised {describe_error(exc)}")
    return registry


def _mark_broken(broken: dict[str, str], name: str, reason: str) -> None:
    broken[name] = reason
    print(f"Warning: plugin {name!r} is skipped: {reason}", file=sys.stderr)


def _load_entrypoints(
    manager: pluggy.PluginManager, broken: dict[str, str], origins: dict[str, str]
) -> None:
    """Each ``lottery`` entry point imported and registered on its own, so one that raises is
    skipped with one warning line instead of breaking every command."""
    for entry in importlib.metadata.entry_points(group=GROUP):
        if manager.is_blocked(entry.name) or manager.has_plugin(entry.name):
            continue
        dist = entry.dist
        origins[entry.name] = f"{dist.name} {dist.version}" if dist is not None else "?"
        try:
            plugin = entry.load()
            manager.register(plugin, name=entry.name)
        except pluggy.PluginValidationError as exc:
            raise LotteryError(f"plugin {entry.name!r} is invalid: {exc}") from exc
        except Exception as exc:  # an import error or a bug in the package
            _mark_broken(broken, entry.name, f"import failed: {describe_error(exc)}")


def build_manager(
    load_entrypoints: bool | None = None,
    extra: list[Any] | None = None,
    broken: dict[str, str] | None = None,
    origins: dict[str, str] | None = None,
) -> pluggy.PluginManager:
    """A plugin manager with entry points loaded, built-ins ensured and spelling checked;
    plugins that fail to import land in ``broken`` (name -> reason)."""
    broken = {} if broken is None else broken
    origins = {} if origins is None else origins
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    for blocked in filter(None, os.environ.get("LOTTERY_BLOCK_PLUGINS", "").split(",")):
        manager.set_blocked(blocked.strip())
    if load_entrypoints is None:
        load_entrypoints = os.environ.get("LOTTERY_NO_ENTRYPOINTS", "") in ("", "0")
    try:
        if load_entrypoints:
            _load_entrypoints(manager, broken, origins)
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
    return manager


def collect(
    manager: pluggy.PluginManager,
    broken: dict[str, str] | None = None,
    origins: dict[str, str] | None = None,
) -> Plugins:
    """Resolve every registration hook of ``manager`` into name registries."""
    broken = {} if broken is None else broken
    kinds = [
        ("register_datasets", Registry("dataset", DatasetSpec)),
        ("register_models", Registry("model", ModelSpec)),
        ("register_pruning_strategies", Registry("pruning strategy", PruningStrategy)),
        ("register_reinit_policies", Registry("reinit policy", ReinitPolicy)),
    ]
    registries = [_collect(manager, hook, registry, broken) for hook, registry in kinds]
    for name in broken:  # a plugin broken in one registration hook is dropped from all
        for registry in registries:
            for item in [k for k, source in registry.sources.items() if source == name]:
                registry.items.pop(item)
                registry.sources.pop(item)
        if manager.has_plugin(name):
            manager.unregister(name=name)
    return Plugins(manager, *registries, broken=broken, origins=origins or {})  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    broken: dict[str, str] = {}
    origins: dict[str, str] = {}
    return collect(build_manager(broken=broken, origins=origins), broken, origins)
