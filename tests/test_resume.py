"""Crash safety: kill a real CLI process mid-run, resume it, and get the uninterrupted result.

Only the run that is killed (or interrupted) is a subprocess; the uninterrupted reference and
the resume run in this process (``lottery_core.cli.main``). The tests wait on files (a
results.csv row), not on the clock: their timeouts are hang guards far above the expected
seconds."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lottery_core import LotteryError, checkpoint, run_experiment
from lottery_core.api import resume_experiment
from lottery_core.errors import RunFailed

from .conftest import ROOT

RUN = ["run", "--dataset", "mnist-sample", "--iterations", "400", "--eval-every", "100",
       "--threads", "1", "--quiet"]  # fmt: skip
HANG = 600  # seconds: a guard against a hung process, never a budget a slow machine could miss


def start(args, cwd, env):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_rows(path: Path, rows: int, process: subprocess.Popen, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > rows:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    process.kill()
    process.communicate()
    raise AssertionError(f"{path} never reached {rows} rows in {timeout} s")


def comparable(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    return frame.drop(columns=[c for c in frame.columns if c == "time_s"])


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, cli_env, invoke):
    # Many short rounds: once round 0's row is seen, the kill lands while five rounds are left
    # (a second of work or more, on any machine, against a poll of 10 ms).
    long = [*RUN, "--rounds", "6", "--iterations", "200"]
    process = start([*long, "--out", "cut"], tmp_path, cli_env)
    wait_for_rows(tmp_path / "cut" / "results.csv", 1, process)  # round 0 is done
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done = len(pd.read_csv(tmp_path / "cut" / "results.csv"))
    assert 1 <= done < 6  # it really stopped mid-run
    # Whatever moment the kill hit, every round listed in results.csv has its files in place,
    # and they are whole (a stray temp file may remain).
    assert pd.read_csv(tmp_path / "cut" / "history.csv")["round"].max() >= done - 1
    assert pd.read_csv(tmp_path / "cut" / "layers.csv")["round"].max() >= done - 1
    assert torch.load(tmp_path / "cut" / "ticket.pt", weights_only=True)["round"] >= done - 1
    saved = checkpoint.read(tmp_path / "cut")["next_round"]
    assert saved in (done, done + 1)  # the checkpoint is written before the tables

    whole = invoke(*long, "--out", "whole")  # the uninterrupted run, in this process
    assert whole.returncode == 0, whole.stderr

    resumed = invoke("run", "--resume", "cut", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert not list((tmp_path / "cut").glob(".*.tmp"))  # resume clears stray temp files
    for name in ("results.csv", "history.csv", "layers.csv"):
        pd.testing.assert_frame_equal(comparable(tmp_path / "whole" / name),
                                      comparable(tmp_path / "cut" / name))  # fmt: skip
    ticket_a = torch.load(tmp_path / "whole" / "ticket.pt", weights_only=True)
    ticket_b = torch.load(tmp_path / "cut" / "ticket.pt", weights_only=True)
    for name, mask in ticket_a["masks"].items():
        assert torch.equal(mask, ticket_b["masks"][name])


@pytest.mark.slow
def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, cli_env, invoke):
    process = start([*RUN, "--rounds", "3", "--out", "run"], tmp_path, cli_env)
    wait_for_rows(tmp_path / "run" / "results.csv", 1, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=HANG)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "python cli.py run --resume run" in stderr
    resumed = invoke("run", "--resume", "run", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert list(pd.read_csv(tmp_path / "run" / "results.csv")["round"]) == [0, 1, 2]


@pytest.mark.slow
def test_killed_trials_and_controls_resume_to_the_uninterrupted_result(tmp_path, cli_env, invoke):
    # Killed once trial 1's dense round is saved, with six rounds of its three runs left (were
    # they done first, the resume would find the group complete and must still match).
    group = [*RUN, "--rounds", "3", "--iterations", "100", "--eval-every", "50", "--trials", "2",
             "--controls"]  # fmt: skip
    process = start([*group, "--out", "cut"], tmp_path, cli_env)
    wait_for_rows(tmp_path / "cut" / "runs" / "imp" / "trial_1" / "results.csv", 1, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    whole = invoke(*group, "--out", "whole")  # the uninterrupted group, in this process
    assert whole.returncode == 0, whole.stderr
    resumed = invoke("run", "--resume", "cut", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a, b = (
        comparable(tmp_path / "whole" / "results.csv"),
        comparable(tmp_path / "cut" / "results.csv"),
    )
    pd.testing.assert_frame_equal(a, b)
    assert sorted(set(a["experiment"])) == ["imp", "prune-random", "reinit-random"]
    assert sorted(set(a["trial"])) == [0, 1]


@pytest.mark.parametrize("content", [b"garbage, not a zip", None])
def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"config": {"dataset": "mnist-sample"}}')
    if content is None:
        torch.save({"something": "else"}, run_dir / "checkpoint.pt")
    else:
        (run_dir / "checkpoint.pt").write_bytes(content)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(LotteryError, match="checkpoint"):
        resume_experiment(run_dir, progress=False)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != ".lock"} == before


def test_a_diverging_loss_stops_with_round_and_iteration(tmp_path):
    with pytest.raises(RunFailed, match=r"round 0: the loss became (nan|inf) at iteration 50"):
        run_experiment(dataset="mnist-sample", rounds=2, iterations=100, eval_every=50,
                       lr=1e12, out=tmp_path / "run", progress=False)  # fmt: skip
