"""The experiment's configuration: one validated pydantic model, from flags, files or code.

Fields left at ``None`` are filled from the chosen model's own defaults (the paper's
hyperparameters) by :func:`resolve`, so a config file can say as little as it likes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import LotteryError
from .plugins import Plugins

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Fraction = Field(default=None, gt=0, lt=1)


class ExperimentConfig(BaseModel):
    """Everything that defines an IMP experiment. ``None`` means: the model's default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dataset: str | None = None
    model: str = "lenet_fc"
    prune: str = "magnitude"
    scope: Literal["layerwise", "global"] = "layerwise"
    reinit: str = "rewind"
    rate: float | None = Fraction
    conv_rate: float | None = Fraction
    output_rate: float | None = Fraction
    rounds: int | None = Field(default=None, ge=1)
    iterations: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)
    eval_every: int = Field(default=100, ge=1)
    rewind_iter: int = Field(default=0, ge=0)
    seed: int = Field(default=0, ge=0)
    split_seed: int = Field(default=0, ge=0)
    validation_size: int = Field(default=5000, ge=1)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    data_dir: Path = Path("data")
    download: bool = True
    out: Path | None = None
    test_every_eval: bool = False

    def identity(self) -> dict[str, Any]:
        """The settings that change what is computed (not where it is stored or run)."""
        return self.model_dump(mode="json", exclude={"out", "device", "data_dir", "download"})

    def short_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def run_name(self) -> str:
        """A stable folder name: the choices a reader scans for, then a hash of the rest."""
        return (
            f"{self.model}-{self.dataset}-{self.prune}-{self.scope}-{self.reinit}"
            f"-s{self.seed}-{self.short_hash()}"
        )


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            known = ", ".join(ExperimentConfig.model_fields)
            parts.append(f"unknown config key {field!r} (known keys: {known})")
        else:
            parts.append(f"{field}: {item['msg']} (got {item.get('input')!r})")
    return "invalid config: " + "; ".join(parts)


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file, keys spelled as the config fields (``-`` or ``_``)."""
    path = Path(path)
    if not path.is_file():
        raise LotteryError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        elif path.suffix.lower() == ".toml":
            raw = tomllib.loads(text)
        else:
            raise LotteryError(f"config file {str(path)!r} must end in .toml or .json")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LotteryError(f"config file {str(path)!r} is not valid: {exc}") from exc
    if not isinstance(raw, dict):
        raise LotteryError(f"config file {str(path)!r} must hold a table of settings")
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def make_config(file: Path | None = None, **overrides: Any) -> ExperimentConfig:
    """A validated config: the file's settings, then ``overrides`` (``None`` values ignored)."""
    values = read_config_file(file) if file is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentConfig(**values)
    except ValidationError as exc:
        raise LotteryError(_explain(exc)) from None


def resolve(config: ExperimentConfig, plugins: Plugins) -> ExperimentConfig:
    """Check every plugin name and fill unset fields from the model's defaults."""
    model = plugins.models.get(config.model)
    plugins.strategies.get(config.prune)
    plugins.reinits.get(config.reinit)
    defaults = model.defaults
    values = config.model_dump()
    fill = {
        "dataset": defaults.dataset,
        "rate": defaults.fc_rate,
        "conv_rate": defaults.conv_rate,
        "rounds": defaults.rounds,
        "iterations": defaults.iterations,
        "batch_size": defaults.batch_size,
        "lr": defaults.lr,
    }
    for key, value in fill.items():
        if values[key] is None:
            values[key] = value
    if values["output_rate"] is None:
        values["output_rate"] = values["rate"] * defaults.output_rate_factor
    plugins.datasets.get(values["dataset"])
    resolved = ExperimentConfig(**values)
    if resolved.rewind_iter >= resolved.iterations:
        raise LotteryError(
            f"invalid config: rewind_iter ({resolved.rewind_iter}) must be below "
            f"iterations ({resolved.iterations})"
        )
    return resolved
