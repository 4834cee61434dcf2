"""Errors a user can cause or must hear about, shaped for a one-line message at the edge."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

INSTALLED = "lottery"


def program() -> str:
    """How the user started the program, to repeat in commands to paste: the installed
    ``lottery`` command, or else the checkout's ``python cli.py`` (also for in-process callers)."""
    return INSTALLED if Path(sys.argv[0]).stem == INSTALLED else "python cli.py"


def command(*words: object) -> str:
    """A command to print for the user to paste: the program as started and ``words``, each
    quoted for the shell, so a folder named ``run;touch x`` stays one argument."""
    return " ".join([program(), *(shlex.quote(str(w)) for w in words)])


class LotteryError(Exception):
    """A mistake in input, configuration or environment that the user can fix.

    The CLI prints the message on one line and exits with ``exit_code`` (2: a usage error),
    without a traceback.
    """

    exit_code = 2


class PluginError(LotteryError):
    """A plugin raised, or handed the core something it cannot use: one line naming the plugin
    and the name it registered, exit 2, and every finished round kept."""


class RunFailed(LotteryError):
    """A run stopped for a reason found while training (a diverging loss, memory)."""

    exit_code = 1


class WriteFailed(RunFailed):
    """A file could not be written (a full disk, a read-only file system...): the message names
    the file and the reason; the file it would have replaced is left as it was."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"could not write {str(path)!r}: {reason}")
        self.path = Path(path)
        self.reason = reason


class Interrupted(Exception):
    """Ctrl-C during a run: every saved round is in ``run_dir`` (``None``: nothing was kept);
    ``kept`` says what is there, when "rounds before ``next_round``" would not."""

    def __init__(self, run_dir: Path | None, next_round: int, kept: str | None = None):
        super().__init__(f"interrupted before round {next_round} finished")
        self.run_dir = run_dir
        self.next_round = next_round
        self.kept = kept or f"rounds before round {next_round} are saved in {run_dir}"


class Stopped(LotteryError):
    """Ctrl-C while units ran in parallel (a sweep, ``run --workers``): what finished is saved;
    the message says how to resume."""

    exit_code = 130
