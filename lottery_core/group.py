"""Trials and controls: several IMP runs that a figure compares, run as one experiment.

A group folder holds ``config.json``, a ``results.csv`` of every run's rows (with ``experiment``
and ``trial`` columns), ``aggregate.csv`` (mean/std/min/max per experiment and round) and the
runs themselves under ``runs/<experiment>/trial_<i>/``, each an ordinary run folder.

Trial ``i`` uses seed ``seed + i`` (init, data order and pruning seeds are derived from it), so
trial 0 equals the single run with the same seed. The controls, random reinitialisation and
random pruning, branch off the main run's dense round instead of training it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import checkpoint, rundir
from .config import ExperimentConfig, resolve
from .errors import LotteryError
from .experiment import Experiment, RunState, derive_seeds, load_data
from .plugins import Plugins, get_plugins
from .specs import DatasetSplits

MAIN = "imp"
CONTROLS = {"reinit-random": {"reinit": "random"}, "prune-random": {"prune": "random"}}


@dataclass
class GroupResult:
    results: pd.DataFrame
    aggregate: pd.DataFrame
    run_dir: Path
    data_source: str


def experiments(config: ExperimentConfig, controls: bool) -> dict[str, ExperimentConfig]:
    """The main experiment and, if asked, its controls (skipping one the main run already is)."""
    found = {MAIN: config}
    if controls:
        for name, change in CONTROLS.items():
            if all(getattr(config, k) == v for k, v in change.items()):
                continue
            found[name] = config.model_copy(update=change)
    return found


def trial_dir(root: Path, experiment: str, trial: int) -> Path:
    return root / "runs" / experiment / f"trial_{trial}"


def is_group(path: Path) -> bool:
    return (Path(path) / "runs").is_dir()


def run_group(
    config: ExperimentConfig,
    out: Path,
    trials: int = 1,
    controls: bool = False,
    progress: bool = True,
    plugins: Plugins | None = None,
) -> GroupResult:
    """Run ``trials`` trials of the experiment and its controls into the group folder ``out``."""
    if trials < 1:
        raise LotteryError(f"invalid config: trials must be at least 1 (got {trials})")
    plugins = plugins or get_plugins()
    config = resolve(config, plugins)
    rundir.check_new(out)
    data = load_data(config, plugins)  # before the folder exists: bad data writes nothing
    rundir.create(out)
    rundir.write_json(
        out / "config.json",
        {
            "group": {"trials": trials, "controls": controls},
            "config": config.model_dump(mode="json"),
            "trial_seeds": {
                t: {"seed": config.seed + t, **derive_seeds(config.seed + t)} for t in range(trials)
            },
        },
    )
    return continue_group(out, progress=progress, plugins=plugins, data=data)


def continue_group(
    out: Path,
    progress: bool = True,
    plugins: Plugins | None = None,
    data: DatasetSplits | None = None,
) -> GroupResult:
    """Run whatever the group in ``out`` still lacks: resumes stopped runs, starts missing ones."""
    plugins = plugins or get_plugins()
    meta = read_group_config(out)
    config = ExperimentConfig(**meta["config"])
    trials, controls = meta["group"]["trials"], meta["group"]["controls"]
    if data is None:
        data = load_data(resolve(config, plugins), plugins)
    for trial in range(trials):
        trial_config = config.model_copy(update={"seed": config.seed + trial})
        variants = experiments(trial_config, controls)
        dense = _run_or_resume(
            out, MAIN, trial, variants[MAIN], data, plugins, progress, capture=len(variants) > 1
        )
        for name, variant in variants.items():
            if name != MAIN:
                _run_or_resume(out, name, trial, variant, data, plugins, progress, dense=dense)
        write_tables(out)
    frame = pd.read_csv(out / "results.csv")
    return GroupResult(frame, pd.read_csv(out / "aggregate.csv"), out, data.source)


def read_group_config(out: Path) -> dict:
    path = Path(out) / "config.json"
    try:
        meta = json.loads(path.read_text())
        meta["group"]["trials"]
    except (OSError, ValueError, KeyError, TypeError):
        raise LotteryError(f"{str(out)!r} is not a lottery trials/controls folder") from None
    return meta


@dataclass
class DenseRound:
    """The main run's trained dense round, from which the controls branch."""

    model: dict[str, torch.Tensor]
    state: RunState


def _run_or_resume(
    root: Path,
    name: str,
    trial: int,
    config: ExperimentConfig,
    data: DatasetSplits,
    plugins: Plugins,
    progress: bool,
    capture: bool = False,
    dense: DenseRound | None = None,
) -> DenseRound | None:
    """Run one experiment of the group; returns its dense round when ``capture`` asks for it."""
    folder = trial_dir(root, name, trial)
    experiment = Experiment(config, plugins=plugins, data=data)
    captured: list[DenseRound] = []

    def keep_dense(round_index: int, state: RunState) -> None:
        if round_index == 0 and capture:
            assert experiment.model is not None
            model = {k: v.detach().clone() for k, v in experiment.model.state_dict().items()}
            captured.append(DenseRound(model, state.copy(next_round=1)))

    if (folder / checkpoint.FILENAME).exists():
        raw = checkpoint.read(folder)
        state = checkpoint.restore(experiment, raw)
        if state.next_round < (experiment.config.rounds or 0):
            experiment.run(folder, state=state, progress=progress)
        return None
    if folder.exists():  # stopped before its first round finished: start it again
        for child in folder.iterdir():
            child.unlink()
    if dense is not None:
        experiment.build_model()
        assert experiment.model is not None
        experiment.model.load_state_dict(dense.model)
        state = dense.state.copy()
        if experiment.config.rounds and experiment.config.rounds > 1:
            experiment.prune(1)
            experiment.reinitialise(state, 1)
        experiment.run(folder, state=state, progress=progress)
        return None
    experiment.run(folder, progress=progress, on_trained=keep_dense)
    return captured[0] if captured else None


def write_tables(root: Path) -> None:
    """The group's ``results.csv`` (every run's rows) and ``aggregate.csv``."""
    from .report import aggregate

    frames = []
    for folder in sorted((root / "runs").glob("*/trial_*")):
        path = folder / "results.csv"
        if path.exists():
            frame = pd.read_csv(path)
            frame["experiment"] = folder.parent.name
            frame["trial"] = int(folder.name.split("_")[1])
            frames.append(frame)
    if not frames:
        return
    combined = pd.concat(frames, ignore_index=True)
    rundir.write_csv(root / "results.csv", combined)
    rundir.write_csv(root / "aggregate.csv", aggregate(combined))
