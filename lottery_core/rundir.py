"""The run folder: its layout, its kinds, its ``config.json``, and how a run starts or resumes.

One place knows every file name. A run folder is created once and never overwritten or
deleted by the tool: a run holds an exclusive OS lock on it for its whole life (released by the
kernel if the process is killed), writes its files atomically (``files``), the checkpoint first
and ``results.csv`` last, so a round listed there has all its other files in place.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from . import checkpoint, files
from .errors import LotteryError
from .state import RunState

if TYPE_CHECKING:
    from .experiment import Experiment

RESULTS_ROOT = Path("results")
CONFIG = "config.json"
CHECKPOINT = checkpoint.FILENAME
RESULTS = "results.csv"
HISTORY = "history.csv"
LAYERS = "layers.csv"
TICKET = "ticket.pt"
AGGREGATE = "aggregate.csv"
LOCK = ".lock"
RUNS = "runs"  # a trials/controls folder keeps its runs under runs/<experiment>/trial_<i>/
OWN_FILES = (CONFIG, CHECKPOINT, HISTORY, LAYERS, TICKET, RESULTS)

Kind = Literal["missing", "empty", "run", "group", "other"]


def kind(path: Path) -> Kind:
    """What a folder is: a single run, a trials/controls group, empty, missing or other."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if not path.is_dir():
        return "other"
    if (path / RUNS).is_dir():
        return "group"
    if (path / CHECKPOINT).exists() or (path / CONFIG).exists():
        return "run"
    if not any(p.name != LOCK for p in path.iterdir()):
        return "empty"
    return "other"


def read_meta(path: Path) -> dict[str, Any]:
    """A folder's ``config.json``, or one line saying why it cannot be used."""
    file = Path(path) / CONFIG
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise LotteryError(f"{str(path)!r} has no {CONFIG}: not a lottery run folder") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise LotteryError(f"{str(file)!r} is not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise LotteryError(f"{str(file)!r} is not a lottery config.json")
    return meta


def default_run_dir(name: str, root: Path = RESULTS_ROOT) -> Path:
    """``root/name``, or ``root/name-2``, ``-3``... if that run already exists."""
    candidate, suffix = root / name, 2
    while candidate.exists():
        candidate = root / f"{name}-{suffix}"
        suffix += 1
    return candidate


def check_new(path: Path) -> None:
    """Refuse an existing non-empty folder before any work starts, so nothing is lost."""
    if kind(path) not in ("missing", "empty"):
        raise LotteryError(
            f"{str(path)!r} already exists and is not empty; choose another --out, "
            f"or continue it with --resume {path}"
        )


def check_writable(path: Path) -> None:
    """Refuse an ``--out`` the file system will not accept, before anything is created."""
    path = Path(path)
    ancestor = path
    while not ancestor.exists():
        if len(ancestor.name.encode()) > 255:
            raise LotteryError(f"--out {str(path)!r}: the name {ancestor.name[:20]}... is too long")
        ancestor = ancestor.parent
    if len(str(path.absolute()).encode()) > 4000:
        raise LotteryError(f"--out {str(path)!r}: the path is too long")
    if not ancestor.is_dir():
        raise LotteryError(f"--out {str(path)!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LotteryError(f"--out {str(path)!r}: {str(ancestor)!r} is not writable")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the folder's exclusive lock; a second holder gets one line naming the first's pid."""
    path = Path(path)
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LotteryError(f"cannot lock {str(path)!r}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LotteryError(
                f"{str(path)!r} is in use by another lottery process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def create(path: Path) -> None:
    """Make the folder (or take an empty one): the caller then holds it with ``locked``."""
    check_new(path)
    check_writable(path)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LotteryError(f"cannot create {str(path)!r}: {exc.strerror}") from None


def clear_stray_temp_files(path: Path) -> None:
    """Temporary siblings left by a process killed mid-write (only the tool's own names)."""
    for name in OWN_FILES:
        for stray in Path(path).glob(f".{name}.*{files.TEMP_SUFFIX}"):
            stray.unlink()


def resume_point(path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The verified checkpoint body to continue from, or ``None`` for a run that may start
    again (its folder holds only the ``config.json`` it wrote before its first round finished).
    Anything else is one line saying what is there and what is missing; nothing is touched."""
    path = Path(path)
    if not (path / CHECKPOINT).exists():
        extra = sorted(p.name for p in path.iterdir() if p.name not in (CONFIG, LOCK))
        if extra:
            raise LotteryError(
                f"{str(path)!r} has {', '.join(extra)} but no {CHECKPOINT}: it cannot be "
                "resumed, and nothing in it was changed"
            )
        return None
    body = checkpoint.read(path)
    if body.get("identity") != checkpoint.run_identity(meta):
        changed = _differences(body.get("config", {}), meta["config"])
        what = f" ({changed})" if changed else " (seeds or plugins differ)"
        raise LotteryError(
            f"{str(path / CHECKPOINT)!r} does not belong to {str(path / CONFIG)!r}{what}: "
            "another run's checkpoint or an edited config; nothing was changed"
        )
    return body


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    from .config import NOT_IDENTITY

    keys = sorted((set(saved) | set(current)) - NOT_IDENTITY)
    return ", ".join(
        f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} in config.json"
        for k in keys
        if saved.get(k) != current.get(k)
    )


class RunFolder:
    """Writes one run's files: ``config.json`` once, then the round files after every round."""

    def __init__(self, path: Path, experiment: Experiment):
        self.path = Path(path)
        self.experiment = experiment
        self.meta = experiment.describe()

    def write_config(self) -> None:
        files.write_json(self.path / CONFIG, self.meta)

    def write_round(self, state: RunState) -> None:
        """The checkpoint, then the ticket and the per-round tables, and ``results.csv`` last."""
        from .experiment import results_frame

        experiment = self.experiment
        assert experiment.model is not None
        checkpoint.save(self.path / CHECKPOINT, self.meta, experiment.model.state_dict(), state)
        files.write_csv(self.path / HISTORY, pd.DataFrame(state.history))
        files.write_csv(self.path / LAYERS, pd.DataFrame(state.layers))
        last = max(state.masks)
        files.write_torch(
            self.path / TICKET,
            {
                "round": last,
                "masks": state.masks[last],
                "weights": {k: v.cpu() for k, v in state.rewind_state.items()},
                "model": experiment.config.model,
                "rewind_iter": experiment.config.rewind_iter,
            },
        )
        files.write_csv(self.path / RESULTS, results_frame(state.records))
