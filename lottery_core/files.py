"""Atomic file writes: a killed process leaves the old file or the new one, never half of one.

Every file goes through a temporary sibling and ``os.replace``. An ``OSError`` while writing
(a full disk, a read-only file system) becomes one ``RunFailed`` line naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import RunFailed

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
        raise RunFailed(f"could not write {str(path)!r}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # torch.save reports a failed write as a RuntimeError
        _discard(tmp)
        if "write" in str(exc).lower() or "file" in str(exc).lower():
            raise RunFailed(f"could not write {str(path)!r}: {exc}".splitlines()[0]) from None
        raise
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_json(path: Path, value: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            json.dump(value, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")

    atomic_write(path, write)


def write_torch(path: Path, value: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(value, tmp))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
