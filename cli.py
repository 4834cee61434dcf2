"""The command line from a checkout: ``python cli.py run|plugins|report|export|sweep``.

The commands live in ``lottery_core/cli.py``; the installed ``lottery`` command starts them
through ``lottery_core/entry.py``, the same way as this file. It only makes Ctrl-C stop the
program at once, in one line and exit code 130, while the libraries load (nothing is written
yet), before it imports them; after the command, Ctrl-C is ignored until the process has exited.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

INTERRUPTED = 130


def _stop_while_loading(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C before the CLI runs: nothing is written yet, so stop now, in one line."""
    os.write(2, b"Interrupted.\n")
    os._exit(INTERRUPTED)


if __name__ == "__main__":  # the first thing the program does; an importer keeps its own
    signal.signal(signal.SIGINT, _stop_while_loading)

from lottery_core.cli import main  # noqa: E402

if __name__ == "__main__":
    from lottery_core.entry import run

    run(main)
