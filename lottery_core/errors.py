"""Errors a user can cause or must hear about, shaped for a one-line message at the edge."""

from __future__ import annotations

from pathlib import Path


class LotteryError(Exception):
    """A mistake in input, configuration or environment that the user can fix.

    The CLI prints the message on one line and exits with ``exit_code`` (2: a usage error),
    without a traceback.
    """

    exit_code = 2


class RunFailed(LotteryError):
    """A run stopped for a reason found while training (a diverging loss, memory)."""

    exit_code = 1


class Interrupted(Exception):
    """Ctrl-C during a run: every finished round is already saved in ``run_dir``."""

    def __init__(self, run_dir: Path | None, next_round: int):
        super().__init__(f"interrupted before round {next_round} finished")
        self.run_dir = run_dir
        self.next_round = next_round
