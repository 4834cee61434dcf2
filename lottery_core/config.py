"""The experiment's configuration: one validated pydantic model, from flags, files or code.

Fields left at ``None`` are filled from the chosen model's own defaults (the paper's
hyperparameters) by ``resolution.resolve``, so a config file can say as little as it likes.
The command line is generated from these fields (name, type, description, default), so a new
field appears in ``--help`` without touching ``cli.py``; a field whose values are plugin names
says which registry in ``json_schema_extra={"plugin": ...}``.

Step counts (``iterations``, ``rewind_iter``, ``warmup``, ``milestones``) are given as
iterations or in the field's units, OpenLTH's step syntax: ``500it``, ``2ep`` (epochs of the
training split at the batch size: whole batches, as a round draws them), ``1ep500it``. The
config holds them as given; ``resolution.resolve`` turns them into iteration counts, and a
resolved config records the text beside them (``steps``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import LotteryError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Fields that ``None`` leaves to the chosen model: config field -> ``ModelDefaults`` attribute.
MODEL_FILLED = {
    "dataset": "dataset",
    "rate": "fc_rate",
    "conv_rate": "conv_rate",
    "rounds": "rounds",
    "iterations": "iterations",
    "batch_size": "batch_size",
    "lr": "lr",
}

# The training recipe a model may bring (``ModelDefaults``): config field -> its attribute, each
# taken when the user did not set it (``model_fields_set``), the optimizer's settings only with
# the model's optimizer and the schedule's only with its schedule (``resolution.resolve``).
MODEL_RECIPE = {
    "optimizer": "optimizer",
    "momentum": "momentum",
    "nesterov": "nesterov",
    "weight_decay": "weight_decay",
    "schedule": "schedule",
    "milestones": "milestones",
    "gamma": "gamma",
    "warmup": "warmup",
}

# The most seeded trials of one experiment (``run --trials``, a sweep file's ``trials``): more
# are refused at once, before their seeds and folders are planned (which would take minutes).
MAX_TRIALS = 10_000


def check_trials(trials: Any, where: str = "trials") -> None:
    """Refuse a trial count that is no integer from 1 to ``MAX_TRIALS``, in one line that
    names ``where`` it was given (``--trials``, a sweep file's ``trials``)."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise LotteryError(f"{where} must be an integer of at least 1 (got {trials!r})")
    if trials > MAX_TRIALS:
        raise LotteryError(f"{where} must be at most {MAX_TRIALS:,} (got {trials:,})")


# Steps in OpenLTH's syntax: ``2ep``, ``500it``, ``1ep500it`` (digits alone: iterations).
_STEPS = re.compile(r"(?:([0-9]+)ep)?(?:([0-9]+)it)?")
STEPS_HELP = "an iteration count, or steps like 500it, 2ep or 1ep500it"
# The config fields that hold steps, and the least each may resolve to.
STEP_FIELDS = {"iterations": 1, "rewind_iter": 0, "warmup": 0, "milestones": 1}


def parse_steps(value: Any) -> int | str:
    """A step count as given: an int, or the text of one in units (``"2ep"``, ``"500it"``,
    ``"1ep500it"``; spaces and case ignored); digits alone are an int. Else ``ValueError``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():  # 1000.0, as an int field took it
        return int(value)
    if isinstance(value, str):
        text = "".join(value.split()).lower()
        if re.fullmatch(r"[0-9]+", text):
            return int(text)
        if text and _STEPS.fullmatch(text):
            return text
    raise ValueError(f"expected {STEPS_HELP}")


def needs_epochs(value: Any) -> bool:
    """Whether a step value (or a list of them) counts epochs, which need the data's size."""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and "ep" in v for v in values)


def to_iterations(value: int | str, per_epoch: int | None) -> int:
    """A step value as iterations; ``per_epoch``: whole batches in an epoch of the training
    split (needed only for a value in epochs)."""
    if isinstance(value, int):
        return value
    found = _STEPS.fullmatch(value)
    if found is None:
        raise ValueError(f"expected {STEPS_HELP}")
    epochs, iterations = (int(part or 0) for part in found.groups())
    if epochs and per_epoch is None:
        raise ValueError(f"{value!r} counts epochs, and the data's size is not known")
    return epochs * (per_epoch or 0) + iterations


def _fraction(description: str) -> Any:
    return Field(default=None, gt=0, lt=1, description=description)


def _plugin(kind: str, default: Any, description: str) -> Any:
    return Field(default=default, description=description, json_schema_extra={"plugin": kind})


class ExperimentConfig(BaseModel):
    """Everything that defines an IMP experiment. ``None`` means: the model's default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=False)

    dataset: str | None = _plugin("datasets", None, "Dataset.")
    model: str = _plugin("models", "lenet_fc", "Architecture.")
    prune: str = _plugin("strategies", "magnitude", "Pruning strategy.")
    scope: Literal["layerwise", "global"] = Field(
        default="layerwise",
        description="layerwise: each layer loses its own rate; global: one threshold for all.",
    )
    reinit: str = _plugin("reinits", "rewind", "What the survivors start the next round from.")
    prune_at: Literal["imp", "init"] = Field(
        default="imp",
        description="imp: prune the trained weights after each round; init: prune at θ0, each "
        "round to the sparsity IMP would reach there, then train once.",
    )
    init_steps: int = Field(
        default=1,
        ge=1,
        description="With --prune-at init: pruning steps without training to reach a round's "
        "sparsity (1: one shot; SynFlow iterates, e.g. 100).",
    )
    rate: float | None = _fraction(
        "Fraction of surviving fc weights pruned per round (global scope: of all weights)."
    )
    conv_rate: float | None = _fraction("Per-round rate for conv layers (layerwise scope only).")
    output_rate: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Per-round rate for the output layer (layerwise scope only; 0 keeps it "
        "dense).",
    )
    rounds: int | None = Field(default=None, ge=1, description="Rounds, the dense one included.")
    iterations: str | int | None = Field(
        default=None, description="Training iterations a round (or 2ep, 500it: epochs, steps)."
    )
    batch_size: int | None = Field(default=None, ge=1, description="Minibatch size.")
    lr: float | None = Field(
        default=None, gt=0, description="Learning rate (the peak, with --warmup or a schedule)."
    )
    optimizer: str = _plugin(
        "optimizers", "adam", "Optimizer (adam: the paper's; a model may bring its own recipe)."
    )
    momentum: float = Field(default=0.0, ge=0, description="Momentum (sgd).")
    nesterov: bool = Field(default=False, description="Nesterov momentum (sgd, with --momentum).")
    weight_decay: float = Field(
        default=0.0, ge=0, description="L2 weight decay, added to the gradient."
    )
    schedule: str = _plugin(
        "schedules",
        "constant",
        "Learning-rate schedule, a function of the iteration (step: x gamma at each milestone; "
        "cosine: towards 0 at the end).",
    )
    milestones: list[str | int] = Field(
        default_factory=list,
        description="With --schedule step: the iterations (or 80ep, ...) where the learning rate "
        "is multiplied by --gamma, comma-separated.",
    )
    gamma: float = Field(
        default=0.1, gt=0, description="With --schedule step: the factor at each milestone."
    )
    warmup: str | int = Field(
        default=0,
        description="Linear warmup: the learning rate rises to --lr over the first N iterations "
        "(or 2ep, 500it).",
    )
    eval_every: int = Field(default=100, ge=1, description="Validate every N iterations.")
    rewind_iter: str | int = Field(
        default=0,
        description="Late rewinding: reset survivors to iteration k, not 0 (or 1ep, 500it).",
    )
    retrain: Literal["weights", "lr", "finetune"] = Field(
        default="weights",
        description="How a pruned round retrains (Renda et al. 2020), for T - k iterations (k: "
        "--rewind-iter): weights: from what --reinit gives (rewind: θk), the schedule replayed "
        "from k; lr: from the trained weights, the schedule replayed from k; finetune: from the "
        "trained weights at the schedule's final rate. lr and finetune set --reinit none.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of init, data order, pruning, reinit.")
    split_seed: int = Field(default=0, ge=0, description="Seed of the validation hold-out.")
    validation_size: int = Field(
        default=5000, ge=1, description="Examples held out of the training set for validation."
    )
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu or cuda[:N]."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="Most intra-op CPU threads (default: one per core this process may use).",
    )
    thread_rule: Literal["adaptive", "fixed"] = Field(
        default="adaptive",
        description="adaptive: one thread or --threads, whichever steps measure faster (a busy "
        "machine makes many threads slow); fixed: always --threads. Results do not depend on it.",
    )
    augment: bool | None = Field(
        default=None,
        description="Training-time data augmentation (CIFAR-10: random crop with 4-pixel "
        "padding and horizontal flip); unset: the model's default, else the dataset's (on where "
        "it declares one).",
    )
    data_dir: Path = Field(default=Path("data"), description="Dataset folder.")
    download: bool = Field(default=True, description="Download missing data files.")
    out: Path | None = Field(
        default=None, description="Run folder (must not exist; default results/<name>)."
    )
    test_every_eval: bool = Field(
        default=False, description="Also evaluate the test set at every evaluation."
    )
    branches: list[str] = Field(
        default_factory=list,
        description="Branch kinds to run at every pruned round once each run has finished, "
        "comma-separated (e.g. shuffle,reinit; --controls adds reinit,random-prune).",
        json_schema_extra={"plugin": "branches", "many": True},
    )
    keep_trained: bool = Field(
        default=False,
        description="Keep every round's trained weights (trained/round_<r>.pt; LeNet-300-100: "
        "about 1 MiB a round) for export --trained and branches that start from them.",
    )
    batched: bool = Field(
        default=False,
        description="Train networks of one protocol as one batched model (lottery_core."
        "batched): a group's IMP trials round by round in lockstep, its controls across trials, "
        "a branch set's networks; on the CPU each is its single run bit for bit for "
        "LeNet-300-100, to float rounding for conv nets.",
    )

    @field_validator("branches", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """``"shuffle,reinit"`` (a flag) as a list; a list as it is; each name once, in order."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return list(dict.fromkeys(value))
        return value

    @field_validator("rate", "conv_rate", "output_rate", "lr", "momentum", "weight_decay",
                     "gamma", mode="after")  # fmt: skip
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("iterations", "rewind_iter", "warmup", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        """``"500"`` as 500, ``"2EP"`` as ``"2ep"``; anything else that is no step count is
        refused naming the syntax."""
        return value if value is None else parse_steps(value)

    @field_validator("milestones", mode="before")
    @classmethod
    def _milestone_list(cls, value: Any) -> Any:
        """``"80ep,120ep"`` (a flag) as a list; each entry a step count."""
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return [parse_steps(item) for item in value]
        return value

    @field_validator("iterations", "rewind_iter", "warmup", "milestones", mode="after")
    @classmethod
    def _at_least(cls, value: Any, info: ValidationInfo) -> Any:
        """A count given as a number is at least the field's least (iterations 1, ...)."""
        least = STEP_FIELDS[str(info.field_name)]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and item < least:
                raise ValueError(f"must be at least {least}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _resolved_record(cls, data: Any) -> Any:
        """A resolved config's ``steps`` (the step fields as given, beside the counts its fields
        hold) is dropped when its values make an unresolved config, so
        ``make_config(**resolved.model_dump())`` works; the counts stay. Config files may not
        hold it (``check_file_types``)."""
        if cls is ExperimentConfig and isinstance(data, dict) and "steps" in data:
            data = {k: v for k, v in data.items() if k != "steps"}
        return data

    def identity(self) -> dict[str, Any]:
        """The settings that change what is computed (not where it is stored or run). Fields
        added after the first release count only when set away from their default, so the
        names of earlier runs stay as they were."""
        values = self.model_dump(mode="json", exclude=NOT_IDENTITY)
        for name in ADDED_LATER:
            if name in values and at_default(name, values[name]):
                values.pop(name)
        return values

    def short_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def run_name(self) -> str:
        """A stable folder name: the choices a reader scans for, then a hash of the rest."""
        return (
            f"{self.model}-{self.dataset}-{self.prune}-{self.scope}-{self.reinit}"
            f"-s{self.seed}-{self.short_hash()}"
        )


class ResolvedConfig(ExperimentConfig):
    """A config as it runs: resolved against the plugins (``resolution.resolve``), so what the
    model fills in is set. ``conv_rate`` and ``output_rate`` stay ``None`` under global scope.
    Every ``config.json`` holds one."""

    dataset: str = Field(description="Dataset.", json_schema_extra={"plugin": "datasets"})
    rate: float = Field(gt=0, lt=1, description="Per-round rate.")
    rounds: int = Field(ge=1, description="Rounds, the dense one included.")
    iterations: int = Field(ge=1, description="Training iterations a round.")
    batch_size: int = Field(ge=1, description="Minibatch size.")
    lr: float = Field(gt=0, description="Learning rate (the peak, with warmup or a schedule).")
    threads: int = Field(ge=1, description="Most intra-op CPU threads.")
    augment: bool = Field(  # resolved; a config.json without it:
        default=False,  # a run from before augmentation existed, which trained without it
        description="Training-time data augmentation (the dataset's, resolved).",
    )
    rewind_iter: int = Field(default=0, ge=0, description="Late rewinding: iteration k.")
    warmup: int = Field(default=0, ge=0, description="Linear warmup, iterations.")
    milestones: list[int] = Field(  # type: ignore[assignment]  # counts, of the given steps
        default_factory=list, description="Step schedule: the iterations of its milestones."
    )
    steps: dict[str, Any] = Field(
        default_factory=dict,
        description="The step fields given in units, as given ({'iterations': '2ep'}); the "
        "fields hold their iteration counts.",
    )

    def kind_rates(self) -> tuple[float, float, float]:
        """The per-round rates of fc, conv and output layers (layerwise scope sets all three)."""
        if self.conv_rate is None or self.output_rate is None:
            raise LotteryError("per-kind rates apply with --scope layerwise only")
        return self.rate, self.conv_rate, self.output_rate


def config_of(meta: dict[str, Any], where: str = "config.json") -> ResolvedConfig:
    """The resolved config a ``config.json`` (a run's, a group's) records, or one line."""
    try:
        values = {k: v for k, v in meta["config"].items() if k not in RETIRED}
        return ResolvedConfig(**values)
    except (ValidationError, KeyError, TypeError) as exc:  # another schema, a hand edit
        raise LotteryError(f"{where} holds an unusable config: {exc}".splitlines()[0]) from None


# Where a run is stored or run, and what it keeps besides: not part of its identity (``steps``
# only records how the step fields were written; their iteration counts count).
NOT_IDENTITY = {
    "out", "device", "data_dir", "download", "threads", "thread_rule", "keep_trained",
    "branches", "steps", "batched",
}  # fmt: skip
# Fields earlier versions recorded and this one ignores when it reads a config.json: the
# controls were config swaps before they became branches (``group_runs.CONTROLS``).
RETIRED = ("control_prune", "control_reinit")
LAYERWISE_ONLY = ("conv_rate", "output_rate")
# How a round updates the weights, beyond ``lr``: added with the optimizer and schedule plugins.
RECIPE_FIELDS = (
    "optimizer", "momentum", "nesterov", "weight_decay", "schedule", "milestones", "gamma",
    "warmup",
)  # fmt: skip
# The config fields an optimizer or a schedule may declare it reads (``OptimizerSpec.settings``,
# ``ScheduleSpec.settings``); another set away from its default is an error.
OPTIMIZER_SETTINGS = ("momentum", "nesterov", "weight_decay")
SCHEDULE_SETTINGS = ("milestones", "gamma")
ADDED_LATER = ("prune_at", "init_steps", *RECIPE_FIELDS, "augment", "retrain")
# The reinit policy ``--retrain lr`` and ``--retrain finetune`` train with (the trained weights,
# kept), set by ``resolution.resolve``; another given with them is an error.
KEEP_TRAINED = "none"


def default_of(name: str) -> Any:
    """A config field's default, as ``model_dump(mode="json")`` writes it."""
    return ExperimentConfig.model_fields[name].get_default(call_default_factory=True)


def at_default(name: str, value: Any) -> bool:
    """Whether a field added later holds what runs before it computed: its default, or for
    ``augment`` no augmentation (``False``, as resolved for a dataset without one), so the
    folder names and identities of earlier runs stay as they were."""
    return value == default_of(name) or (name == "augment" and value is False)


def hashed_config(config: dict[str, Any]) -> dict[str, Any]:
    """What ``checkpoint.run_identity`` hashes of a ``config.json``'s config: the identity
    fields, the recipe's (and ``retrain``) only when set away from their defaults, so a run
    recorded before they existed (and the same command again) keeps its identity."""
    values = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    for name in (*RECIPE_FIELDS, "augment", "retrain"):
        if name in values and at_default(name, values[name]):
            values.pop(name)
    return values


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


def read_table(
    path: Path, kind: str, fail: Callable[[str], LotteryError] | None = None
) -> dict[str, Any]:
    """The table of a TOML or JSON ``kind`` file (a config or a sweep file), keys spelled as
    the config fields (``-`` or ``_``). ``fail(reason)`` shapes the errors about its contents
    (default: ``<kind> '<path>' <reason>``)."""
    path = Path(path)
    source = str(path)
    if fail is None:

        def fail(reason: str) -> LotteryError:
            return LotteryError(f"{kind} {source!r} {reason}")

    if not path.is_file():
        raise LotteryError(f"{kind} {source!r} does not exist")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        elif path.suffix.lower() == ".toml":
            raw = tomllib.loads(text)
        else:
            raise LotteryError(f"{kind} {source!r} must end in .toml or .json")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise fail(f"is not valid: {exc}") from None
    if not isinstance(raw, dict):
        raise fail("must hold a table of settings")
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file, strictly typed."""
    values = read_table(path, "config file")
    check_file_types(values, str(path))
    return values


def check_file_types(values: dict[str, Any], source: str) -> None:
    """Strict types for values from a file: ``rounds = true`` or ``lr = "1e-3"`` is refused
    (pydantic would read them as 1 and 0.001)."""
    if "steps" in values:
        raise LotteryError(
            f"invalid config in {source}: 'steps' is what a run records; give the step fields "
            'themselves (iterations = "2ep")'
        )
    for name, value in values.items():
        field = ExperimentConfig.model_fields.get(name)
        if field is None or value is None:
            continue
        if name in STEP_FIELDS:  # a count, or text in units; milestones a list of them
            items = value if name == "milestones" and isinstance(value, list) else [value]
            if name == "milestones" and isinstance(value, str):
                continue  # "80ep,120ep", as on the command line
            if any(isinstance(v, bool) or not isinstance(v, (int, str)) for v in items):
                raise LotteryError(
                    f"invalid config in {source}: {name} must be {STEPS_HELP} (got {value!r})"
                )
            continue
        if field.annotation in (bool, bool | None) and not isinstance(value, bool):
            raise LotteryError(  # ``download = "no"`` would be False
                f"invalid config in {source}: {name} must be true or false (got {value!r})"
            )
        annotation = str(field.annotation)
        wants_int = "int" in annotation and "float" not in annotation
        wants_float = "float" in annotation
        is_bool = isinstance(value, bool)
        if (wants_int and (is_bool or not isinstance(value, int))) or (
            wants_float and (is_bool or not isinstance(value, (int, float)))
        ):
            kind = "an integer" if wants_int else "a number"
            raise LotteryError(f"invalid config in {source}: {name} must be {kind} (got {value!r})")


def make_config(file: Path | None = None, **overrides: Any) -> ExperimentConfig:
    """A validated config: the file's settings, then ``overrides`` (``None`` values ignored)."""
    values = read_config_file(file) if file is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentConfig(**values)
    except ValidationError as exc:
        raise LotteryError(_explain(exc)) from None
