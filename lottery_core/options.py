"""Command-line options generated from the pydantic config: one flag per field, its type,
description and true default from the field itself, plugin names from the registry.

Loading the plugins imports torch, so the flags are made without them: a plugin-named field's
choices (``PluginChoice``) and a help text that names plugins (``LazyHelpOption``) ask for the
plugins only when a value must be checked or ``--help`` is shown. A mistyped flag, or a value
of the wrong type, is refused before torch loads."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import click
from pydantic import BaseModel

from .config import MODEL_FILLED, ExperimentConfig

if TYPE_CHECKING:  # importing lottery_core.plugins imports torch
    from .plugins import Plugins

# The plugins, or how to get them when first needed (``lottery_core.cli.plugins``).
PluginSource = Union["Plugins", Callable[[], "Plugins"]]


def _loader(plugins: PluginSource) -> Callable[[], Plugins]:
    if callable(plugins):
        return plugins
    return lambda: plugins


class PluginChoice(click.Choice):
    """``click.Choice`` over the names of one registry (``plugins.<kind>``), read from the
    plugins when first needed: to check a value the user gave, for ``--help`` or a shell
    completion. Everything else (the one-line error that lists the names, the metavar) is
    ``click.Choice``'s own."""

    def __init__(self, plugins: PluginSource, kind: str) -> None:
        self._plugins = _loader(plugins)
        self.kind = kind
        self._choices: tuple[str, ...] | None = None
        self.case_sensitive = True

    @property
    def choices(self) -> Sequence[str]:
        if self._choices is None:
            self._choices = tuple(getattr(self._plugins(), self.kind).names())
        return self._choices

    @choices.setter
    def choices(self, value: Sequence[str]) -> None:
        self._choices = tuple(value)

    def __repr__(self) -> str:
        shown = "..." if self._choices is None else list(self._choices)
        return f"PluginChoice({self.kind}: {shown})"


class LazyHelpOption(click.Option):
    """A ``click.Option`` whose help text is made when first read (``--help``): the true
    default of some fields is the default model's, which only the plugins know."""

    def __init__(self, *args: Any, make_help: Callable[[], str], **kwargs: Any) -> None:
        self._make_help: Callable[[], str] | None = make_help
        self._help: str | None = None
        super().__init__(*args, **kwargs)

    @property
    def help(self) -> str | None:
        if self._make_help is not None:
            self._help, self._make_help = inspect.cleandoc(self._make_help()), None
        return self._help

    @help.setter
    def help(self, value: str | None) -> None:
        if value is not None:  # click's own __init__ sets None: keep the text to make
            self._help, self._make_help = value, None


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; a ``Literal`` stays as it is."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _click_type(name: str, annotation: Any, plugins: PluginSource, extra: dict) -> Any:
    if "plugin" in extra:
        return PluginChoice(plugins, str(extra["plugin"]))
    base = _base_type(annotation)
    if typing.get_origin(base) is typing.Literal:
        return click.Choice([str(v) for v in typing.get_args(base)], case_sensitive=True)
    if base is Path:
        return click.Path(path_type=Path)
    return {int: int, float: float, str: str}.get(base, str)


def _default_text(name: str, value: Any, plugins: PluginSource) -> str:
    """The true default: the field's own, or the model's (shown for the default model; only
    then are the plugins loaded)."""
    if value is not None:
        return f" [default: {value}]"
    if name in MODEL_FILLED:
        model = ExperimentConfig.model_fields["model"].default
        defaults = _loader(plugins)().models.items.get(model)
        if defaults is not None:
            shown = getattr(defaults.defaults, MODEL_FILLED[name])
            return f" [default: the model's; {model}: {shown}]"
    if name == "output_rate":
        return " [default: the model's; rate / 2]"
    if name == "augment":
        return " [default: the model's, else the dataset's; cifar10: on, mnist: off; " \
            "the paper's models (lenet_fc, conv2, ...): off]"
    return ""


def config_options(plugins: PluginSource) -> list[click.Option]:
    """One ``click.Option`` per config field; every default is ``None`` so that only flags the
    user gave override a ``--config`` file. ``plugins``: the plugins, or a function that loads
    them, called only when a plugin-named value is checked or ``--help`` is shown."""
    return model_options(ExperimentConfig, plugins, config_defaults=True)


def model_options(
    model: type[BaseModel], plugins: PluginSource, config_defaults: bool = False
) -> list[click.Option]:
    """One ``click.Option`` per field of a pydantic ``model`` (the config's, or a branch kind's
    options): name, type, description and default from the field; plugin names as choices.
    Every default is ``None``: a field the user did not give keeps the model's own default.
    Nothing here loads the plugins (``plugins`` may be a function that loads them)."""
    options: list[click.Option] = []
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        make_help = _help_maker(name, field, extra, plugins, config_defaults)
        if _base_type(field.annotation) is bool:  # --augment/--no-augment; unset: None
            options.append(
                LazyHelpOption([f"{flag}/--no-{flag[2:]}", name], default=None, make_help=make_help)
            )
            continue
        if extra.get("many"):  # names, comma-separated; checked against the registry later
            options.append(
                LazyHelpOption([flag, name], type=str, default=None, make_help=make_help)
            )
            continue
        click_type = _click_type(name, field.annotation, plugins, extra)
        options.append(
            LazyHelpOption([flag, name], type=click_type, default=None, make_help=make_help)
        )
    return options


def _help_maker(
    name: str, field: Any, extra: dict, plugins: PluginSource, config_defaults: bool
) -> Callable[[], str]:
    """How to write a field's help text, when ``--help`` asks for it."""

    def make_help() -> str:
        description = (field.description or "").rstrip(".")
        default = field.get_default(call_default_factory=True)
        if config_defaults:
            help_text = description + (
                " [default: none]" if default == [] else _default_text(name, default, plugins)
            )
        else:
            shown = field.default if field.default is not None else "the trunk's"
            help_text = f"{description} [default: {shown}]"
        if extra.get("many") and field.annotation is not bool:
            registry = getattr(_loader(plugins)(), str(extra["plugin"]))
            help_text += f" (one or more of: {', '.join(registry.names())})"
        return help_text

    return make_help


def config_flags(values: dict[str, Any]) -> dict[str, Any]:
    """The config fields among a command's parsed values."""
    return {k: v for k, v in values.items() if k in ExperimentConfig.model_fields}
