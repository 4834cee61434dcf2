"""Starting and resuming one run in its folder: the round loop plus the run folder's writer.

Everything that can be known before training (the data, the batch size against it, the model's
forward on the data's input shape, a writable ``--out``) is checked before the folder exists. A
run that fails before its first round is saved removes what it wrote, so the same command can
simply be run again; after that, every saved round stays and ``--resume`` continues. A file that
cannot be written (a full disk) is one line naming it, the rounds saved and how to continue.

``--resume`` trusts nothing it cannot verify (``rundir.resume_point``); ``--from-previous``
continues from ``checkpoint.prev.pt`` when ``checkpoint.pt`` is damaged, moving the damaged one
aside, never deleting it. ``--resume DIR --rounds N`` first sets the folder's rounds to N
(``extend``); a run without ``--out`` whose ``results/<name>`` already holds the same experiment
is reported or continued there (``default_folder``), never trained again beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import checkpoint, files, paths, preflight, rundir
from .config import config_of
from .errors import Interrupted, LotteryError, RunFailed, WriteFailed, command
from .experiment import Experiment, ExperimentResult, Trained
from .plugins import Plugins
from .records import identify, plugin_sources, results_frame, versions
from .specs import DatasetSplits
from .state import RunState
from .training import NonFiniteLoss


def start(
    experiment: Experiment,
    path: Path,
    progress: bool = True,
    state: RunState | None = None,
    stop_after: int | None = None,
    after_round=None,
    meta: dict[str, Any] | None = None,
) -> ExperimentResult:
    """Run ``experiment`` in the new folder ``path``; ``state`` (with the model restored) makes
    it a branch of another run: its rounds so far are written at once, then it continues.
    ``meta``: what ``config.json`` records (default ``run_record``)."""
    path = Path(path)
    preflight.validate(experiment)
    existed = path.exists()
    rundir.create(path)
    with rundir.locked(path):
        if rundir.kind(path) != "empty":  # someone else took it between our check and lock
            rundir.check_new(path)
        folder = rundir.RunFolder(path, meta or run_record(experiment))
        try:
            folder.write_config()
            experiment.plugins.notify(
                "on_experiment_start",
                watch=experiment.model,
                config=experiment.config,
                run_dir=path,
                run=identify(path),
            )
            if state is not None:
                folder.write_round(state, _model_state(experiment))
        except BaseException:
            _remove_own(path, existed)
            raise
        return _run(experiment, folder, state, progress, stop_after, after_round, existed, True)


def run_record(experiment: Experiment) -> dict[str, Any]:
    """What ``config.json`` records: the resolved config, the seeds, the data (where it came
    from, its sizes and shapes), the device, the versions and the plugins."""
    data = experiment.data
    return {
        "config": experiment.config.model_dump(mode="json"),
        "seeds": experiment.seeds,
        "data_source": data.source,
        "data_sizes": {
            "train": int(data.train_x.shape[0]),
            "val": int(data.val_x.shape[0]),
            "test": int(data.test_x.shape[0]),
        },
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "device": str(experiment.device),
        "versions": versions(),
        "plugins": plugin_sources(experiment.config, experiment.plugins),
    }


def restart(
    experiment: Experiment,
    path: Path,
    progress: bool = True,
    after_round=None,
    kept: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> ExperimentResult:
    """A run stopped before its first round finished (only its ``config.json`` is there);
    ``kept``: what its ``config.json`` records besides (its extensions); ``meta``: as in
    ``start``."""
    preflight.validate(experiment)
    folder = rundir.RunFolder(path, {**(meta or run_record(experiment)), **(kept or {})})
    folder.write_config()
    experiment.plugins.notify(
        "on_experiment_start", config=experiment.config, run_dir=path, run=identify(path)
    )
    return _run(experiment, folder, None, progress, None, after_round, True, False)


def _run(
    experiment: Experiment,
    folder: rundir.RunFolder,
    state: RunState | None,
    progress: bool,
    stop_after: int | None,
    after_round,
    existed: bool,
    fresh: bool,
) -> ExperimentResult:
    """The rounds, each written by ``folder``. On any failure a ``fresh`` start (this call
    wrote the folder's files) that saved no round removes what it wrote."""

    def write(current: RunState) -> None:
        if after_round is not None:
            after_round(current)
        folder.write_round(current, _model_state(experiment))

    try:
        if state is None:
            state = experiment.start()
        result = experiment.run(
            state, progress=progress, stop_after=stop_after, after_round=write, run_dir=folder.path
        )
    except WriteFailed as exc:
        raise RunFailed(f"{exc}; {_after_failure(folder, existed, fresh)}") from None
    except NonFiniteLoss as exc:
        _after_failure(folder, existed, fresh)
        raise RunFailed(
            f"round {_failed(state)}: the loss became {exc.value} at iteration "
            f"{exc.iteration}; {_saved(folder)}; try a lower --lr"
        ) from None
    except torch.cuda.OutOfMemoryError:
        _after_failure(folder, existed, fresh)
        raise RunFailed(
            f"round {_failed(state)}: out of memory on {experiment.device}; {_saved(folder)}; "
            "try a smaller --batch-size or --device cpu"
        ) from None
    except Interrupted:
        _after_failure(folder, existed, fresh)
        saved = folder.saved_rounds
        if saved or not fresh:  # kept: a resumed run's folder, or a fresh one with a round
            kept = None if saved else f"no round is saved yet in {folder.path}"
            raise Interrupted(folder.path, saved, kept) from None
        raise Interrupted(None, 0) from None
    except BaseException:
        _after_failure(folder, existed, fresh)
        raise
    if state.next_round >= (experiment.config.rounds or 0):
        experiment.plugins.notify(
            "on_experiment_end",
            watch=experiment.model,
            results=result.results,
            run_dir=folder.path,
            run=identify(folder.path),
        )
    return result


def _failed(state: RunState | None) -> int:
    """The round a run was training when it failed."""
    return state.next_round if state is not None else 0


def _saved(folder: rundir.RunFolder) -> str:
    """What a failed run kept, in words."""
    done = folder.saved_rounds
    return f"rounds 0-{done - 1} are saved in {folder.path}" if done else "no round had finished"


def _after_failure(folder: rundir.RunFolder, existed: bool, fresh: bool) -> str:
    """Remove a fresh start's files if it saved no round; say what is kept and what next."""
    path = folder.path
    if fresh and not (path / rundir.CHECKPOINT).exists():
        _remove_own(path, existed)
        return "no round was saved and nothing was kept; run the same command again once fixed"
    saved = folder.saved_rounds
    kept = f"rounds 0-{saved - 1} are saved in {path}" if saved else "no round was saved"
    return f"{kept}; once fixed, continue with: {command('run', '--resume', path)}"


def remove_unsaved_group(out: Path, existed: bool) -> None:
    """Undo a trials/controls start none of whose runs saved a round: its ``config.json``, its
    lock and the empty folders under ``runs/`` (each run removed its own files), then ``out``."""
    out = Path(out)
    if any((out / rundir.RUNS).glob(f"*/*/{rundir.CHECKPOINT}")):
        return
    runs_dir = out / rundir.RUNS
    for folder in [*runs_dir.glob("*/*"), *runs_dir.glob("*"), runs_dir]:
        try:
            folder.rmdir()  # only empty ones: anything else stays
        except OSError:
            pass
    if not runs_dir.exists():
        for name in (rundir.CONFIG, rundir.LOCK):
            (out / name).unlink(missing_ok=True)
        if not existed:
            try:
                out.rmdir()
            except OSError:
                pass


def for_group(exc: BaseException, out: Path) -> BaseException:
    """A run's Ctrl-C as its trials/controls folder reports it: resume the group, not the run."""
    if not isinstance(exc, (Interrupted, KeyboardInterrupt)):
        return exc
    if not Path(out).exists():
        return Interrupted(None, 0)
    return Interrupted(out, 0, f"every saved round of its runs is in {out}")


def _remove_own(path: Path, existed: bool) -> None:
    """Undo a start that trained nothing: only the files this run wrote, then the folder."""
    for name in (*rundir.OWN_FILES, rundir.LOCK):
        (path / name).unlink(missing_ok=True)
    rundir.clear_stray_temp_files(path)
    if not existed:
        try:
            path.rmdir()
        except OSError:
            pass


def _model_state(experiment: Experiment) -> dict:
    assert experiment.model is not None
    return experiment.model.state_dict()


def resume(
    path: Path,
    plugins: Plugins,
    progress: bool = True,
    data: DatasetSplits | None = None,
    after_round=None,
    complete_ok: bool = False,
    from_previous: bool = False,
    round_trainer: Callable[[Experiment, int], Trained | None] | None = None,
) -> ExperimentResult:
    """Continue the run in ``path`` from its last finished round (verified checkpoint), or with
    ``from_previous`` from the round before it (``checkpoint.prev.pt``), when ``checkpoint.pt``
    is missing or damaged: that one is moved aside and the tables rewritten to match.
    ``round_trainer``: the experiment's (``Experiment.round_trainer``: a lockstep's)."""
    path = Path(path)
    if rundir.kind(path) != "run":
        rundir.check_not_held(path)  # a run starting there: name it
        raise LotteryError(f"{str(path)!r} is not a lottery run folder")
    with rundir.locked(path):
        rundir.clear_stray_temp_files(path)
        meta = rundir.read_meta(path)
        body: dict[str, Any] | None
        if from_previous:
            body = rundir.previous_point(path, meta)
        else:
            body = rundir.resume_point(path, meta)
        experiment = Experiment(config_of(meta), plugins=plugins, data=data)
        experiment.round_trainer = round_trainer
        if body is None:
            kept = {k: meta[k] for k in (rundir.EXTENDED,) if k in meta}
            return restart(experiment, path, progress, after_round, kept)
        model_state, state = checkpoint.state_of(body)
        experiment.restore(model_state, state)
        folder = rundir.RunFolder(path, meta)  # the folder's own record, as it was written
        folder.saved_rounds = state.next_round
        if from_previous:  # tables first: a stop in between leaves a state that resumes again
            folder.write_tables(state)
            rundir.set_aside(path)
            files.keep_copy(path / rundir.PREVIOUS, path / rundir.CHECKPOINT)
        if state.next_round >= (experiment.config.rounds or 0):  # nothing left to train
            if not rundir.tables_current(path, body):  # stopped before its last tables
                folder.write_tables(state)
                return _result(meta, state, path)
            if complete_ok:
                return _result(meta, state, path)
            raise LotteryError(f"{str(path)!r} is already complete ({state.next_round} rounds)")
        experiment.plugins.notify(
            "on_resume",
            watch=experiment.model,
            config=experiment.config,
            run_dir=path,
            next_round=state.next_round,
            run=identify(path),
        )
        return _run(experiment, folder, state, progress, None, after_round, True, False)


def _result(meta: dict[str, Any], state: RunState, path: Path) -> ExperimentResult:
    """The tables of a run that trains no further, as ``Experiment.result`` gives them, without
    loading its data (``config.json`` names where it came from)."""
    return ExperimentResult(
        results=results_frame(state.records),
        history=pd.DataFrame(state.history),
        layers=pd.DataFrame(state.layers),
        config=config_of(meta),
        run_dir=Path(path),
        data_source=str(meta.get("data_source", "")),
    )


def load(path: Path) -> ExperimentResult:
    """The rounds the run in ``path`` has finished, verified as ``resume`` verifies them (tables
    a stop left behind are written from the checkpoint); nothing is trained."""
    path = Path(path)
    with rundir.locked(path):
        rundir.clear_stray_temp_files(path)
        meta = rundir.read_meta(path)
        body = rundir.resume_point(path, meta)
        if body is None:
            raise LotteryError(f"{str(path)!r} has no finished round yet")
        _, state = checkpoint.state_of(body)
        if not rundir.tables_current(path, body):
            rundir.RunFolder(path, meta).write_tables(state)
        return _result(meta, state, path)


def rows(path: Path) -> int:
    """Rounds a run folder lists as finished (the rows of its ``results.csv``; 0 without)."""
    try:
        with open(Path(path) / paths.RESULTS) as handle:
            return max(0, sum(1 for _ in handle) - 1)
    except OSError:
        return 0


# -- extending: ``run --resume DIR --rounds N`` ----------------------------------------------


@dataclass
class Extension:
    """What ``extend`` did: the rounds of ``path`` were ``before`` and are ``after``; ``done``:
    the rounds it has finished (a trials/controls folder: the fewest of its IMP runs)."""

    path: Path
    before: int
    after: int
    done: int
    group: bool = False

    @property
    def changed(self) -> bool:
        return self.before != self.after


def extend(path: Path, rounds: int) -> Extension:
    """Set the rounds of the run (or trials/controls folder) in ``path`` to ``rounds``, for
    ``resume`` to train the rounds it lacks. ``config.json`` is rewritten at once (atomically)
    with the new ``rounds`` and ``{"from", "to", "at"}`` appended to its ``extended``, so its
    history stays; the checkpoints written before still verify (``rundir.as_written``) and the
    continuation computes what a run started with ``rounds`` computes, bit for bit (no random
    choice depends on the number of rounds). A run may also be set back to as few as it has
    finished; a trials/controls folder only grows (every IMP run verified, then its own
    ``config.json``, which its controls follow, then each IMP run's: ``sync_group``). Anything
    else is one line, and nothing is changed."""
    path = Path(path)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise LotteryError(f"--rounds must be at least 1 (got {rounds!r})")
    found = rundir.kind(path)
    outer = _outer(path)
    if outer is not None:
        raise LotteryError(f"{str(path)!r} {outer}; nothing was changed")
    if found == "group":
        return _extend_group(path, rounds)
    if found == "sweep":
        raise LotteryError(
            f"{str(path)!r} is a sweep folder: its rounds are its sweep file's; nothing was changed"
        )
    if found != "run":
        rundir.check_not_held(path)
        raise LotteryError(f"{str(path)!r} is not a lottery run folder (nothing to extend)")
    with rundir.locked(path):
        rundir.clear_stray_temp_files(path)
        meta = rundir.read_meta(path)
        if "branch" in meta:
            raise LotteryError(
                f"{str(path)!r} is a branch's network, one round of its trunk: it has no rounds "
                "to extend; nothing was changed"
            )
        return _extend_run(path, meta, rounds)


def _outer(path: Path) -> str | None:
    """Why the folder ``path`` cannot change its rounds alone: a run of a trials/controls
    folder, or a grid point of a sweep (their rounds are the folder's, the sweep file's)."""
    member = paths.trial_of(path)
    if member is not None and rundir.kind(member[0]) == "group":
        outer = _outer(member[0])
        if outer is not None:
            return f"is a run of the trials/controls folder {str(member[0])!r}, which {outer}"
        how = command("run", "--resume", member[0], "--rounds", "N")
        return (
            f"is a run of the trials/controls folder {str(member[0])!r}: extend the folder: {how}"
        )
    parent = Path(path).absolute().parent
    if parent.name == paths.POINTS and rundir.kind(parent.parent) == "sweep":
        return (
            f"is a grid point of the sweep {str(parent.parent)!r}: its rounds are the sweep file's"
        )
    return None


def _extend_run(path: Path, meta: dict[str, Any], rounds: int, at: str | None = None) -> Extension:
    """``extend`` on a run folder whose lock the caller holds: its checkpoint verified first."""
    path = Path(path)
    body = rundir.resume_point(path, meta)  # None: no round finished yet, only config.json
    done = 0 if body is None else int(body["next_round"])
    before = config_of(meta, f"{path}/{paths.CONFIG}").rounds
    if rounds < done:
        raise LotteryError(
            f"--rounds {rounds}: {str(path)!r} has already finished {done} rounds; give "
            f"--rounds {done} or more; nothing was changed"
        )
    if rounds != before:
        files.write_json(path / paths.CONFIG, _extended(meta, before, rounds, at))
    return Extension(path, before, rounds, done)


def _extended(meta: dict[str, Any], before: int, after: int, at: str | None) -> dict[str, Any]:
    history = meta.get(rundir.EXTENDED)
    record = {"from": before, "to": after, "at": at or _now()}
    return {
        **meta,
        "config": {**meta["config"], "rounds": after},
        rundir.EXTENDED: [*(history if isinstance(history, list) else []), record],
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _extend_group(out: Path, rounds: int) -> Extension:
    """``extend`` on a trials/controls folder: every IMP run verified, then its
    ``config.json``, then its runs (``sync_group``)."""
    with rundir.locked(out):
        meta = rundir.read_group_meta(out)
        before = config_of(meta, f"{out}/{paths.CONFIG}").rounds
        if rounds < before:
            raise LotteryError(
                f"--rounds {rounds}: the trials/controls folder {str(out)!r} has {before} "
                "rounds, and a folder's rounds can only grow; nothing was changed"
            )
        done = []
        for trunk in paths.trial_dirs(out, paths.MAIN):  # all verified before anything changes
            if rundir.kind(trunk) == "run":
                with rundir.locked(trunk):
                    body = rundir.resume_point(trunk, rundir.read_meta(trunk))
                done.append(0 if body is None else int(body["next_round"]))
        if rounds != before:
            meta = _extended(meta, before, rounds, None)
            files.write_json(out / paths.CONFIG, meta)
        _sync(out, meta)
    fewest = min(done) if len(done) == meta["group"]["trials"] else 0
    return Extension(out, before, rounds, fewest, group=True)


def sync_group(out: Path) -> None:
    """Bring each IMP run of the trials/controls folder ``out`` to the folder's rounds where its
    ``config.json`` records the extension (a stop between the folder's ``config.json`` and its
    runs' is mended by the next resume)."""
    with rundir.locked(out):
        _sync(Path(out), rundir.read_group_meta(out))


def _sync(out: Path, meta: dict[str, Any]) -> None:
    rounds = meta["config"].get("rounds")
    earlier = {m["config"].get("rounds") for m in rundir.as_written(meta)[1:]} - {rounds}
    if not earlier:
        return
    at = meta[rundir.EXTENDED][-1].get("at")
    for trunk in paths.trial_dirs(out, paths.MAIN):
        if rundir.kind(trunk) != "run":
            continue
        with rundir.locked(trunk):
            trunk_meta = rundir.read_meta(trunk)
            if trunk_meta.get("config", {}).get("rounds") in earlier:
                _extend_run(trunk, trunk_meta, rounds, at)


# -- a run without --out: the folder that already holds it ----------------------------------


@dataclass
class Found:
    """Where a run (or trials/controls folder) without ``--out`` goes: ``path``, and whether it
    already holds this very experiment (``same``), with ``done`` of its ``rounds`` finished (a
    trials/controls folder: the fewest of its IMP runs) and nothing left to train
    (``complete``)."""

    path: Path
    same: bool = False
    done: int = 0
    rounds: int = 0
    complete: bool = False


def default_folder(
    name: str, holds: Callable[[Path], Found | None], root: Path = paths.RESULTS_ROOT
) -> Found:
    """``root/name``, or ``root/name-2``, ``-3``...: the first that already holds this
    experiment (``holds`` says, from its ``config.json``), else the first that does not exist.
    A folder that holds something else (another config, a damaged ``config.json``) is passed
    over, as before."""
    candidate, suffix = Path(root) / name, 2
    while rundir.kind(candidate) != "missing":
        try:
            found = holds(candidate)
        except LotteryError:
            found = None
        if found is not None:
            return found
        candidate, suffix = Path(root) / f"{name}-{suffix}", suffix + 1
    return Found(candidate)


def holds_run(experiment: Experiment) -> Callable[[Path], Found | None]:
    """Whether a folder holds a run of ``experiment``: the identity its ``config.json`` records
    (``checkpoint.run_identity``: config, seeds, plugins), or recorded before an extension, is
    the one a run of it would write (its data is not loaded)."""
    expected = checkpoint.run_identity(
        {
            "config": experiment.config.model_dump(mode="json"),
            "seeds": experiment.seeds,
            "plugins": plugin_sources(experiment.config, experiment.plugins),
        }
    )
    wanted = experiment.config.rounds

    def holds(path: Path) -> Found | None:
        if rundir.kind(path) != "run":
            return None
        meta = rundir.read_meta(path)
        if "branch" in meta:
            return None
        if all(checkpoint.run_identity(m) != expected for m in rundir.as_written(meta)):
            return None
        done = rows(path)
        rounds = max(wanted, config_of(meta).rounds)
        return Found(Path(path), True, done, rounds, complete=done >= wanted)

    return holds


def continue_found(found: Found, plugins: Plugins, progress: bool = True) -> ExperimentResult:
    """The run ``found`` holds: its tables if it is complete, else continued (to the rounds it
    was asked for, when it had been set back below them)."""
    if found.complete:
        return load(found.path)
    with rundir.locked(found.path):
        meta = rundir.read_meta(found.path)
        if config_of(meta).rounds < found.rounds:
            _extend_run(found.path, meta, found.rounds)
    return resume(found.path, plugins, progress=progress, complete_ok=True)
