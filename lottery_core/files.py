"""Atomic writes: a killed process leaves the old file or the new one, never half of one.

Every file is built in memory, written to a temporary sibling, flushed to disk and renamed into
place with ``os.replace``. An ``OSError`` while writing (a full disk, a read-only file system, a
folder where the file should be) becomes one ``RunFailed`` line naming the file and the reason;
the file it would have replaced is left as it was.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import WriteFailed

_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary sibling, then rename it into place."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
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
