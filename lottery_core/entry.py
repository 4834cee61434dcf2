"""The installed ``lottery`` command (``[project.scripts]``): Ctrl-C answered from the start.

The console script imports this module and calls :func:`main`; nothing here imports more than
``os`` and ``signal`` at module level (nor does ``lottery_core/__init__.py``), so the handler is
on a moment after the interpreter's own start-up, before click and the CLI load, as the
checkout's ``cli.py`` does it. While they load, Ctrl-C stops the program at once, in one line
and exit code 130 (nothing is written yet); then ``lottery_core.cli.main`` answers it (the first
Ctrl-C stops the run, later ones are ignored); once the command is over, Ctrl-C is ignored until
the process has exited, so one pressed during the interpreter's teardown (torch's and Ray's
exit handlers) adds nothing to the one line and changes no exit code.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

INTERRUPTED = 130


def stop_while_loading(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C before the CLI runs: nothing is written yet, so stop now, in one line."""
    os.write(2, b"Interrupted.\n")
    os._exit(INTERRUPTED)


def main() -> None:
    """``lottery ...``: the SIGINT handler first, then the CLI."""
    signal.signal(signal.SIGINT, stop_while_loading)
    from lottery_core.cli import main as cli_main

    run(cli_main)


def run(cli_main: Callable[..., None]) -> None:
    """``cli_main`` (``lottery_core.cli.main``) as a program's whole life: it keeps its Ctrl-C
    handling to the end, and after it every Ctrl-C is ignored, at the system's level so that
    it stays so through the interpreter's teardown (Python gives its own handlers back to the
    system's default there, which would kill the process by the signal)."""
    try:
        cli_main(restore=False)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
