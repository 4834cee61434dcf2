"""The run folder: created once, never overwritten, written atomically.

Every file goes through a temporary sibling and ``os.replace``, so a killed process leaves either
the old file or the new one, never a truncated one.
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

from .errors import LotteryError

RESULTS_ROOT = Path("results")
_UMASK = os.umask(0)
os.umask(_UMASK)


def default_run_dir(name: str, root: Path = RESULTS_ROOT) -> Path:
    """``root/name``, or ``root/name-2``, ``-3``... if that run already exists."""
    candidate, suffix = root / name, 2
    while candidate.exists():
        candidate = root / f"{name}-{suffix}"
        suffix += 1
    return candidate


def check_new(path: Path) -> None:
    """Refuse an existing non-empty folder before any work starts, so nothing is lost."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise LotteryError(
            f"{str(path)!r} already exists and is not empty; choose another --out, "
            f"or continue it with --resume {path}"
        )


def create(path: Path) -> Path:
    check_new(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary sibling, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
