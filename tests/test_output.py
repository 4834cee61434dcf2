"""What a run prints while it trains: the ``data:`` line first, a row per round as the round is
saved (named by its run under trials/controls, with an estimate for the whole command), flushed
to a log that is not a terminal; a bar only where one can be drawn (``lottery_core.progress``)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from lottery_core import paths, progress
from lottery_core.api import run_experiment
from lottery_core.config import make_config
from lottery_core.engine import Event, Outcome, Unit
from lottery_core.parallel import ProgressLine

from .conftest import ROOT, TINY

FAST = ["--dataset", "mnist-sample", "--iterations", "100", "--eval-every", "50", "--threads",
        "1", "--quiet"]  # fmt: skip
DURATION = r"(\d+:)?\d+:\d\d"  # m:ss or h:mm:ss
ROW = re.compile(rf"^\s*(\d+)/(\d+)\s+({DURATION})\s+({DURATION})\s+(.*)$")


def rows_of(stdout: str) -> list[re.Match]:
    """The rows printed while training: ``done/total elapsed ETA [run] round ...``."""
    return [m for m in map(ROW.match, stdout.splitlines()) if m]


def test_data_first_then_a_row_per_round_as_it_is_saved(invoke, tmp_path, monkeypatch):
    """Each row is written (and flushed) once its round is on disk, while the run goes on; the
    final table and the folder follow as before; ``data:`` is printed once, first."""
    seen: list[tuple[str, int]] = []  # each line written, and the rounds saved by then
    write = progress.Report.write

    def watched(self, text):
        results = tmp_path / "run" / paths.RESULTS
        seen.append((text, len(pd.read_csv(results)) if results.exists() else 0))
        write(self, text)

    monkeypatch.setattr(progress.Report, "write", watched)
    result = invoke("run", *FAST, "--rounds", "3", "--out", "run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "data: " + "5,000-digit MNIST sample, NOT full MNIST (3500 train, " \
                                   "500 val, 1000 test)"  # fmt: skip
    assert result.stdout.count("data: ") == 1
    assert lines[1].split() == ["rounds", "elapsed", "ETA", "round", "remaining", "ES", "val",
                                "test", "final_test", "time_s", "flag"]  # fmt: skip
    rows = rows_of(result.stdout)
    assert [(m.group(1), m.group(2)) for m in rows] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert [m.group(7).split()[0] for m in rows] == ["0", "1", "2"]  # the round column
    assert [m.group(7).split()[1] for m in rows] == ["100.0", "80.0", "64.1"]  # remaining
    assert rows[-1].group(5) == "0:00"  # nothing left
    assert lines[2:5] == [m.group(0) for m in rows]  # right after the header
    # Printed as each round was saved: row k with k rounds in results.csv, before the next.
    assert [saved for text, saved in seen if ROW.match(text)] == [1, 2, 3]
    # Then the final table, as before, and where the results are.
    assert lines[5].split()[:2] == ["round", "remaining"] and len(lines) == 5 + 4 + 1
    assert lines[-1] == "results written to run"
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    assert "\r" not in result.stderr and "\x1b" not in result.stderr  # no bar off a terminal


def test_a_group_names_every_run_and_estimates_the_whole_group(invoke):
    """Trials and controls: each row names its run (``imp trial 1``; a control network by its
    kind and its trunk's trial, the row giving its round) and counts rounds of the whole
    group, whose estimate reaches 0:00 at the last."""
    result = invoke("run", *FAST, "--iterations", "50", "--rounds", "2", "--trials", "2",
                    "--controls", "--out", "group")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data: 5,000-digit MNIST sample")
    assert lines[1].split()[:5] == ["rounds", "elapsed", "ETA", "run", "round"]
    rows = rows_of(result.stdout)
    named = [tuple(re.split(r"\s{2,}", m.group(7).strip())[:2]) for m in rows]  # run, round
    assert named == [("imp trial 0", "0"), ("imp trial 0", "1"), ("reinit trial 0", "1"),
                     ("random-prune trial 0", "1"), ("imp trial 1", "0"), ("imp trial 1", "1"),
                     ("reinit trial 1", "1"), ("random-prune trial 1", "1")]  # fmt: skip
    assert [m.group(1) for m in rows] == [str(i) for i in range(1, 9)]
    assert {m.group(2) for m in rows} == {"8"}  # 2 x (2 IMP rounds + 2 control networks)
    assert rows[-1].group(5) == "0:00"
    assert result.stdout.count("data: ") == 1
    assert "[imp]" in result.stdout and "results written to group" in result.stdout


def test_the_python_api_prints_rows_only_when_asked(tmp_path, plugins, capsys):
    config = make_config(**TINY, rounds=2, threads=1)
    run_experiment(config, out=tmp_path / "quiet", progress=False, plugins=plugins)
    assert capsys.readouterr().out == ""
    run_experiment(config, out=tmp_path / "logged", progress=False, plugins=plugins, log=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("data: 5,000-digit MNIST sample") and out[1].split()[0] == "rounds"
    assert [m.group(1) + "/" + m.group(2) for m in rows_of("\n".join(out))] == ["1/2", "2/2"]
    assert len(out) == 4


def group_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A group's IMP run and one control network, with their rows on disk."""
    group = tmp_path / "group"
    trunk = paths.trial_dir(group, "imp", 1)
    trunk.mkdir(parents=True)
    pd.DataFrame({"round": [0, 1], "remaining": [100.0, 80.0], "ES": [150, 100],
                  "val": [91.0, 92.0], "test": [92.5, 93.25], "final_test": [92.0, 93.0],
                  "time_s": [1.0, 1.2], "flag": [None, "chance"]}
                 ).to_csv(trunk / paths.RESULTS, index=False)  # fmt: skip
    network = paths.branch_dir(paths.branch_set(trunk, "reinit", {}, 0), 1, 0)
    network.mkdir(parents=True)
    pd.DataFrame({"round": [1], "remaining": [80.0], "ES": [50], "val": [90.0], "test": [90.5],
                  "final_test": [90.0], "time_s": [0.5], "flag": [None]}
                 ).to_csv(network / paths.RESULTS, index=False)  # fmt: skip
    return group, trunk


def test_rows_of_parallel_units_name_their_run_even_when_quiet(tmp_path, capsys):
    """The driver of ``run --workers`` and sweeps prints each round a worker saved, read from
    its run's ``results.csv``, named by the run, with the estimate over all units; ``--quiet``
    (no status line) keeps the rows; a failed unit is one line naming its run."""
    group, trunk = group_folder(tmp_path)
    rows = {"main": 0, "control": 0}
    main = Unit("m", "runs/imp/trial_1", "lottery_core.group_units:advance_unit",
                {"out": str(group), "trial": 1, "experiment": "imp", "cwd": "."},
                rounds=2, count=lambda: rows["main"])  # fmt: skip
    network = {"trunk": str(trunk), "kind": "reinit", "options": {}, "seed": 0,
               "round_index": 1, "trial": 0, "cwd": "."}  # fmt: skip
    control = Unit("c", "runs/imp/trial_1/branches/x", "lottery_core.branches:branch_unit",
                   network, count=lambda: rows["control"])  # fmt: skip

    def event(elapsed, running, ended=None, outcome=None):
        return Event(0, len(running), 0, 0, 2, 0, 4, elapsed, outcome, ended, running)

    with progress.reporting(lines=True):
        line = ProgressLine(enabled=False)
        line(event(0.5, [main, control]))
        rows["main"] = 2  # both rounds saved between two events
        line(event(10.0, [main, control]))
        rows["control"] = 1
        line(event(15.0, [], control, Outcome("c", True)))
        trial_0 = {"out": str(group), "trial": 0, "experiment": "imp", "cwd": "."}
        other = Unit("o", "runs/imp/trial_0", "lottery_core.group_units:advance_unit", trial_0)
        line(event(16.0, [], other, Outcome("o", False, "the loss became nan")))
        line.close()
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].split()[:4] == ["rounds", "elapsed", "ETA", "run"]
    assert re.match(r"\s*1/4\s+0:10\s+0:30 imp trial 1\s+0\s+100.0\s+150\s+91.00\s+92.50", lines[1])
    assert re.match(r"\s*2/4\s+0:10\s+0:10 imp trial 1\s+1\s+80.0 .* chance$", lines[2])
    assert re.match(r"\s*3/4\s+0:15\s+0:05 reinit trial 1\s+1\s+80.0\s+50", lines[3])
    assert lines[4] == "imp trial 0 failed: the loss became nan"
    assert len(lines) == 5 and out.err == ""  # quiet: no status line


def test_a_row_on_a_terminal_clears_the_bar_and_draws_it_again(capsys):
    calls = []
    overlay = SimpleNamespace(clear=lambda: calls.append("clear"),
                              refresh=lambda: calls.append("refresh"))  # fmt: skip
    report = progress.Report(lines=True)
    report.overlays.append(overlay)
    report.write("a row")
    assert calls == ["clear", "refresh"] and capsys.readouterr().out == "a row\n"


def test_a_stdout_that_cannot_be_written_stops_the_rows_not_the_run(monkeypatch):
    """``lottery run ... | head -3``: once the reader has left, rows are dropped quietly."""

    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Gone())
    report = progress.Report(lines=True)
    with report.expect(2):
        report.data("somewhere")
        report.round({"round": 0}, None)
        report.round({"round": 1}, None)
        assert report.broken and report.plan is not None and report.plan.done == 2


def test_a_bar_only_where_one_can_be_drawn(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    assert progress.bar_kind(Stream(True)) == "terminal"
    assert progress.bar_kind(Stream(False)) is None  # a log, a pipe
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    found = {"ipywidgets": None}
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: found.get(name))
    assert progress.bar_kind(Stream(False)) is None  # a notebook that cannot draw a widget
    found["ipywidgets"] = object()
    assert progress.bar_kind(Stream(False)) == "notebook"


def test_a_notebook_is_a_jupyter_kernel(monkeypatch):
    class Shell:
        config = {"IPKernelApp": {}}

    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=lambda: Shell()))
    assert progress.in_notebook()
    Shell.config = {}  # a terminal IPython
    assert not progress.in_notebook()
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=lambda: None))
    assert not progress.in_notebook()


def test_run_names(tmp_path):
    group = tmp_path / "g"
    trunk = paths.trial_dir(group, "imp", 2)
    assert progress.run_name(tmp_path / "single") is None
    assert progress.run_name(None) is None
    assert progress.run_name(trunk) == "imp trial 2"
    control = paths.branch_set(trunk, "random-prune", {}, 0)
    assert progress.run_name(paths.branch_dir(control, 4, 0)) == "random-prune trial 2"
    assert progress.run_name(paths.branch_dir(control, 4, 1)) == "random-prune trial 2 #1"
    own = paths.branch_set(tmp_path / "run", "shuffle", {}, 0)
    assert progress.run_name(paths.branch_dir(own, 3, 1)) == "shuffle trial 1"
    point = paths.point_dir(tmp_path / "sweep", "lr=0.001")
    assert progress.run_name(paths.trial_dir(point, "imp", 0)) == "lr=0.001 imp trial 0"


def test_estimates():
    assert progress.duration(None) == "?"
    assert progress.duration(59.6) == "1:00" and progress.duration(3725) == "1:02:05"
    assert progress.estimate(0, 10, 5.0) is None
    assert progress.estimate(2, 10, 20.0) == 80.0  # 10 s a round, 8 left
    assert progress.estimate(2, 10, 20.0, since_last=3.0) == 77.0
    assert progress.estimate(10, 10, 20.0, since_last=3.0) == 0.0


@pytest.mark.slow
def test_a_log_file_shows_each_round_while_the_run_goes_on(tmp_path, cli_env):
    """``python cli.py run ... > log``: stdout is a file, not a terminal. The data line and
    the first round's row are in the file while the process is still training."""
    log = tmp_path / "log.txt"
    command = [sys.executable, str(ROOT / "cli.py"), "run", "--dataset", "mnist-sample",
               "--rounds", "3", "--iterations", "400", "--eval-every", "100", "--threads", "1",
               "--out", "run"]  # fmt: skip
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=tmp_path, env=cli_env, stdout=handle,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
    started = time.monotonic()
    try:
        text, running = "", True
        while time.monotonic() - started < 60:
            text = log.read_text()  # read first, then ask: the line came before any exit
            running = process.poll() is None
            if any(m.group(1) == "1" for m in rows_of(text)) or not running:
                break
            time.sleep(0.05)
        first = time.monotonic() - started
        assert running, f"the run ended before its first row reached the log:\n{text}"
        assert text.startswith("data: 5,000-digit MNIST sample"), text
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    ended = time.monotonic() - started
    assert process.returncode == 0, stderr
    assert ended > first  # the first row was there before the run ended
    whole = log.read_text()
    assert [m.group(1) for m in rows_of(whole)] == ["1", "2", "3"]
    assert whole.splitlines()[-1] == "results written to run"
    assert "\r" not in whole + stderr and "\x1b" not in whole + stderr


@pytest.mark.slow
def test_workers_print_each_finished_round_named_by_its_run(invoke):
    """``run --trials 2 --workers 2`` on an embedded Ray: the driver prints every round its
    workers finish, named by the run, with the estimate over all units."""
    result = invoke("run", *FAST, "--iterations", "50", "--rounds", "2", "--trials", "2",
                    "--workers", "2", "--out", "group")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = rows_of(result.stdout)
    names = sorted((m.group(7).split()[:3][-1], m.group(7).split()[3]) for m in rows)
    assert names == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]  # trial, round
    assert all("imp trial" in m.group(7) for m in rows)
    assert [m.group(1) for m in rows] == ["1", "2", "3", "4"] and rows[-1].group(5) == "0:00"
    assert result.stdout.splitlines()[0].startswith("data: ")
