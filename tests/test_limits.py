"""Absurd sizes refused at once, in one line, before anything is written (project issue 27):
thread counts the machine cannot run, trial counts and sweeps too large to plan, and sweep
variants typed as loosely as a config file refuses. In-process (``lottery_core.cli.main``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lottery_core import api, threads
from lottery_core.config import MAX_TRIALS, check_trials, make_config
from lottery_core.errors import LotteryError
from lottery_core.resolution import resolve
from lottery_core.sweep_file import MAX_POINTS, MAX_RUNS, Sweep, to_toml

TINY = {"dataset": "mnist-sample", "iterations": 100, "eval_every": 50, "rounds": 2, "threads": 1}
FAST = 30  # seconds: "at once", with room for a busy machine


def one_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in result.stderr, lines[0]
    return lines[0]


def nothing_written(folder: Path, *allowed: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(allowed)


@pytest.fixture
def two_cores(monkeypatch):
    """A machine of two cores, whatever this one has: the bound and the line are pinned."""
    monkeypatch.setattr(threads, "machine_cores", lambda: 2)


def test_more_threads_than_the_machine_can_run_is_one_line_and_writes_nothing(
    tmp_path, invoke, two_cores
):
    """``--threads 100000`` died of a segmentation fault once the thread rule probed that many
    (the folder left with .lock and config.json)."""
    result = invoke("run", "--dataset", "mnist-sample", "--threads", "100000", "--iterations",
                    "400", "--quiet")  # fmt: skip
    assert one_error(result) == (
        "Error: invalid config: threads = 100,000 is more than this machine can use: it has 2 "
        "cores, so at most 8 threads (4 a core)"
    )
    nothing_written(tmp_path)
    result = invoke("run", "--dataset", "mnist-sample", "--threads", "9", "--out", "new")
    assert "threads = 9 is more than" in one_error(result)
    nothing_written(tmp_path)


def test_the_thread_bound_is_four_a_core(plugins, two_cores):
    assert threads.most_threads() == 4 * 2
    assert resolve(make_config(**{**TINY, "threads": 8}), plugins).threads == 8
    with pytest.raises(LotteryError, match="at most 8 threads"):
        resolve(make_config(**{**TINY, "threads": 9}), plugins)
    assert resolve(make_config(**{**TINY, "threads": None}), plugins).threads <= 8


def test_a_sweep_asking_for_too_many_threads_is_one_line(tmp_path, invoke, two_cores):
    file = tmp_path / "s.toml"
    file.write_text(to_toml(Sweep({**TINY, "threads": 100000}, {"seed": [0, 1]})))
    line = one_error(invoke("sweep", file, "--out", "s"))
    assert line == (
        f"Error: invalid sweep file '{file}': grid point seed=0: threads = 100,000 is more "
        "than this machine can use: it has 2 cores, so at most 8 threads (4 a core)"
    )
    nothing_written(tmp_path, "s.toml")


def test_absurd_trials_on_the_command_line_are_refused_at_once(tmp_path, invoke, monkeypatch):
    """``run --trials 100000000`` built seeds in memory for minutes, printing nothing: the
    bound is checked with the other flags (``cli.check_run_flags``), before any run starts."""

    def reached(*args, **kwargs):
        raise AssertionError("--trials 100000000 reached the runner: it was not checked")

    monkeypatch.setattr(api, "run_trials", reached)
    monkeypatch.setattr(api, "run_experiment", reached)
    started = time.monotonic()
    result = invoke("run", "--dataset", "mnist-sample", "--trials", "100000000", "--quiet")
    assert time.monotonic() - started < FAST
    assert one_error(result) == "Error: --trials must be at most 10,000 (got 100,000,000)"
    nothing_written(tmp_path)


def test_the_trial_bound():
    check_trials(1)
    check_trials(MAX_TRIALS)
    for bad, message in [
        (MAX_TRIALS + 1, "trials must be at most 10,000 (got 10,001)"),
        (0, "trials must be an integer of at least 1 (got 0)"),
        (True, "trials must be an integer of at least 1 (got True)"),
        ("3", "trials must be an integer of at least 1 (got '3')"),
    ]:
        with pytest.raises(LotteryError) as error:
            check_trials(bad)
        assert str(error.value) == message
    with pytest.raises(LotteryError, match=r"^--trials must be at most"):
        check_trials(10**8, "--trials")


def test_absurd_sweeps_are_refused_at_once(tmp_path, invoke):
    """A billion trials; 100 grid points x 200 variants (20,000 points: the variants were not
    counted, and the points validated for minutes); more runs than a sweep takes."""
    trials = tmp_path / "trials.toml"
    trials.write_text(to_toml(Sweep(TINY, {}, 1_000_000_000)))
    many = tmp_path / "variants.toml"
    variants = [{"init_steps": i + 1} for i in range(200)]
    many.write_text(to_toml(Sweep(TINY, {"seed": list(range(100))}, variants=variants)))
    runs = tmp_path / "runs.toml"
    runs.write_text(to_toml(Sweep(TINY, {"seed": list(range(100))}, 2000)))
    expected = {
        trials: "trials must be at most 10,000 (got 1,000,000,000)",
        many: f"the grid has 20,000 points (100 seed x 200 variants); a sweep takes at most "
        f"{MAX_POINTS:,}: split it into several sweeps",
        runs: f"the sweep has 200,000 runs (100 points x 2,000 trials); a sweep takes at most "
        f"{MAX_RUNS:,}: split it into several sweeps",
    }
    for file, message in expected.items():
        started = time.monotonic()
        line = one_error(invoke("sweep", file, "--out", "s"))
        assert time.monotonic() - started < FAST, file
        assert line == f"Error: invalid sweep file '{file}': {message}"
    nothing_written(tmp_path, "trials.toml", "variants.toml", "runs.toml")


@pytest.mark.parametrize(
    "variants, message",
    [
        ([{"rounds": True}], "variant 1: rounds = True: rounds must be an integer (got True)"),
        ([{"download": "no"}],
         "variant 1: download = 'no': download must be true or false (got 'no')"),
        ([{"lr": 0.001}, {"lr": "1e-3"}], "variant 2: lr = '1e-3': lr must be a number"),
        ([{"rate": 2.0}], "variant 1: rate = 2.0: rate: Input should be less than 1"),
        ([{"scope": "globl"}], "variant 1: scope = 'globl': scope: Input should be"),
    ],
)  # fmt: skip
def test_variant_values_are_as_strict_as_a_config_file(tmp_path, invoke, variants, message):
    """``rounds = true`` and ``download = "no"`` in a [[variant]] ran as 1 and False, where a
    config file or a [grid] refuses them."""
    base = {k: v for k, v in TINY.items() if k != "rounds"}
    file = tmp_path / "s.toml"
    file.write_text(to_toml(Sweep(base, {}, variants=variants)))
    line = one_error(invoke("sweep", file, "--out", "s"))
    assert line.startswith(f"Error: invalid sweep file '{file}': {message}"), line
    nothing_written(tmp_path, "s.toml")
