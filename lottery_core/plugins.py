"""The plugin manager and the name registries built from it.

Plugins come from the ``lottery`` entry-point group, built-ins included (this project's own
``pyproject.toml`` declares them, as the package ``lottery_plugins``). When the project is run
from a checkout that was never installed, the built-in modules are registered by name instead,
through the very same hooks. In a checkout, ``lottery_plugins`` is always the checkout's own
``plugins/`` folder (see ``builtin_package``), once this module is imported.
Set ``LOTTERY_NO_ENTRYPOINTS=1`` to load built-ins only, or ``LOTTERY_BLOCK_PLUGINS=a,b`` to skip
plugins by name. ``LOTTERY_PLUGINS=my.module,path/to/file.py`` loads local plugins too, nothing
installed: a module by its import name, a file (a ``.py`` name, or one with a slash) by its path;
the CLI's ``--plugins`` adds to it. A built-in's registered names stay the built-in's: another
plugin registering one of them has that registration refused, with a warning.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

import pluggy
import torch
from torch import nn

from . import hookspecs
from .errors import LotteryError, PluginError
from .guards import blame, describe_error
from .specs import (
    BranchKind,
    DatasetSpec,
    ModelSpec,
    OptimizerSpec,
    PruningStrategy,
    ReinitPolicy,
    ScheduleSpec,
)

GROUP = "lottery"
LOCAL_PLUGINS = "LOTTERY_PLUGINS"  # local plugins: module names and file paths, comma-separated
LOCAL_FILE = "local file "  # a local plugin's origin: this and its absolute path
LOCAL_MODULE = "local module "  # or this and its import name
BUILTIN_PACKAGE = "lottery_plugins"  # installed from the repository's plugins/ folder
BUILTIN_MODULES = {
    "datasets": "lottery_plugins.datasets",
    "models": "lottery_plugins.models",
    "pruning": "lottery_plugins.pruning",
    "reinit": "lottery_plugins.reinit",
    "branches": "lottery_plugins.branches",
    "optim": "lottery_plugins.optim",
}

T = TypeVar("T")


class UnknownName(LotteryError, KeyError):
    """A name no plugin registers: one line (a ``LotteryError``), and a ``KeyError`` too, as a
    registry is subscriptable."""

    __str__ = Exception.__str__  # KeyError's would quote the message


@dataclass
class Registry(Generic[T]):
    """Named plugin objects of one kind, remembering which plugin registered each.

    ``registry[name]`` is ``registry.get(name)``; ``in``, ``len`` and iteration (sorted) are over
    the usable names, those ``registry[name]`` returns.

    A built-in's name stays the built-in's: another plugin's registration of it is refused and
    kept in ``refused`` (name -> {plugin: object}); ``builtins`` are the built-in plugins' names.
    A name that two other plugins register is kept in ``conflicts`` (name -> {plugin: object})
    and neither object is used: asking for it is one line naming both plugins, while every
    other name of both plugins keeps working."""

    kind: str
    expected: type
    items: dict[str, T] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, dict[str, T]] = field(default_factory=dict)
    builtins: frozenset[str] = frozenset()
    refused: dict[str, dict[str, T]] = field(default_factory=dict)

    def add(self, item: T, source: str) -> None:
        """Register ``item`` for plugin ``source``; a wrong type, or a name the same plugin
        registers twice, raises (the plugin is then skipped as broken, see ``collect``)."""
        if not isinstance(item, self.expected):
            raise LotteryError(
                f"registered a {type(item).__name__} as a {self.kind}; expected "
                f"{self.expected.__name__}"
            )
        name = item.name  # type: ignore[attr-defined]
        if (
            self.sources.get(name) == source
            or source in self.conflicts.get(name, {})
            or source in self.refused.get(name, {})
        ):
            raise LotteryError(f"registered {self.kind} {name!r} twice")
        holder = self.sources.get(name)
        if source not in self.builtins:
            if holder in self.builtins:
                self.refused.setdefault(name, {})[source] = item
                return
        elif (holder is not None and holder not in self.builtins) or (
            name in self.conflicts and not self.builtins.intersection(self.conflicts[name])
        ):  # other plugins took a built-in's name first: it is the built-in's all the same
            losers = self.conflicts.pop(name, {})
            if holder is not None:
                losers[holder] = self.items.pop(name)
                del self.sources[name]
            self.refused.setdefault(name, {}).update(losers)
            self.items[name] = item
            self.sources[name] = source
            return
        claims = self.conflicts.get(name)
        if claims is not None:
            claims[source] = item
            return
        if name in self.items:
            first = self.sources.pop(name)
            self.conflicts[name] = {first: self.items.pop(name), source: item}
            return
        self.items[name] = item
        self.sources[name] = source

    def drop(self, source: str) -> None:
        """Forget everything plugin ``source`` registered; a conflict it was part of is
        resolved in favour of the one plugin left, and a built-in's name goes back to the
        plugins it refused (as if the built-in never registered it)."""
        for name in [n for n, s in self.sources.items() if s == source]:
            self.items.pop(name)
            self.sources.pop(name)
            for other, item in self.refused.pop(name, {}).items():
                if other != source:
                    self.add(item, other)
        for name, refused in list(self.refused.items()):
            refused.pop(source, None)
            if not refused:
                del self.refused[name]
        for name, claims in list(self.conflicts.items()):
            claims.pop(source, None)
            if len(claims) == 1:
                ((only, item),) = claims.items()
                self.items[name] = item
                self.sources[name] = only
                del self.conflicts[name]

    def claimants(self, name: str) -> str:
        return " and by ".join(f"plugin {source!r}" for source in self.conflicts[name])

    def get(self, name: str) -> T:
        if name in self.conflicts:
            raise LotteryError(
                f"{self.kind} {name!r} is registered twice: by {self.claimants(name)}; "
                "uninstall one, or skip one with LOTTERY_BLOCK_PLUGINS=<plugin>"
            )
        if name not in self.items:
            known = ", ".join(sorted(self.items)) or "(none)"
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {known}")
        return self.items[name]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def names(self) -> list[str]:
        """Every registered name, conflicting ones included (asking for one says why not)."""
        return sorted({*self.items, *self.conflicts})

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
    branches: Registry[BranchKind] = field(default_factory=lambda: Registry("branch", BranchKind))
    optimizers: Registry[OptimizerSpec] = field(
        default_factory=lambda: Registry("optimizer", OptimizerSpec)
    )
    schedules: Registry[ScheduleSpec] = field(
        default_factory=lambda: Registry("schedule", ScheduleSpec)
    )
    broken: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def notify(self, hook_name: str, watch: nn.Module | None = None, **kwargs: Any) -> list[Any]:
        """Call a lifecycle hook plugin by plugin (pluggy's order: last registered first); an
        exception names the hook and the plugin; a non-dict, non-None result is refused.

        With ``watch`` (the run's model), each implementation is checked not to change it:
        every parameter and buffer (weights, biases, masks) is compared, bit for bit, with a
        copy taken before the first implementation ran; a change names the plugin. The copy
        is taken only when some plugin implements the hook."""
        results = []
        caller = getattr(self.manager.hook, hook_name)
        impls = list(reversed(caller.get_hookimpls()))
        before = _tensors_of(watch) if watch is not None and impls else None
        for impl in impls:
            who = f"plugin {impl.plugin_name!r}"
            with blame(who, f"in {hook_name}"):
                result = impl.function(**{name: kwargs[name] for name in impl.argnames})
            if before is not None:
                changed = _first_change(watch, before)  # type: ignore[arg-type]
                if changed is not None:
                    raise PluginError(
                        f"{who} in {hook_name}: the model changed{_when(hook_name, kwargs)} "
                        f"({changed} was written); lifecycle hooks must not change the model"
                    )
            if result is not None and not isinstance(result, dict):
                raise PluginError(
                    f"{who} returned a {type(result).__name__} from {hook_name}; expected a dict "
                    "of extra columns or None"
                )
            results.append(result)
        return results

    def registries(self) -> list[Registry[Any]]:
        return [
            self.datasets,
            self.models,
            self.strategies,
            self.reinits,
            self.branches,
            self.optimizers,
            self.schedules,
        ]

    def describe(self) -> list[dict[str, Any]]:
        """One entry per plugin: its name, where it comes from (``origin``: a package and its
        version, ``local file PATH``, ``local module NAME``), the file its code was loaded from
        (``path``), its hooks and what it registers."""
        rows = []
        for name, plugin in self.manager.list_name_plugin():
            if plugin is None:
                continue
            origin = self.origins.get(name, "built-in (not installed)")
            registers = []
            for registry in self.registries():
                for item, source in sorted(registry.sources.items()):
                    if source == name:
                        registers.append(f"{registry.kind} {item}")
                for item, claims in sorted(registry.conflicts.items()):
                    if name in claims:
                        registers.append(
                            f"{registry.kind} {item} (UNUSABLE: registered by "
                            f"{registry.claimants(item)})"
                        )
                for item, refused in sorted(registry.refused.items()):
                    if name in refused:
                        registers.append(
                            f"{registry.kind} {item} (REFUSED: the name of built-in plugin "
                            f"{registry.sources.get(item, '?')!r})"
                        )
            hooks = sorted(h.name for h in self.manager.get_hookcallers(plugin) or [])
            rows.append(
                {
                    "name": name,
                    "origin": origin,
                    "module": getattr(plugin, "__name__", type(plugin).__name__),
                    "path": _file_of(plugin),
                    "hooks": hooks,
                    "registers": registers,
                    "broken": "",
                }
            )
        for name, reason in sorted(self.broken.items()):
            origin = self.origins.get(name, "?")
            rows.append(
                {
                    "name": name,
                    "origin": origin,
                    "module": "",
                    "path": origin[len(LOCAL_FILE) :] if origin.startswith(LOCAL_FILE) else "",
                    "hooks": [],
                    "registers": [],
                    "broken": reason,
                }
            )
        return rows


def _file_of(plugin: Any) -> str:
    """The file a plugin's code lives in: a module's own file, else its class's module's."""
    try:
        found = inspect.getfile(plugin if isinstance(plugin, ModuleType) else type(plugin))
    except (TypeError, OSError):  # built into the interpreter, or made without a file
        return ""
    return str(Path(found).resolve())


def _tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter (``weight_orig``, biases) and buffer (``weight_mask``)."""
    found = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {name: tensor.detach().clone() for name, tensor in found.items()}


def _first_change(model: nn.Module, before: dict[str, torch.Tensor]) -> str | None:
    """The first parameter or buffer whose values differ from ``before`` (NaN equals NaN, as
    a policy may leave NaN in pruned entries), or one added or removed."""
    now = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if set(now) != set(before):
        return ", ".join(sorted(set(now) ^ set(before)))
    for name, tensor in now.items():
        old = before[name]
        if tensor.shape != old.shape or tensor.dtype != old.dtype:
            return name
        if torch.equal(tensor, old):
            continue
        if not bool(torch.isclose(tensor, old, rtol=0, atol=0, equal_nan=True).all()):
            return name
    return None


def _when(hook_name: str, kwargs: dict[str, Any]) -> str:
    if "round_index" not in kwargs:
        return ""
    r = kwargs["round_index"]
    if hook_name == "on_round_start":
        return f" as round {r} started"
    return f" while round {r} trained"


def _collect(
    manager: pluggy.PluginManager, hook_name: str, registry: Registry, broken: dict[str, str]
) -> Registry:
    """Call one registration hook plugin by plugin, so each registered name keeps its source.

    A plugin whose hook raises, or registers something unusable (a wrong type, one name twice,
    a ``PruningStrategy`` with both ``scores`` and ``masks``), is marked broken with the reason
    and what it registered is dropped; the other plugins are unaffected."""
    caller = getattr(manager.hook, hook_name)
    for impl in caller.get_hookimpls():
        if impl.plugin_name in broken:
            continue

        def register(item: Any, _source: str = impl.plugin_name) -> None:
            registry.add(item, _source)

        try:
            impl.function(register=register)
        except LotteryError as exc:  # a registration mistake: its message says what
            registry.drop(impl.plugin_name)
            _mark_broken(broken, impl.plugin_name, f"{hook_name}: {exc}")
        except Exception as exc:  # a third-party bug must not take the tool down
            registry.drop(impl.plugin_name)
            _mark_broken(broken, impl.plugin_name, f"{hook_name} raised {describe_error(exc)}")
    return registry


def _mark_broken(broken: dict[str, str], name: str, reason: str) -> None:
    broken[name] = reason
    print(f"Warning: plugin {name!r} is skipped: {reason}", file=sys.stderr)


def _invalid(exc: pluggy.PluginValidationError) -> str:
    """pluggy's validation message on one line."""
    return " ".join(str(exc).split())


def _register(
    manager: pluggy.PluginManager, plugin: Any, name: str, broken: dict[str, str]
) -> None:
    """Register one plugin; one whose hook implementations do not fit their hooks is broken."""
    try:
        manager.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        _mark_broken(broken, name, f"invalid hook implementation: {_invalid(exc)}")


def _unknown_hooks(manager: pluggy.PluginManager, broken: dict[str, str]) -> None:
    """``check_pending``, plugin by plugin: a plugin implementing a hook that does not exist
    (a misspelling) is unregistered and marked broken, naming the hook and the nearest one."""
    known = [n for n in dir(hookspecs) if n.startswith(("register_", "on_"))]
    while True:
        try:
            manager.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = manager.get_name(exc.plugin) or repr(exc.plugin)
            unknown = sorted(
                caller.name
                for caller in manager.get_hookcallers(exc.plugin) or []
                if not caller.has_spec()
            )
            parts = []
            for hook in unknown:
                near = difflib.get_close_matches(hook, known, n=1)
                parts.append(f"{hook!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            reason = f"implements unknown hook {', '.join(parts) or _invalid(exc)}"
            manager.unregister(exc.plugin)
            _mark_broken(broken, name, reason)


def _load_entrypoints(
    manager: pluggy.PluginManager, broken: dict[str, str], origins: dict[str, str]
) -> None:
    """Each ``lottery`` entry point imported and registered on its own, so one that raises is
    skipped with one warning line instead of breaking every command."""
    for entry in importlib.metadata.entry_points(group=GROUP):
        if manager.is_blocked(entry.name) or manager.has_plugin(entry.name):
            continue
        dist = entry.dist
        origin = f"{dist.name} {dist.version}" if dist is not None else "?"
        if BUILTIN_MODULES.get(entry.name, entry.value) != entry.value:
            key = f"{entry.name} ({origin})"  # not the built-in's name: that one stays usable
            origins[key] = origin
            reason = f"its plugin name {entry.name!r} is a built-in's; rename the entry point"
            _mark_broken(broken, key, reason)
            continue
        origins[entry.name] = origin
        try:
            plugin = entry.load()
        except Exception as exc:  # an import error or a bug in the package
            _mark_broken(broken, entry.name, f"import failed: {describe_error(exc)}")
            continue
        _register(manager, plugin, entry.name, broken)


def local_entries(value: str | None = None) -> list[str]:
    """The local plugins ``value`` (else ``LOTTERY_PLUGINS``) names, comma-separated."""
    value = os.environ.get(LOCAL_PLUGINS, "") if value is None else value
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def is_file_entry(entry: str) -> bool:
    """A local plugin given by its file (``x.py``, ``dir/x``), not by its import name."""
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def _import_file(path: Path, name: str) -> ModuleType:
    """The module of file ``path``, imported under ``name`` (its file's stem) like a top-level
    module, so that it is in ``sys.modules`` (dataclasses and pickle look there)."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        where = getattr(loaded, "__file__", None)
        if where is not None and Path(where).resolve() == path.resolve():
            return loaded
        raise ImportError(
            f"another module named {name!r} is already imported"
            + (f" (from {where})" if where else "")
            + "; rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _load_local(
    manager: pluggy.PluginManager,
    entries: list[str],
    broken: dict[str, str],
    origins: dict[str, str],
) -> None:
    """Each local plugin (``LOTTERY_PLUGINS``: module names and file paths) imported and
    registered on its own, as an entry point is: one whose import fails, or whose plugin name
    (a module's import name, a file's stem) another plugin has, is skipped with one warning."""
    seen: set[str] = set()
    for entry in entries:
        path: Path | None = None
        if is_file_entry(entry):
            path = Path(entry).expanduser().resolve()
            name, origin = path.stem, f"{LOCAL_FILE}{path}"
        else:
            name, origin = entry, f"{LOCAL_MODULE}{entry}"
        if origin in seen or manager.is_blocked(name):
            continue
        seen.add(origin)
        if manager.has_plugin(name) or name in broken:
            if path is None and sys.modules.get(entry) is manager.get_plugin(name):
                continue  # that very module, installed as well
            origins[origin] = origin
            taken = origins.get(name, "built-in")
            _mark_broken(
                broken, origin, f"its plugin name {name!r} is another plugin's ({taken}); rename it"
            )
            continue
        origins[name] = origin
        if path is not None and not path.is_file():
            _mark_broken(broken, name, f"no such file: {path}")
            continue
        try:
            plugin = importlib.import_module(entry) if path is None else _import_file(path, name)
        except Exception as exc:  # an import error or a bug in the module
            reason = f"import failed: {describe_error(exc)}"
            if isinstance(exc, ModuleNotFoundError) and exc.name == entry:
                reason += f" (a file is given by its path: {entry}.py)"
            _mark_broken(broken, name, reason)
            continue
        if manager.is_registered(plugin):  # already registered under another name
            del origins[name]
            continue
        _register(manager, plugin, name, broken)


def build_manager(
    load_entrypoints: bool | None = None,
    extra: list[Any] | None = None,
    broken: dict[str, str] | None = None,
    origins: dict[str, str] | None = None,
    local: list[str] | None = None,
) -> pluggy.PluginManager:
    """A plugin manager with entry points loaded, built-ins ensured, local plugins (``local``,
    else ``LOTTERY_PLUGINS``'s) loaded and spelling checked; plugins that fail to import, whose
    hooks do not fit, or that implement a hook that does not exist land in ``broken`` (name ->
    reason) and are not registered."""
    broken = {} if broken is None else broken
    origins = {} if origins is None else origins
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    for blocked in filter(None, os.environ.get("LOTTERY_BLOCK_PLUGINS", "").split(",")):
        manager.set_blocked(blocked.strip())
    if load_entrypoints is None:
        load_entrypoints = os.environ.get("LOTTERY_NO_ENTRYPOINTS", "") in ("", "0")
    if load_entrypoints:
        _load_entrypoints(manager, broken, origins)
    for name, module_path in BUILTIN_MODULES.items():
        if manager.has_plugin(name) or manager.is_blocked(name) or name in broken:
            continue
        module = importlib.import_module(module_path)
        if not manager.is_registered(module):
            _register(manager, module, name, broken)
    _load_local(manager, local_entries() if local is None else local, broken, origins)
    for plugin in extra or []:
        _register(manager, plugin, getattr(plugin, "__name__", type(plugin).__name__), broken)
    _unknown_hooks(manager, broken)
    return manager


def collect(
    manager: pluggy.PluginManager,
    broken: dict[str, str] | None = None,
    origins: dict[str, str] | None = None,
) -> Plugins:
    """Resolve every registration hook of ``manager`` into name registries."""
    broken = {} if broken is None else broken
    origins = {} if origins is None else origins
    own = frozenset(
        name
        for name, module in BUILTIN_MODULES.items()
        if getattr(manager.get_plugin(name), "__name__", None) == module
    )
    datasets = _collect(
        manager, "register_datasets", Registry("dataset", DatasetSpec, builtins=own), broken
    )
    models = _collect(
        manager, "register_models", Registry("model", ModelSpec, builtins=own), broken
    )
    strategies = _collect(
        manager,
        "register_pruning_strategies",
        Registry("pruning strategy", PruningStrategy, builtins=own),
        broken,
    )
    reinits = _collect(
        manager,
        "register_reinit_policies",
        Registry("reinit policy", ReinitPolicy, builtins=own),
        broken,
    )
    branches = _collect(
        manager, "register_branches", Registry("branch", BranchKind, builtins=own), broken
    )
    optimizers = _collect(
        manager, "register_optimizers", Registry("optimizer", OptimizerSpec, builtins=own), broken
    )
    schedules = _collect(
        manager, "register_schedules", Registry("schedule", ScheduleSpec, builtins=own), broken
    )
    registries: list[Registry[Any]] = [
        datasets, models, strategies, reinits, branches, optimizers, schedules,
    ]  # fmt: skip
    for name in broken:  # a plugin broken in one registration hook is dropped from all
        for registry in registries:
            registry.drop(name)
        if manager.has_plugin(name):
            manager.unregister(name=name)
    for registry in registries:
        for item in sorted(registry.conflicts):
            print(
                f"Warning: {registry.kind} {item!r} is registered by {registry.claimants(item)}; "
                "neither is used, and a run that names it stops, until one is uninstalled or "
                "skipped (LOTTERY_BLOCK_PLUGINS)",
                file=sys.stderr,
            )
        for item, refused in sorted(registry.refused.items()):
            for source in refused:
                package = f" ({origins[source]})" if source in origins else ""
                print(
                    f"Warning: plugin {source!r}{package} registers {registry.kind} {item!r}, "
                    f"the name of a built-in: the built-in one is used, the plugin's is refused "
                    "(rename it in the plugin)",
                    file=sys.stderr,
                )
    return Plugins(
        manager,
        datasets,
        models,
        strategies,
        reinits,
        branches,
        optimizers,
        schedules,
        broken,
        origins,
    )


def builtin_package() -> ModuleType:
    """The built-in plugins' package, ``lottery_plugins``. Where this ``lottery_core`` lies in a
    checkout (a ``pyproject.toml`` and a ``plugins/`` folder beside it), it is that folder,
    imported under the installed name, so the checkout's own built-ins are used even when
    another checkout is the installed one; otherwise the installed package."""
    if BUILTIN_PACKAGE in sys.modules:
        return sys.modules[BUILTIN_PACKAGE]
    root = Path(__file__).resolve().parent.parent
    folder = root / "plugins"
    if not ((root / "pyproject.toml").is_file() and (folder / "__init__.py").is_file()):
        return importlib.import_module(BUILTIN_PACKAGE)
    spec = importlib.util.spec_from_file_location(
        BUILTIN_PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[BUILTIN_PACKAGE] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[BUILTIN_PACKAGE]
        raise
    return package


builtin_package()  # before any entry point loads: ``import lottery_plugins.x`` is this one's


@lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use."""
    broken: dict[str, str] = {}
    origins: dict[str, str] = {}
    return collect(build_manager(broken=broken, origins=origins), broken, origins)
