"""Branches: experiments on round r of a finished run (the trunk), run after the fact.

A branch kind (a plugin: ``specs.BranchKind``) reads round r of the trunk (m_r, θ0, θk, the
round's trained weights if the trunk kept them, its config and seeds) and says where one network
starts: its masks, its starting weights and any changed training settings. The core trains that
network for one round with the trunk's protocol (``BranchExperiment``: the round loop started
from that state, nothing pruned or reset) and writes it as an ordinary run folder inside the
trunk's (names in ``paths``)::

    <trunk>/branches/<kind>-<hash>/branch.json            kind, options, seed stream, trunk
    <trunk>/branches/<kind>-<hash>/round_<r>/trial_<t>/   one network: a run folder
    <trunk>/branches/<kind>-<hash>/results.csv            every finished network's row

``<hash>`` is of the kind, its options and the branch seed, so the same command lands in the
same folder and resumes it: a finished network is skipped, one stopped while training trains
again (a network is one round, the unit of resume). A branch network draws its randomness from
its own stream (``seeds.branch_generator``); its first trial trains with the trunk's data
order, so what differs from the trunk's round r is what the kind changed (``retrain`` without
changes gives the trunk's row bit for bit), and every further trial with a data order of its own
(``seeds.branch_data_seed``), so trials measure the SGD noise too. Each network is a unit of the
parallel engine (``units``), so ``--workers`` and sweeps run them on Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import BaseModel, ValidationError

from . import checkpoint, files, guards, masks, paths, rundir, runs, seeds
from .config import ResolvedConfig, config_of, parse_steps, to_iterations
from .errors import LotteryError, PluginError
from .experiment import Experiment
from .plugins import Plugins
from .pruning import Pruner, prune_round
from .specs import (
    BranchContext,
    BranchKind,
    BranchStart,
    DatasetSplits,
    PruningStrategy,
    Tensors,
)  # fmt: skip
from .state import RunState
from .training import TrainSettings, train_round

# Config fields a branch may train with instead of the trunk's (ticket transfer, other
# training settings); anything else would make it another experiment, not a branch of this one.
TRAINING_FIELDS = frozenset(
    {"dataset", "iterations", "batch_size", "lr", "eval_every", "validation_size", "split_seed",
     "data_dir", "download", "test_every_eval"}
)  # fmt: skip


# -- the trunk -----------------------------------------------------------------------------


@dataclass
class Trunk:
    """A finished run's folder, verified: its ``config.json`` and its checkpoint's body."""

    path: Path
    meta: dict[str, Any]
    config: ResolvedConfig
    body: dict[str, Any]

    @property
    def done(self) -> int:
        """Rounds the trunk has finished (0 to ``done - 1`` can be branched from)."""
        return int(self.body["next_round"])

    def masks(self, round_index: int) -> dict[str, torch.Tensor]:
        """m_r: the masks round r trained with, by layer (bool)."""
        packed = self.body["masks"][round_index]
        return {name: checkpoint.unpack_mask(value) for name, value in packed.items()}

    def trained(self, round_index: int) -> Tensors | None:
        """Round r's trained parameters if the trunk has them (``rundir.trained_weights``)."""
        return rundir.trained_weights(self.path, self.body, round_index)


def open_trunk(path: Path) -> Trunk:
    """The run in ``path``, verified as ``--resume`` verifies it; one line if it is not a run
    folder, is a branch itself, or its files fail verification."""
    path = Path(path)
    rundir.not_a_group(path, "branch off")
    if rundir.kind(path) != "run":
        raise LotteryError(f"{str(path)!r} is not a lottery run folder")
    meta = rundir.read_meta(path)
    if "branch" in meta:
        raise LotteryError(f"{str(path)!r} is a branch's network; branch off its trunk instead")
    if not (path / paths.CHECKPOINT).exists():
        raise LotteryError(f"{str(path)!r} has no finished round to branch from")
    body = rundir.verified(path, meta)
    rundir.check_tables(path, body)
    return Trunk(path, meta, config_of(meta, f"{path}/{paths.CONFIG}"), body)


# -- a branch set: one kind, one set of options -------------------------------------------


def parse_rounds(text: str) -> list[int]:
    """``"1,3-8"`` -> ``[1, 3, 4, 5, 6, 7, 8]``; one line for anything else."""
    found: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise LotteryError(
                f"--rounds {text!r}: expected round numbers and ranges like 1,3-8"
            ) from None
        if first < 0 or last < first:
            raise LotteryError(f"--rounds {text!r}: {part!r} is not a range of rounds")
        found.update(range(first, last + 1))
    return sorted(found)


def validate_options(kind: BranchKind, who: str, values: dict[str, Any] | BaseModel) -> BaseModel:
    """The kind's options model, validated; one line naming the option otherwise."""
    if isinstance(values, kind.options):
        return values
    if isinstance(values, BaseModel):
        values = values.model_dump()
    try:
        return kind.options(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        parts = []
        for item in exc.errors():
            name = ".".join(str(p) for p in item["loc"]) or "options"
            if item["type"] == "extra_forbidden":
                known = ", ".join(kind.options.model_fields) or "it has none"
                parts.append(f"unknown option {name!r} (its options: {known})")
            else:
                parts.append(f"{name}: {item['msg']} (got {item.get('input')!r})")
        raise LotteryError(f"branch {kind.name!r}: " + "; ".join(parts)) from None
    except TypeError as exc:  # an options model that is not a pydantic model
        raise PluginError(f"{who}: its options cannot be built ({exc})") from None


@dataclass
class BranchSet:
    """One kind with one set of options on one trunk: its folder and what it records."""

    trunk: Path
    kind: str
    options: BaseModel
    seed: int
    batched: bool | None = None  # train the networks as one batched model; None: the trunk's

    @property
    def folder(self) -> Path:
        return paths.branch_set(self.trunk, self.kind, self.options.model_dump(mode="json"),
                                self.seed)  # fmt: skip

    def record(self) -> dict[str, Any]:
        """``branch.json``: what the folder's networks are, enough to run them again."""
        return {
            "kind": self.kind,
            "options": self.options.model_dump(mode="json"),
            "seed": self.seed,
            "trunk": "../..",  # the folder is <trunk>/branches/<kind>-<hash>
        }

    def network(self, round_index: int, trial: int) -> Path:
        return paths.branch_dir(self.folder, round_index, trial)

    def write(self) -> None:
        """Create the set's folder and ``branch.json`` (or check the one there says the same)."""
        file = self.folder / paths.BRANCH
        if file.exists():
            try:
                saved = json.loads(file.read_text())
            except (OSError, ValueError) as exc:
                raise LotteryError(f"{str(file)!r} is not readable JSON ({exc})") from None
            if saved != self.record():
                raise LotteryError(f"{str(file)!r} does not match this branch; nothing was changed")
            return
        rundir.check_writable(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        files.write_json(file, self.record())


def read_set(folder: Path, plugins: Plugins) -> BranchSet:
    """The branch set a folder's ``branch.json`` records."""
    file = Path(folder) / paths.BRANCH
    try:
        saved = json.loads(file.read_text())
        kind_name, options, seed = saved["kind"], saved["options"], int(saved["seed"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LotteryError(f"{str(file)!r} is not a branch record ({exc})") from None
    kind = plugins.branches.get(kind_name)
    who = plugins.branches.who(kind_name)
    return BranchSet(Path(folder).parent.parent, kind_name, validate_options(kind, who, options),
                     seed)  # fmt: skip


# -- one network ---------------------------------------------------------------------------


class BranchExperiment(Experiment):
    """The round loop started from a branch's chosen state: round r trains from the masks and
    weights the kind set, with nothing pruned or reset before it."""

    def __init__(
        self,
        config: ResolvedConfig,
        plugins: Plugins,
        data: DatasetSplits | None,
        begin: BranchStart,
        round_index: int,
        initial: Tensors,
    ):
        super().__init__(config, plugins=plugins, data=data)
        self.begin = begin
        self.round_index = round_index
        self.initial = initial

    def start(self) -> RunState:
        self.build_model()
        with torch.no_grad():
            for name, parameter in self.parameters().items():
                parameter.copy_(self.begin.parameters[name].to(parameter.device))
        masks.apply_masks(self.layers, {k: v.to(self.device) for k, v in self.begin.masks.items()})
        masks.check_pruned_are_zero(self.layers)
        state = RunState(next_round=self.round_index)
        state.rewind_state = self.snapshot()
        state.initial_state = {k: v.to(self.device) for k, v in self.initial.items()}
        state.initial_buffers = state.rewind_buffers = self.buffer_snapshot()  # a fresh model's
        return state

    def settings(self, round_index: int) -> TrainSettings:
        """The trunk's protocol for round r, from the iteration the kind chose if it did."""
        settings = super().settings(round_index)
        if self.begin.start_iteration is None:
            return settings
        return replace(settings, start_iteration=self.begin.start_iteration)

    def prune(self, state: RunState, round_index: int) -> None:
        """Nothing: the branch's masks were set by its kind (``start``)."""

    def reinitialise(self, state: RunState, round_index: int) -> None:
        """Nothing: the branch's weights were set by its kind (``start``)."""


def _reprune(
    trunk: Trunk, plugins: Plugins, data: DatasetSplits, round_index: int
) -> Callable[[Callable[[Tensors], Tensors]], Tensors]:
    """``BranchContext.repruned`` for this trunk and round."""

    def repruned(transform: Callable[[Tensors], Tensors]) -> Tensors:
        config = trunk.config
        if config.prune_at != "init":
            raise LotteryError(
                f"{str(trunk.path)!r} prunes trained weights (prune_at = imp): its round "
                f"{round_index} masks cannot be recomputed from θ0; this branch needs a trunk "
                "that prunes at initialisation (--prune-at init)"
            )
        base = plugins.strategies.get(config.prune)
        if base.scores is None:
            raise LotteryError(
                f"strategy {config.prune!r} sets masks itself: there are no scores to transform"
            )
        scores = base.scores

        def transformed(ctx: Any) -> Tensors:
            return transform(scores(ctx))

        strategy = PruningStrategy(base.name, transformed, base.description)
        experiment = Experiment(config, plugins=plugins, data=data)
        state = experiment.start()
        assert experiment.model is not None
        pruner = Pruner(
            experiment.model, experiment.layers, config, experiment.seeds["pruning"],
            experiment.data, strategy, plugins.strategies.who(config.prune), experiment.device,
        )  # fmt: skip
        prune_round(pruner, state, round_index)
        return {k: v.detach().cpu() for k, v in masks.current_masks(experiment.layers).items()}

    return repruned


def _context(
    trunk: Trunk, branch: BranchSet, plugins: Plugins, data: DatasetSplits, round_index: int,
    trial: int,
) -> BranchContext:  # fmt: skip
    body = trunk.body
    helper = Experiment(trunk.config, plugins=plugins, data=data)
    helper.build_model()
    layers = {layer.name: layer.kind for layer in helper.layers}

    def fresh(generator: torch.Generator) -> Tensors:
        return {k: v.detach().cpu() for k, v in helper.fresh_parameters(generator).items()}

    def iterations_of(value: int | str) -> int:
        per_epoch = data.train_x.shape[0] // trunk.config.batch_size
        try:
            return to_iterations(parse_steps(value), per_epoch)
        except ValueError as exc:
            raise LotteryError(f"steps {value!r}: {exc}") from None

    return BranchContext(
        round_index=round_index,
        trial=trial,
        masks={k: v.float() for k, v in trunk.masks(round_index).items()},
        initial={k: v.clone() for k, v in body["initial_state"].items()},
        rewind={k: v.clone() for k, v in body["rewind_state"].items()},
        trained=trunk.trained(round_index),
        config=trunk.config,
        options=branch.options,
        kinds=layers,
        generator=seeds.branch_generator(
            trunk.config.seed, branch.seed, branch.kind, round_index, trial
        ),
        fresh_parameters=fresh,
        repruned=_reprune(trunk, plugins, data, round_index),
        round_generator=seeds.branch_generator(
            trunk.config.seed, branch.seed, branch.kind, round_index, 0
        ),
        iterations_of=iterations_of,
        weights_at=_replay(trunk, plugins, data),
    )


_REPLAYED: dict[tuple, Tensors] = {}  # the dense weights at k this process replayed last


def _replay(trunk: Trunk, plugins: Plugins, data: DatasetSplits
            ) -> Callable[[int, Tensors | None], Tensors]:  # fmt: skip
    """``BranchContext.weights_at`` for this trunk: round 0's training replayed from θ0 (or a
    given start) for k iterations, with the trunk's data order, recipe and augmentation."""
    body = trunk.body

    def weights_at(k: int, start: Tensors | None = None) -> Tensors:
        config = trunk.config
        if not 0 <= k < config.iterations:
            raise LotteryError(
                f"iteration {k} is not within the trunk's training (0 to "
                f"{config.iterations - 1})"
            )
        if start is None and k == 0:
            return {n: v.clone() for n, v in body["initial_state"].items()}
        if start is None and k == config.rewind_iter:  # the trunk's own θk, as it saved it
            return {n: v.clone() for n, v in body["rewind_state"].items()}
        if k == 0:
            return {n: v.detach().cpu().clone() for n, v in (start or {}).items()}
        key = (str(trunk.path.absolute()), checkpoint.run_identity(trunk.meta), k,
               None if start is None else _digest(start))  # fmt: skip
        if key not in _REPLAYED:
            experiment = Experiment(config, plugins=plugins, data=data)
            experiment.start()
            assert experiment.model is not None
            if start is not None:
                with torch.no_grad():
                    for name, parameter in experiment.parameters().items():
                        parameter.copy_(start[name].to(parameter.device))
            settings = replace(experiment.settings(0), iterations=k, eval_every=k)
            train_round(experiment.model, experiment.data, settings,
                        data_seed=experiment.seeds["data_order"])  # fmt: skip
            _REPLAYED.clear()
            _REPLAYED[key] = {n: v.detach().cpu() for n, v in experiment.snapshot().items()}
        return {n: v.clone() for n, v in _REPLAYED[key].items()}

    return weights_at


def _digest(tensors: Tensors) -> str:
    """A short fingerprint of a state's values (which start a replay began from)."""
    import hashlib

    sha = hashlib.sha256()
    for name in sorted(tensors):
        sha.update(name.encode())
        sha.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:16]


def check_start(who: str, got: Any, context: BranchContext) -> BranchStart:
    """What a kind's ``start`` returned: masks binary, of every layer's shape; parameters of
    every name, shape and dtype, finite where they survive; only training fields changed."""
    if not isinstance(got, BranchStart):
        raise PluginError(f"{who} returned {type(got).__name__} from start; expected BranchStart")
    new_masks = guards.check_layer_tensors(who, "masks", got.masks, context.masks)
    for name, mask in new_masks.items():
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise PluginError(f"{who}: the mask of layer {name} is not binary (0/1)")
        if not bool(mask.any()):
            raise PluginError(f"{who}: the mask of layer {name} keeps no weight")
    like = context.initial
    given = got.parameters
    if not isinstance(given, dict) or set(given) != set(like):
        names = sorted(set(given) ^ set(like)) if isinstance(given, dict) else []
        raise PluginError(
            f"{who} returned parameters that are not keyed like the model's "
            f"({', '.join(names[:4]) or type(given).__name__})"
        )
    survivors = {f"{k}.weight_orig": v.bool() for k, v in new_masks.items()}
    for name, reference in like.items():
        value = given[name]
        if not isinstance(value, torch.Tensor) or value.shape != reference.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise PluginError(
                f"{who}: parameter {name} is {shape}; the model's is {tuple(reference.shape)}"
            )
        if value.dtype != reference.dtype:
            raise PluginError(f"{who}: parameter {name} is {value.dtype}; the model's is "
                              f"{reference.dtype}")  # fmt: skip
        alive = value[survivors[name]] if name in survivors else value
        if not bool(torch.isfinite(alive).all()):
            raise PluginError(f"{who}: parameter {name} is not finite (NaN or inf) where it "
                              "survives")  # fmt: skip
    changes = dict(got.changes or {})
    foreign = sorted(set(changes) - TRAINING_FIELDS)
    if foreign:
        raise PluginError(
            f"{who} changes {', '.join(foreign)}; a branch may change only training settings "
            f"({', '.join(sorted(TRAINING_FIELDS))})"
        )
    start_at = got.start_iteration
    if start_at is not None:
        budget: Any = changes.get("iterations") or context.config.iterations
        iterations = int(str(budget))
        if isinstance(start_at, bool) or not isinstance(start_at, int) or not (
            0 <= start_at < iterations
        ):
            raise PluginError(
                f"{who}: start_iteration {start_at!r} is not an iteration of the training "
                f"(0 to {iterations - 1})"
            )
    return BranchStart(
        {k: v.bool().cpu() for k, v in new_masks.items()},
        {k: v.detach().cpu().clone() for k, v in given.items()},
        changes,
        start_at,
    )


def network_config(
    trunk: Trunk, branch: BranchSet, plugins: Plugins, changes: dict[str, Any], round_index: int,
    trial: int,
) -> ResolvedConfig:  # fmt: skip
    """The trunk's config with the branch's changes, training round r as its last round; trial
    t > 0 with a seed of its own, so its data order differs (``seeds.branch_data_seed``)."""
    seed = seeds.branch_data_seed(trunk.config.seed, branch.seed, branch.kind, round_index, trial)
    values = {**trunk.config.model_dump(), **changes, "rounds": round_index + 1, "out": None,
              "seed": seed, "branches": []}  # fmt: skip
    if branch.batched is not None:
        values["batched"] = branch.batched
    try:
        config = ResolvedConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise LotteryError(f"branch setting {where}: {first['msg']} (got "
                           f"{first.get('input')!r})") from None  # fmt: skip
    plugins.datasets.get(config.dataset)
    if config.rewind_iter >= config.iterations:
        raise LotteryError(
            f"branch setting iterations ({config.iterations}) must be above the trunk's "
            f"rewind_iter ({config.rewind_iter})"
        )
    return config


def data_for(config: ResolvedConfig, plugins: Plugins, cache: dict[tuple, DatasetSplits]
             ) -> DatasetSplits:  # fmt: skip
    """``config``'s data, loaded once per process (a branch may train on another data set)."""
    from .loading import data_key, load_data

    key = data_key(config)
    if key not in cache:
        cache.clear()  # one data set at a time: memory stays one copy
        cache[key] = load_data(config, plugins)
    return cache[key]


def begin_network(
    branch: BranchSet, round_index: int, trial: int, plugins: Plugins,
    cache: dict[tuple, DatasetSplits],
) -> tuple[Trunk, BranchContext, BranchStart, ResolvedConfig]:  # fmt: skip
    """The trunk, the kind's context and checked start, and the config the network trains
    with (its data loaded): everything before a network's folder is written."""
    trunk = open_trunk(branch.trunk)
    kind = plugins.branches.get(branch.kind)
    who = plugins.branches.who(branch.kind)
    data = data_for(trunk.config, plugins, cache)
    context = _context(trunk, branch, plugins, data, round_index, trial)
    got = guards.call(who, f"starting from round {round_index}", kind.start, context)
    begin = check_start(who, got, context)
    config = network_config(trunk, branch, plugins, begin.changes, round_index, trial)
    data_for(config, plugins, cache)
    return trunk, context, begin, config


def train_network(
    branch: BranchSet,
    round_index: int,
    trial: int,
    plugins: Plugins,
    cache: dict[tuple, DatasetSplits],
    progress: bool = False,
) -> pd.DataFrame:
    """Bring one branch network to its end: skipped if finished, else (re)trained from the
    trunk; returns its ``results.csv`` rows."""
    path = branch.network(round_index, trial)
    done = path / paths.RESULTS
    if done.exists() and (path / paths.CHECKPOINT).exists():
        return pd.read_csv(done)
    trunk, context, begin, config = begin_network(branch, round_index, trial, plugins, cache)
    experiment = BranchExperiment(config, plugins, data_for(config, plugins, cache), begin,
                                  round_index, context.initial)  # fmt: skip
    meta = network_meta(branch, trunk, experiment, round_index, trial)
    if (path / paths.CHECKPOINT).exists():  # trained, stopped before its tables: write them
        runs.resume(path, plugins=plugins, progress=False, data=experiment.data, complete_ok=True)
    elif rundir.kind(path) == "run":  # stopped while training: only its config.json is there
        runs.restart(experiment, path, progress=progress, meta=meta)
    else:
        runs.start(experiment, path, progress=progress, meta=meta)
    return pd.read_csv(done)


def network_meta(
    branch: BranchSet, trunk: Trunk, experiment: Experiment, round_index: int, trial: int
) -> dict[str, Any]:
    """A branch network's ``config.json`` record: the run's, with the branch's and its
    plugin's."""
    meta = runs.run_record(experiment)
    plugins = experiment.plugins
    meta["plugins"] = {**meta["plugins"], "branch": plugins.branches.sources[branch.kind]}
    meta["branch"] = {**branch.record(), "round": round_index, "trial": trial,
                      "trunk_identity": checkpoint.run_identity(trunk.meta)}  # fmt: skip
    return meta


def write_table(folder: Path) -> pd.DataFrame:
    """The set's ``results.csv``: every finished network's row, with ``trial``."""
    frames = []
    for network in paths.branch_dirs(folder):
        file = network / paths.RESULTS
        if file.exists():
            frame = pd.read_csv(file)
            frame["trial"] = paths.trial_number(network)
            frames.append(frame)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True).sort_values(["round", "trial"], ignore_index=True)
    files.write_csv(Path(folder) / paths.RESULTS, table)
    return table


# -- running a branch ----------------------------------------------------------------------


@dataclass
class BranchPlan:
    """A validated branch: its set, the rounds and trials it needs, the trunk it reads."""

    branch: BranchSet
    rounds: list[int]
    trials: int

    def networks(self) -> list[tuple[int, int]]:
        return [(r, t) for r in self.rounds for t in range(self.trials)]


def plan_branch(
    kind_name: str,
    trunk_dir: Path,
    rounds: Sequence[int] | str | None,
    options: dict[str, Any] | BaseModel | None,
    plugins: Plugins,
    trials: int | None = None,
    seed: int = 0,
    batched: bool | None = None,
) -> BranchPlan:
    """Everything checked before anything is written: the kind, its options, the trunk's files,
    every round finished by the trunk, the trials (``None``: the kind's least, 1 for most);
    ``batched``: train the networks as one batched model (``None``: as the trunk's config)."""
    kind = plugins.branches.get(kind_name)
    who = plugins.branches.who(kind_name)
    chosen = validate_options(kind, who, options or {})
    if trials is None:
        trials = max(1, kind.min_trials)
    if trials < max(1, kind.min_trials):
        raise LotteryError(
            f"--trials must be at least {max(1, kind.min_trials)} (got {trials})"
            + (f": branch {kind_name!r} compares its trials" if kind.min_trials > 1 else "")
        )
    if seed < 0:
        raise LotteryError(f"--branch-seed must be 0 or more (got {seed})")
    trunk = open_trunk(Path(trunk_dir))
    if rounds is None:
        wanted = list(range(1, trunk.done)) or [0]
    elif isinstance(rounds, str):
        wanted = parse_rounds(rounds)
    else:
        wanted = sorted(set(int(r) for r in rounds))
    if not wanted:
        raise LotteryError("--rounds names no round")
    late = [r for r in wanted if r >= trunk.done]
    if late:
        raise LotteryError(
            f"{str(trunk.path)!r} has finished rounds 0-{trunk.done - 1}; round {late[0]} "
            f"is not finished (of {trunk.config.rounds}), so it cannot be branched from"
        )
    return BranchPlan(BranchSet(trunk.path, kind_name, chosen, seed, batched), wanted, trials)


def preflight(plan: BranchPlan, plugins: Plugins, cache: dict[tuple, DatasetSplits]) -> None:
    """The first unfinished network's start, computed and checked before anything is written,
    so a kind that cannot run on this trunk (``invert`` on an IMP trunk, ``retrain --start
    trained`` without kept weights, a dataset that does not fit) is one line and no folder."""
    for round_index, trial in plan.networks():
        if not rows(plan.branch.network(round_index, trial)):
            begin_network(plan.branch, round_index, trial, plugins, cache)
            return


def table_of(plan: BranchPlan) -> pd.DataFrame:
    """The rows of ``plan``'s networks (of the set's ``results.csv``, which may hold more)."""
    table = write_table(plan.branch.folder)
    if table.empty:
        return table
    wanted = set(plan.networks())
    keep = [(int(r), int(t)) in wanted for r, t in zip(table["round"], table["trial"],
                                                       strict=True)]  # fmt: skip
    return table[keep].reset_index(drop=True)


def rows(path: Path) -> int:
    """1 once a network has finished (its ``results.csv`` is written), else 0."""
    return int((Path(path) / paths.RESULTS).exists())
