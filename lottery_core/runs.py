"""Starting and resuming one run in its folder: the round loop plus the run folder's writer.

Everything that can be known before training (the data, the batch size against it, the model's
forward on the data's input shape, a writable ``--out``) is checked before the folder exists. A
run that fails before its first round is saved removes what it wrote, so the same command can
simply be run again; after that, every saved round stays and ``--resume`` continues. A file that
cannot be written (a full disk) is one line naming it, the rounds saved and how to continue.

``--resume`` trusts nothing it cannot verify (``rundir.resume_point``); ``--from-previous``
continues from ``checkpoint.prev.pt`` when ``checkpoint.pt`` is damaged, moving the damaged one
aside, never deleting it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import checkpoint, files, rundir
from .config import config_of
from .errors import Interrupted, LotteryError, RunFailed, WriteFailed, command
from .experiment import Experiment, ExperimentResult
from .plugins import Plugins
from .records import identify
from .specs import DatasetSplits
from .state import RunState


def start(
    experiment: Experiment,
    path: Path,
    progress: bool = True,
    state: RunState | None = None,
    stop_after: int | None = None,
    after_round=None,
) -> ExperimentResult:
    """Run ``experiment`` in the new folder ``path``; ``state`` (with the model restored) makes
    it a branch of another run: its rounds so far are written at once, then it continues."""
    path = Path(path)
    experiment.validate()
    existed = path.exists()
    rundir.create(path)
    with rundir.locked(path):
        if rundir.kind(path) != "empty":  # someone else took it between our check and lock
            rundir.check_new(path)
        folder = rundir.RunFolder(path, experiment.describe())
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


def restart(
    experiment: Experiment, path: Path, progress: bool = True, after_round=None
) -> ExperimentResult:
    """A run stopped before its first round finished (only its ``config.json`` is there)."""
    experiment.validate()
    folder = rundir.RunFolder(path, experiment.describe())
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
) -> ExperimentResult:
    """Continue the run in ``path`` from its last finished round (verified checkpoint), or with
    ``from_previous`` from the round before it (``checkpoint.prev.pt``), when ``checkpoint.pt``
    is missing or damaged: that one is moved aside and the tables rewritten to match."""
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
        if body is None:
            return restart(experiment, path, progress, after_round)
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
                return experiment.result(state, path)
            if complete_ok:
                return experiment.result(state, path)
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
