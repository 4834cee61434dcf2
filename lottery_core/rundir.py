"""The run folder: its layout, its kinds, its ``config.json``, and how a run starts or resumes.

One place knows every file name. A run folder is created once and never overwritten or
deleted by the tool: a run holds an exclusive OS lock on it for its whole life (released by the
kernel if the process is killed), writes its files atomically (``files``), the checkpoint first
and ``results.csv`` last, so a round listed there has all its other files in place.

The checkpoint is the folder's record of truth: it proves its own bytes (a checksum) and whose
it is (the run's identity and the ``config.json`` it was written beside). The tables beside it
(``results.csv``, ``history.csv``, ``layers.csv``, ``ticket.pt``) must say what it says, for its
last round or the one before (a run stopped between writing the checkpoint and the tables);
anything else is refused with one line naming the file, and nothing in the folder is changed.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from . import checkpoint, files
from .errors import LotteryError, WriteFailed, command
from .paths import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    LAYERS,
    LOCK,
    MAIN,
    OWN_FILES,
    PREVIOUS,
    RESULTS,
    RESULTS_ROOT,
    RUNS,
    SET_ASIDE,
    SWEEP,
    TABLES,
    TICKET,
    TRIAL_PREFIX,
    trained_file,
)
from .records import results_frame
from .state import RunState

TICKET_SHAPE_KEYS = {"input_shape", "num_classes"}  # absent from tickets of older runs
EXTENDED = "extended"  # config.json's record of each ``run --resume DIR --rounds N``
NAME_MAX = 255
PATH_MAX = 4096

Kind = Literal["missing", "empty", "run", "group", "sweep", "other"]


def kind(path: Path) -> Kind:
    """What a folder is: a single run, a trials/controls group, a sweep, empty, missing or
    other."""
    path = Path(path)
    try:
        if not path.exists():
            return "missing"
        if not path.is_dir():
            return "other"
        if (path / SWEEP).is_file():
            return "sweep"
        if (path / RUNS).is_dir():
            return "group"
        if (path / CHECKPOINT).exists() or (path / CONFIG).exists():
            return "run"
        if not any(p.name != LOCK for p in path.iterdir()):
            return "empty"
    except OSError:  # a name the file system refuses (too long...): nothing is there
        return "missing"
    return "other"


def not_a_group(path: Path, verb: str) -> None:
    """One line if ``path`` is a trials/controls folder where one run is wanted: ``verb`` (say
    "export") one of its runs, named."""
    if kind(path) == "group":
        example = Path(path) / RUNS / MAIN / f"{TRIAL_PREFIX}0"
        raise LotteryError(
            f"{str(path)!r} is a trials/controls folder; {verb} one of its runs, e.g. "
            f"{str(example)!r}"
        )


def read_meta(path: Path) -> dict[str, Any]:
    """A folder's ``config.json``, or one line saying why it cannot be used."""
    file = Path(path) / CONFIG
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        if (Path(path) / CHECKPOINT).exists():
            raise LotteryError(
                f"{str(path)!r} has {CHECKPOINT} but no {CONFIG}: its run cannot be verified; "
                "nothing was changed"
            ) from None
        raise LotteryError(f"{str(path)!r} has no {CONFIG}: not a lottery run folder") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise LotteryError(f"{str(file)!r} is not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise LotteryError(f"{str(file)!r} is not a lottery config.json")
    return meta


def read_group_meta(path: Path) -> dict[str, Any]:
    """A trials/controls folder's ``config.json`` (``read_meta``), checked to be a group's."""
    meta = read_meta(path)
    group = meta.get("group")
    if not isinstance(group, dict) or not {"trials", "controls"} <= set(group):
        raise LotteryError(f"{str(path)!r} is not a lottery trials/controls folder")
    return meta


def default_run_dir(name: str, root: Path = RESULTS_ROOT) -> Path:
    """``root/name``, or ``root/name-2``, ``-3``... if that run already exists."""
    candidate, suffix = root / name, 2
    while candidate.exists():
        candidate = root / f"{name}-{suffix}"
        suffix += 1
    return candidate


def check_new(path: Path) -> None:
    """Refuse an ``--out`` that cannot be created or is taken, before any work starts."""
    check_writable(path)
    if kind(path) not in ("missing", "empty"):
        raise LotteryError(
            f"{str(path)!r} already exists and is not empty; choose another --out, "
            f"or continue it with: {command('run', '--resume', path)}"
        )


def check_writable(path: Path) -> None:
    """Refuse an ``--out`` the file system will not accept, before anything is created."""
    path = Path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise LotteryError(
                f"--out {str(path)[:40]!r}...: the name {part[:20]}... is "
                f"{len(os.fsencode(part))} bytes long; the file system allows {NAME_MAX}"
            )
    if len(os.fsencode(path.absolute())) >= PATH_MAX:
        raise LotteryError(
            f"--out {str(path)[:40]!r}...: the path is longer than the {PATH_MAX} bytes "
            "the file system allows"
        )
    ancestor = path
    try:
        while not ancestor.exists():
            ancestor = ancestor.parent
        is_dir = ancestor.is_dir()
    except OSError as exc:
        raise LotteryError(f"--out {str(path)!r}: {files.reason(exc)}") from None
    if not is_dir:
        raise LotteryError(f"--out {str(path)!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        why = "is not writable"
        try:
            if os.statvfs(ancestor).f_flag & os.ST_RDONLY:
                why = "is on a read-only file system"
        except OSError:
            pass
        raise LotteryError(f"--out {str(path)!r}: {str(ancestor)!r} {why}")


def _open_lock(path: Path, create: bool) -> int | None:
    """The folder's ``.lock``, opened without following a symbolic link and only if it is a
    plain file with one name (never a user's file it points to); ``None``: there is none."""
    file = Path(path) / LOCK
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(file, flags | (os.O_CREAT if create else 0), 0o644)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not create:
            return None
        if os.path.islink(file):
            raise LotteryError(
                f"{str(file)!r} is a symbolic link, not this tool's lock file; remove it "
                "(nothing was changed)"
            ) from None
        raise LotteryError(f"cannot lock {str(path)!r}: {files.reason(exc)}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "is not a plain file" if not stat.S_ISREG(info.st_mode) else "has other names"
        raise LotteryError(
            f"{str(file)!r} {what}, not this tool's lock file; remove it (nothing was changed)"
        )
    return fd


def _in_use(path: Path, fd: int) -> LotteryError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    return LotteryError(
        f"{str(path)!r} is in use by another lottery process (pid {holder}); "
        "wait for it to finish or stop it"
    )


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the folder's exclusive lock; a second holder gets one line naming the first's pid."""
    path = Path(path)
    fd = _open_lock(path, create=True)
    assert fd is not None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(path, fd) from None
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)  # then cut: the file never reads empty to a second process
        os.ftruncate(fd, len(pid))
        yield
    finally:
        os.close(fd)


def check_not_held(path: Path) -> None:
    """One line naming the holder's pid if another process holds ``path``'s lock (a folder
    whose run is starting, before it holds anything else); else nothing."""
    try:
        fd = _open_lock(Path(path), create=False)
    except LotteryError:
        return
    if fd is None:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(Path(path), fd) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def create(path: Path) -> None:
    """Make the folder (or take an empty one): the caller then holds it with ``locked``."""
    check_new(path)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LotteryError(f"cannot create {str(path)!r}: {files.reason(exc)}") from None


def clear_stray_temp_files(path: Path) -> None:
    """Temporary siblings of the run's files left by a process killed mid-write: only names
    that prove they are the tool's (``files.own_temp_files``), never a user's file."""
    for stray in files.own_temp_files(Path(path), OWN_FILES):
        stray.unlink(missing_ok=True)


# -- verifying what a folder holds ---------------------------------------------------------


def as_written(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """``meta`` (a ``config.json``), then, newest first, what it held before each extension it
    records (``run --resume DIR --rounds N``, ``runs.extend``: ``config.rounds`` set from
    ``from`` to ``to`` and ``{"from", "to", "at"}`` appended to ``extended``). A record that
    does not lead to the rounds after it ends the list: only the tool's own extensions count."""
    found = [meta]
    history = meta.get(EXTENDED)
    if not isinstance(history, list) or not isinstance(meta.get("config"), dict):
        return found
    current = meta
    for i in range(len(history) - 1, -1, -1):
        entry = history[i]
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("from"), int)
            and entry.get("to") == current["config"].get("rounds")
        ):
            break
        earlier = {k: v for k, v in current.items() if k != EXTENDED}
        earlier["config"] = {**current["config"], "rounds": entry["from"]}
        if i:
            earlier[EXTENDED] = history[:i]
        found.append(earlier)
        current = earlier
    return found


def _written_beside(body: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` (``meta`` or, for a checkpoint written before an extension, what it
    held then) that checkpoint ``body`` was written beside; else the closest, to name what
    differs."""
    candidates = as_written(meta)
    saved = body.get("meta")
    for candidate in candidates:
        if body.get("identity") == checkpoint.run_identity(candidate) and (
            saved is None or saved == checkpoint.canonical(candidate)
        ):
            return candidate
    rounds = body.get("config", {}).get("rounds") if isinstance(body.get("config"), dict) else None
    same = [c for c in candidates if c["config"].get("rounds") == rounds]
    return same[0] if same else meta


def verified(path: Path, meta: dict[str, Any], name: str = CHECKPOINT) -> dict[str, Any]:
    """The body of checkpoint ``name`` if it is whole and belongs to ``meta`` (the folder's
    ``config.json``, or what it held before an extension it records: ``as_written``); else one
    line naming what differs."""
    path = Path(path)
    body = checkpoint.read(path, name)
    meta = _written_beside(body, meta)
    if body.get("identity") != checkpoint.run_identity(meta):
        changed = _differences(body.get("config", {}), meta["config"], name)
        what = f" ({changed})" if changed else " (seeds or plugins differ)"
        raise LotteryError(
            f"{str(path / name)!r} does not belong to {str(path / CONFIG)!r}{what}: "
            "another run's checkpoint or an edited config"
        )
    saved, current = body.get("meta"), checkpoint.canonical(meta)
    if saved is not None and saved != current:
        keys = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
        if "config" in keys:
            keys.remove("config")
            keys += [
                f"config.{k}"
                for k in sorted(set(saved["config"]) | set(current["config"]))
                if saved["config"].get(k) != current["config"].get(k)
            ]
        raise LotteryError(
            f"{str(path / CONFIG)!r} was changed after {str(path / name)!r} was written "
            f"({', '.join(keys)} {'differs' if len(keys) == 1 else 'differ'})"
        )
    return body


def _differences(saved: dict[str, Any], current: dict[str, Any], name: str) -> str:
    from .config import NOT_IDENTITY

    keys = sorted((set(saved) | set(current)) - NOT_IDENTITY)
    return ", ".join(
        f"{k}: {saved.get(k)!r} in {name}, {current.get(k)!r} in config.json"
        for k in keys
        if saved.get(k) != current.get(k)
    )


def resume_point(path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The verified checkpoint body to continue from, or ``None`` for a run that may start
    again (its folder holds only the ``config.json`` it wrote before its first round finished).
    Anything else is one line saying what is there and what is wrong; nothing is touched."""
    path = Path(path)
    if not (path / CHECKPOINT).exists():
        extra = sorted(p.name for p in path.iterdir() if p.name not in (CONFIG, LOCK))
        if extra:
            raise LotteryError(
                f"{str(path)!r} has {', '.join(extra)} but no {CHECKPOINT}: it cannot be "
                f"resumed{fallback_hint(path, meta)}; nothing in it was changed"
            )
        return None
    try:
        body = verified(path, meta)
    except LotteryError as exc:
        raise LotteryError(f"{exc}{fallback_hint(path, meta)}; nothing was changed") from None
    check_tables(path, body)
    return body


def fallback_hint(path: Path, meta: dict[str, Any]) -> str:
    """How to continue from ``checkpoint.prev.pt``, if it is there, whole and this run's."""
    if not (Path(path) / PREVIOUS).exists():
        return ""
    try:
        previous = verified(path, meta, PREVIOUS)
    except LotteryError:
        return ""
    done = previous["next_round"]
    return (
        f"; {PREVIOUS} (rounds 0-{done - 1}) is intact: to redo round {done} from it, run: "
        f"{command('run', '--resume', path, '--from-previous')}"
    )


def previous_point(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The verified body of ``checkpoint.prev.pt``, for ``--from-previous``: only when
    ``checkpoint.pt`` is missing or unusable, and the tables do not contradict it."""
    path = Path(path)
    if (path / CHECKPOINT).exists():
        try:
            verified(path, meta)
        except LotteryError:
            pass
        else:
            raise LotteryError(
                f"{str(path / CHECKPOINT)!r} is intact: resume without --from-previous"
            )
    if not (path / PREVIOUS).exists():
        raise LotteryError(f"{str(path)!r} has no {PREVIOUS} to fall back to")
    body = verified(path, meta, PREVIOUS)
    check_tables(path, body, ahead=True)
    return body


def set_aside(path: Path) -> Path | None:
    """Move an unusable ``checkpoint.pt`` to a free ``checkpoint.damaged[-N].pt``: kept, never
    deleted, and out of the way of the checkpoint the run writes next."""
    current = Path(path) / CHECKPOINT
    if not current.exists():
        return None
    target, n = Path(path) / f"{SET_ASIDE}.pt", 2
    while target.exists():
        target, n = Path(path) / f"{SET_ASIDE}-{n}.pt", n + 1
    try:
        os.rename(current, target)
    except OSError as exc:
        raise LotteryError(f"cannot move {str(current)!r} aside: {files.reason(exc)}") from None
    return target


def check_tables(
    path: Path, body: dict[str, Any], ahead: bool = False, names: tuple[str, ...] = TABLES
) -> None:
    """Each table in ``path`` must hold what the checkpoint ``body`` says, for its last round
    or the one before; with ``ahead`` (falling back to the previous checkpoint) also one round
    more, of which only the rounds the checkpoint knows are compared. A missing table is fine:
    it is written anew from the checkpoint."""
    path = Path(path)
    done = int(body["next_round"])
    counts = [k for k in (done - 1, done) if k >= 1]
    problems = {
        RESULTS: lambda file: _csv_matches(file, body["records"], counts, done, ahead),
        HISTORY: lambda file: _csv_matches(file, body["history"], counts, done, ahead),
        LAYERS: lambda file: _csv_matches(file, body["layers"], counts, done, ahead),
        TICKET: lambda file: _ticket_matches(file, body, counts, done, ahead),
    }
    for name in names:
        file = path / name
        if file.exists() and not problems[name](file):
            raise LotteryError(
                f"{str(file)!r} does not match {str(path / CHECKPOINT)!r}: it was damaged, "
                f"edited or copied from another run; move it aside and run again (it is written "
                "anew from the checkpoint); nothing was changed"
            )


def tables_current(path: Path, body: dict[str, Any]) -> bool:
    """Whether every table is there and at the checkpoint's last round (after ``check_tables``;
    a run stopped between its checkpoint and its tables is not)."""
    done = int(body["next_round"])
    if not all((Path(path) / name).exists() for name in TABLES):
        return False
    return _csv_matches(Path(path) / RESULTS, body["records"], [done], done, False)


def _frame(rows: list[dict], results: bool = False) -> pd.DataFrame:
    """``rows`` as the CSV reader returns them once written (as ``results.csv`` with
    ``results``), so files compare like for like. No rows (a branch network's rounds before
    its own) is an empty frame, which no table on disk equals."""
    if not rows:
        return pd.DataFrame()
    return _parse((results_frame(rows) if results else pd.DataFrame(rows)).to_csv(index=False))


def _parse(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))  # floats read back exactly (pandas >= 2)


def _csv_matches(file: Path, rows: list[dict], counts: list[int], done: int, ahead: bool) -> bool:
    try:
        found = _parse(file.read_text())
        rounds = found["round"]
    except Exception:  # unreadable, truncated into nothing, no round column: not ours
        return False
    for k in counts:
        if found.equals(_frame([r for r in rows if r["round"] < k], file.name == RESULTS)):
            return True
    if ahead and len(found) and rounds.max() == done:
        known = found[rounds < done].reset_index(drop=True)
        return known.equals(_frame([r for r in rows if r["round"] < done], file.name == RESULTS))
    return False


def _ticket_matches(
    file: Path, body: dict[str, Any], counts: list[int], done: int, ahead: bool
) -> bool:
    try:
        ticket = torch.load(file, map_location="cpu", weights_only=True)
        last = ticket["round"]
        if ahead and last == done:
            return True  # the round the damaged checkpoint had: written anew
        if last + 1 not in counts:
            return False
        masks = {
            name: checkpoint.unpack_mask(packed) for name, packed in body["masks"][last].items()
        }
        config = body["config"]
        return (
            set(ticket) - TICKET_SHAPE_KEYS == {"round", "masks", "weights", "model", "rewind_iter"}
            and ticket["model"] == config["model"]
            and ticket["rewind_iter"] == config["rewind_iter"]
            and _same(ticket["masks"], masks)
            and _same(ticket["weights"], body["rewind_state"])
        )
    except Exception:  # unreadable or not shaped like a ticket: not ours
        return False


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def tables_of(body: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``results``, ``history`` and ``layers`` of a checkpoint body, as their CSV files read."""
    return _frame(body["records"], True), _frame(body["history"]), _frame(body["layers"])


# -- writing -------------------------------------------------------------------------------


class RunFolder:
    """Writes one run's files: ``config.json`` once, then the round files after every round."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta  # what config.json holds (``Experiment.describe``)
        self.saved_rounds = 0  # rounds the folder's checkpoint holds, as far as this run knows

    def write_config(self) -> None:
        files.write_json(self.path / CONFIG, self.meta)

    def write_round(self, state: RunState, model_state: dict[str, torch.Tensor]) -> None:
        """The checkpoint (the one it replaces kept as ``checkpoint.prev.pt``), then the ticket
        and the per-round tables, and ``results.csv`` last."""
        checkpoint.save(self.path / CHECKPOINT, self.meta, model_state, state)
        self.saved_rounds = state.next_round
        if self.meta["config"].get("keep_trained"):
            self.write_trained(state.next_round - 1, model_state)
        self.write_tables(state)

    def write_trained(self, round_index: int, model_state: dict[str, torch.Tensor]) -> None:
        """``trained/round_<r>.pt``: round r's trained ``state_dict`` (``keep_trained``),
        before the tables, so a round ``results.csv`` lists has it."""
        file = trained_file(self.path, round_index)
        try:
            file.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise WriteFailed(file.parent, files.reason(exc)) from None
        state = {k: v.detach().cpu() for k, v in model_state.items()}
        files.write_torch(file, {"round": round_index, "state_dict": state})

    def write_tables(self, state: RunState) -> None:
        files.write_csv(self.path / HISTORY, pd.DataFrame(state.history))
        files.write_csv(self.path / LAYERS, pd.DataFrame(state.layers))
        last = max(state.masks)
        files.write_torch(
            self.path / TICKET,
            {
                "round": last,
                "masks": state.masks[last],
                "weights": {k: v.cpu() for k, v in state.rewind_state.items()},
                "model": self.meta["config"]["model"],
                "rewind_iter": self.meta["config"]["rewind_iter"],
                # what load_ticket needs to build the model from the file alone
                **{key: self.meta.get(key) for key in TICKET_SHAPE_KEYS},
            },
        )
        files.write_csv(self.path / RESULTS, results_frame(state.records))


def trained_weights(
    path: Path, body: dict[str, Any], round_index: int
) -> dict[str, torch.Tensor] | None:
    """Round r's trained parameters (``weight_orig``, biases; no masks): from
    ``trained/round_<r>.pt`` where the run kept them (``keep_trained``), else from the verified
    checkpoint ``body`` when r is its last round; ``None`` if neither has them."""
    file = trained_file(path, round_index)
    if not file.exists():
        if round_index == int(body["next_round"]) - 1:
            state = body["model"]
        else:
            return None
    else:
        try:
            saved = torch.load(file, map_location="cpu", weights_only=True)
            state = saved["state_dict"]
            ok = saved["round"] == round_index and isinstance(state, dict)
        except Exception:  # unreadable or not shaped like ours
            ok = False
        if not ok:
            raise LotteryError(f"{str(file)!r} is not round {round_index}'s trained weights")
    return {k: v for k, v in state.items() if not k.endswith("weight_mask")}
