"""The parallel executor's driver side: units on the engine, one progress line, Ctrl-C.

Both a trials/controls group (``run --workers``) and a sweep hand their units here; each keeps
its own tables and records current through ``on_event``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from .engine import Engine, EngineInterrupted, Event, Outcome, Unit


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressLine:
    """One line across runs: done / running / failed and an ETA, rewritten in place on a
    terminal; elsewhere (a log) printed only when the counts change."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last: tuple[int, ...] | None = None
        self.start_rounds: int | None = None
        self.shown = False

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        if self.start_rounds is None:
            self.start_rounds = event.rounds_done
        line = (
            f"runs: {event.done}/{event.total} done, {event.running} running, "
            f"{event.failed} failed"
            + (f", {event.skipped} skipped" if event.skipped else "")
            + f"; {_duration(event.elapsed)} elapsed, "
            f"ETA {_duration(event.eta(self.start_rounds))}"
        )
        counts = (event.done, event.running, event.failed, event.skipped)
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
            self.shown = True
        elif counts != self.last:
            self.stream.write(line + "\n")
            self.stream.flush()
        self.last = counts

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def execute(
    engine: Engine, units: list[Unit], on_event: Callable[[Event], None], progress: bool
) -> dict[str, Outcome] | None:
    """Run ``units`` on a started ``engine``, the progress line and ``on_event`` told of every
    change; the outcomes, or ``None`` on Ctrl-C (the running units cancelled, every finished
    round on disk)."""
    line = ProgressLine(progress)

    def both(event: Event) -> None:
        line(event)
        on_event(event)

    try:
        return engine.run(units, both)
    except EngineInterrupted:
        return None
    finally:
        line.close()
