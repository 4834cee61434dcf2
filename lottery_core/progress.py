"""What a run prints while it trains: a row per finished round, and a bar where one can be drawn.

**Rows** (``Report``): with ``lines`` on (the command line always; the Python API with
``log=True``), a ``data:`` line as soon as a run has its data, then a header once and one row per
round as the round is saved, on stdout, flushed at once, so a log written through a file, a pipe
or a batch scheduler shows each round while the job runs. A row is the progress so far (rounds
finished of all a command trains, the time since it started, an estimate of the time left), the
run's name under trials/controls or a branch (``imp trial 0``, ``reinit trial 1``; a sweep's
runs with their grid point), then the round's columns as the final table prints them. Nothing
in a row is an escape sequence or a carriage return.

**The bar** (``Progress``) is drawn only where something can draw one: a terminal (stderr is a
tty) or a Jupyter notebook with ipywidgets; anywhere else (a log, a pipe, a notebook without
ipywidgets) there is none, since its carriage returns would become lines of their own around
the one line an error or Ctrl-C prints. It names the run and the round, and under
trials/controls the estimate for the whole group.

A ``Report`` is per command (a context variable, ``reporting``): the outermost caller that knows
how many rounds it trains says so (``expect``: a group its every run's rounds, a single run its
own), so the estimate is for the whole command. The parallel executor's runs train in Ray
workers; its driver prints their rows (``parallel.ProgressLine``) through the same ``Report``.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from . import paths

# A row's columns after the progress: (name, width, format), as ``tables.summary_table``.
COLUMNS = (
    ("round", 5, "{}"),
    ("remaining", 9, "{:.1f}"),
    ("ES", 6, "{}"),
    ("val", 6, "{:.2f}"),
    ("test", 6, "{:.2f}"),
    ("final_test", 10, "{:.2f}"),
    ("time_s", 7, "{:.1f}"),
)
PROGRESS = (("rounds", 7), ("elapsed", 7), ("ETA", 7))
RUN_WIDTH = 20  # the run column: ``random-prune trial 0`` fits


def duration(seconds: float | None) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour; ``?`` when not known."""
    if seconds is None:
        return "?"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def estimate(done: int, total: int, elapsed: float, since_last: float = 0.0) -> float | None:
    """Seconds left for ``total - done`` rounds at the rate ``done`` took in ``elapsed``, less
    the ``since_last`` seconds the round under way has already run; ``None`` before a round."""
    if done <= 0:
        return None
    return max(0.0, (total - done) * elapsed / done - since_last)


def run_name(run_dir: Path | None) -> str | None:
    """A run's name in rows and on the bar: ``imp trial 0`` for a trials/controls run, ``reinit
    trial 1`` for a control network (its trunk's trial; the row gives its round), ``shuffle trial
    2`` for a branch's network (its own trial); a sweep's runs start with their grid point.
    ``None`` for a single run."""
    if run_dir is None:
        return None
    path = Path(run_dir)
    branch = paths.branch_of(path)
    if branch is not None:
        branch_set, _, trial = branch
        kind = paths.branch_kind_of(branch_set)
        trunk = paths.trial_of(branch_set.parent.parent)
        if trunk is None:  # a branch of a single run
            return f"{kind} trial {trial}"
        group, _, trunk_trial = trunk
        extra = f" #{trial}" if trial else ""
        return f"{_point(group)}{kind} trial {trunk_trial}{extra}"
    found = paths.trial_of(path)
    if found is None:
        return None
    group, experiment, trial = found
    return f"{_point(group)}{experiment} trial {trial}"


def _point(group: Path) -> str:
    """``<point> `` for a sweep's group (``<sweep>/points/<point>``), else nothing."""
    return f"{group.name} " if group.parent.name == paths.POINTS else ""


def _cell(value: Any, fmt: str) -> str:
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def header(named: bool) -> str:
    """The rows' header: the progress columns, ``run`` when rows name their run, the round's."""
    cells = [f"{name:>{width}}" for name, width in PROGRESS]
    if named:
        cells.append(f"{'run':<{RUN_WIDTH}}")
    cells += [f"{name:>{width}}" for name, width, _ in COLUMNS]
    return " ".join(cells) + " flag"


def row(
    done: int, total: int, elapsed: float, eta: float | None, name: str | None,
    record: Mapping[str, Any],
) -> str:  # fmt: skip
    """One round's row (see ``header``); ``record`` is its row of ``results.csv``."""
    cells = [f"{f'{done}/{total}':>7}", f"{duration(elapsed):>7}", f"{duration(eta):>7}"]
    if name is not None:
        cells.append(f"{name:<{RUN_WIDTH}}")
    cells += [f"{_cell(record.get(c, ''), fmt):>{width}}" for c, width, fmt in COLUMNS]
    flag = record.get("flag")
    return " ".join(cells) + (f" {flag}" if isinstance(flag, str) and flag else "")


class Overlay(Protocol):
    """Something drawn in place on a terminal (a bar, the parallel status line): cleared before
    a row is printed and drawn again after it, so the row starts on a clean line."""

    def clear(self) -> Any: ...

    def refresh(self) -> Any: ...


@dataclass
class Plan:
    """The rounds a command trains, and how far it got."""

    total: int
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    last: float = 0.0  # when the last round finished (perf_counter)

    def finish_round(self) -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        self.last = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta(self) -> float | None:
        if not self.done:
            return None
        now = time.perf_counter()
        return estimate(self.done, self.total, self.last - self.started, now - self.last)

    def describe(self) -> str:
        return f"all {self.done}/{self.total} rounds, ETA {duration(self.eta())}"


class Report:
    """A command's output while it trains (see the module's doc): rows on stdout when
    ``lines``, and the plan that every estimate (rows, bars) is made from."""

    def __init__(self, lines: bool = False):
        self.lines = lines
        self.plan: Plan | None = None
        self.data_shown: str | None = None  # the last ``data:`` line's source
        self.header_shown: bool | None = None  # whether the last header had a run column
        self.overlays: list[Overlay] = []
        self.broken = False  # stdout failed: no more rows

    @contextmanager
    def expect(self, rounds: int) -> Iterator[bool]:
        """Estimates count ``rounds`` rounds from now; yields whether this call set the plan
        (``False``: an outer caller, the group, already did)."""
        if self.plan is not None:
            yield False
            return
        self.plan = Plan(rounds)
        try:
            yield True
        finally:
            self.plan = None

    def data(self, source: str) -> None:
        """``data: <source>``, once (again only if another run's data differ)."""
        if self.lines and source and source != self.data_shown:
            self.data_shown = source
            self.write(f"data: {source}")

    def round(self, record: Mapping[str, Any], name: str | None) -> None:
        """A round finished and was saved: count it, and print its row."""
        plan = self.plan
        if plan is None:
            return
        plan.finish_round()
        if self.lines:
            self.show(plan.done, plan.total, plan.elapsed(), plan.eta(), name, record)

    def show(
        self, done: int, total: int, elapsed: float, eta: float | None, name: str | None,
        record: Mapping[str, Any],
    ) -> None:  # fmt: skip
        """Print one row (a header first, when none with this shape was printed yet)."""
        named = name is not None
        if self.header_shown is not named:
            self.header_shown = named
            self.write(header(named))
        self.write(row(done, total, elapsed, eta, name, record))

    def write(self, text: str) -> None:
        """One line on stdout, flushed; a bar or status line on the terminal is cleared first
        and drawn again after. A stdout that cannot be written any more (a pipe whose reader
        left, ``| head``; a full disk) stops the rows, never the training."""
        if self.broken:
            return
        for overlay in self.overlays:
            overlay.clear()
        stream = sys.stdout  # looked up now: pytest's capture, a notebook's, a redirect
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):  # ValueError: a closed file
            self.broken = True
        for overlay in self.overlays:
            overlay.refresh()


_REPORT: ContextVar[Report | None] = ContextVar("lottery_report", default=None)


def current() -> Report | None:
    """The report of the command under way, if any."""
    return _REPORT.get()


@contextmanager
def reporting(lines: bool = False) -> Iterator[Report]:
    """The current report, or a new one for the time of the block; ``lines`` turns its rows on
    (for the block, where an outer caller left them off)."""
    found = _REPORT.get()
    if found is not None:
        before = found.lines
        found.lines = before or lines
        try:
            yield found
        finally:
            found.lines = before
        return
    report = Report(lines)
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


def in_notebook() -> bool:
    """Whether this is a Jupyter kernel (IPython's shell in an ``IPKernelApp``)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # an IPython too old or too odd to ask
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def bar_kind(stream: Any) -> str | None:
    """Where a bar can be drawn: ``"notebook"`` (a Jupyter kernel with ipywidgets),
    ``"terminal"`` (``stream`` is a tty), else ``None``."""
    if in_notebook():
        return "notebook" if importlib.util.find_spec("ipywidgets") is not None else None
    return "terminal" if hasattr(stream, "isatty") and stream.isatty() else None


class Progress:
    """A bar with an ETA over all steps of a run, updated once per evaluation (see the module's
    doc). ``name``: the run's (``run_name``); ``overall``: the report whose plan is bigger than
    this run (a group's), shown beside the run's own estimate."""

    def __init__(
        self,
        total: int,
        enabled: bool = True,
        name: str | None = None,
        overall: Report | None = None,
    ):
        self.name = name
        self.overall = overall
        self.report = current()
        kind = bar_kind(sys.stderr) if enabled else None
        options: dict[str, Any] = {"total": total, "unit": "it", "leave": False}
        if kind == "notebook":
            try:
                from tqdm.notebook import tqdm as notebook_bar

                self.bar = notebook_bar(**options)
            except Exception:  # a widget that cannot be drawn after all: no bar
                kind = None
        if kind != "notebook":
            self.bar = tqdm(
                **options,
                disable=kind is None,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=0.5,
            )
        self.drawn = kind == "terminal" and self.report is not None
        if self.drawn:
            assert self.report is not None
            self.report.overlays.append(self.bar)

    def advance(self, steps: int) -> None:
        self.bar.update(steps)

    def describe(self, round_index: int, val_acc: float) -> None:
        label = f"{self.name} round {round_index}" if self.name else f"round {round_index}"
        self.bar.set_description(label, refresh=False)
        postfix = f"val {val_acc:.2f}%"
        if self.overall is not None and self.overall.plan is not None:
            postfix += f"; {self.overall.plan.describe()}"
        self.bar.set_postfix_str(postfix, refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.drawn and self.report is not None and self.bar in self.report.overlays:
            self.report.overlays.remove(self.bar)
        self.bar.close()
