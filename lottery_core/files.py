"""Atomic writes: a killed process leaves the old file or the new one, never half of one.

Every file is built in memory, written to a temporary sibling, flushed to disk and renamed into
place with ``os.replace``. A temporary sibling's name proves who wrote it:
``.<name>.lottery-<token>-<check>.tmp``, a random token and a hash of the name and the token, so
:func:`own_temp_files` finds a killed writer's leftovers and never a user's file
(``.results.csv.backup.tmp`` is not one of them). An ``OSError`` while writing (a full disk, a
read-only file system, a folder where the file should be) becomes one ``RunFailed`` line
naming the file and the reason; the file it would have replaced is left as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import WriteFailed

_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_SUFFIX = ".tmp"
TEMP_MARK = "lottery"
_TEMP = re.compile(
    rf"\.(?P<name>.+)\.{TEMP_MARK}-(?P<token>[0-9a-f]{{16}})-(?P<check>[0-9a-f]{{12}})"
    + re.escape(TEMP_SUFFIX)
)


def _check(name: str, token: str) -> str:
    return hashlib.sha256(f"{TEMP_MARK}:{name}:{token}".encode()).hexdigest()[:12]


def temp_name(name: str) -> str:
    """A fresh temporary sibling's name for the file ``name``, carrying its own proof."""
    token = secrets.token_hex(8)
    return f".{name}.{TEMP_MARK}-{token}-{_check(name, token)}{TEMP_SUFFIX}"


def is_own_temp(name: str) -> bool:
    """Whether ``name`` is a temporary file this module made (its hash checks out)."""
    match = _TEMP.fullmatch(name)
    return match is not None and match["check"] == _check(match["name"], match["token"])


def own_temp_files(folder: Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """The temporary files a killed writer left in ``folder`` (for ``names`` only, if given);
    a user's file is never among them, whatever it is called."""
    found = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        if match is None or not is_own_temp(entry.name):
            continue
        if names is not None and match["name"] not in names:
            continue
        if entry.is_file() and not entry.is_symlink():
            found.append(entry)
    return found


def _create_temp(folder: Path, name: str) -> str:
    while True:
        tmp = str(folder / temp_name(name))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        os.close(fd)
        return tmp


_SPECIAL = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def special_kind(where: Path | str | int) -> str | None:
    """What ``where`` (a path, not followed if a link, or an open file descriptor) is in words
    when it is no regular file (``"a FIFO"``, ``"a folder"``...); ``None`` for a regular file.
    Only ``lstat``/``fstat``: a FIFO is never opened, so nothing blocks on one."""
    mode = os.fstat(where).st_mode if isinstance(where, int) else os.lstat(where).st_mode
    if stat.S_ISREG(mode):
        return None
    return next((words for test, words in _SPECIAL if test(mode)), "no regular file")


def _check_target(path: Path) -> None:
    """Refuse, before anything is written, to replace what is not a file (a FIFO, a device, a
    socket, a folder) under ``path``'s name; a link is replaced as itself, as before."""
    try:
        kind = special_kind(path)
    except FileNotFoundError:
        return
    if kind is not None and kind != "a symbolic link":
        raise WriteFailed(path, f"it is {kind}, not a regular file")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary sibling, then rename it into place
    (refused before anything is written where ``path`` is a FIFO, a device, a socket, a
    folder)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _check_target(path)
        tmp = _create_temp(path.parent, path.name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # created 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise WriteFailed(path, reason(exc)) from None
    except BaseException:
        _discard(tmp)
        raise


def reason(exc: OSError) -> str:
    """An ``OSError`` in words: ``No space left on device``, ``Is a directory``..."""
    return exc.strerror or str(exc) or type(exc).__name__


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_all(tmp: str, data: bytes) -> None:
    """``data`` into the file ``tmp``, flushed to the disk (the one place files are written)."""
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: write_all(tmp, data))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_bytes(path, frame.to_csv(index=False).encode())


def write_json(path: Path, value: Any) -> None:
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=False, default=str) + "\n").encode())


def torch_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def write_torch(path: Path, value: Any) -> None:
    write_bytes(path, torch_bytes(value))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def keep_copy(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` (a hard link, or a copy where links are not
    supported), atomically: ``target`` is its old self or ``source``'s bytes, never half."""
    if target.exists() and os.path.samefile(source, target):
        return  # already one file (renaming a link onto its twin would leave the link behind)

    def link(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    atomic_write(target, link)
