"""Command-line options generated from the pydantic config: one flag per field, its type,
description and true default from the field itself, plugin names from the registry."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from .config import MODEL_FILLED, ExperimentConfig
from .plugins import Plugins


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; a ``Literal`` stays as it is."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _click_type(name: str, annotation: Any, plugins: Plugins, extra: dict) -> Any:
    if "plugin" in extra:
        registry = getattr(plugins, extra["plugin"])
        return click.Choice(registry.names(), case_sensitive=True)
    base = _base_type(annotation)
    if typing.get_origin(base) is typing.Literal:
        return click.Choice([str(v) for v in typing.get_args(base)], case_sensitive=True)
    if base is Path:
        return click.Path(path_type=Path)
    return {int: int, float: float, str: str}.get(base, str)


def _default_text(name: str, value: Any, plugins: Plugins) -> str:
    """The true default: the field's own, or the model's (shown for the default model)."""
    if value is not None:
        return f" [default: {value}]"
    model = ExperimentConfig.model_fields["model"].default
    defaults = plugins.models.items.get(model)
    if name in MODEL_FILLED and defaults is not None:
        return f" [default: the model's; {model}: {getattr(defaults.defaults, MODEL_FILLED[name])}]"
    if name == "output_rate":
        return " [default: the model's; rate / 2]"
    return ""


def config_options(plugins: Plugins) -> list[click.Option]:
    """One ``click.Option`` per config field; every default is ``None`` so that only flags the
    user gave override a ``--config`` file."""
    return model_options(ExperimentConfig, plugins, config_defaults=True)


def model_options(
    model: type[BaseModel], plugins: Plugins, config_defaults: bool = False
) -> list[click.Option]:
    """One ``click.Option`` per field of a pydantic ``model`` (the config's, or a branch kind's
    options): name, type, description and default from the field; plugin names as choices.
    Every default is ``None``: a field the user did not give keeps the model's own default."""
    options = []
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        description = (field.description or "").rstrip(".")
        default = field.get_default(call_default_factory=True)
        if config_defaults:
            help_text = description + (
                " [default: none]" if default == [] else _default_text(name, default, plugins)
            )
        else:
            shown = field.default if field.default is not None else "the trunk's"
            help_text = f"{description} [default: {shown}]"
        if field.annotation is bool:
            options.append(
                click.Option(
                    [f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text
                )
            )
            continue
        if extra.get("many"):  # names, comma-separated; checked against the registry later
            registry = getattr(plugins, str(extra["plugin"]))
            help_text += f" (one or more of: {', '.join(registry.names())})"
            options.append(click.Option([flag, name], type=str, default=None, help=help_text))
            continue
        click_type = _click_type(name, field.annotation, plugins, extra)
        options.append(click.Option([flag, name], type=click_type, default=None, help=help_text))
    return options


def config_flags(values: dict[str, Any]) -> dict[str, Any]:
    """The config fields among a command's parsed values."""
    return {k: v for k, v in values.items() if k in ExperimentConfig.model_fields}
