"""Crash safety: kill a real CLI process mid-run, resume it, and get the uninterrupted result.

Only the run that is killed (or interrupted) is a subprocess; the uninterrupted reference and
the resume run in this process (``lottery_core.cli.main``). The tests wait on files (a
results.csv row), not on the clock: their timeouts are hang guards far above the expected
seconds."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import torch

from lottery_core import LotteryError, checkpoint, run_experiment, rundir, runs
from lottery_core.api import resume_experiment
from lottery_core.config import make_config
from lottery_core.errors import RunFailed
from lottery_core.experiment import Experiment
from lottery_core.resolution import resolve

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
    assert sorted(set(a["experiment"])) == ["imp", "random-prune", "reinit"]
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


# -- extending a run (run --resume DIR --rounds N) and the same command twice (issue 27) ----

TINY = ["--dataset", "mnist-sample", "--iterations", "60", "--eval-every", "30", "--threads",
        "1", "--quiet"]  # fmt: skip


def same_run(a: Path, b: Path) -> None:
    """Two folders hold the same experiment's results: every table but time_s, the ticket,
    and every round's mask in the checkpoint, bit for bit."""
    for name in ("results.csv", "history.csv", "layers.csv"):
        pd.testing.assert_frame_equal(comparable(a / name), comparable(b / name))
    left, right = checkpoint.read(a), checkpoint.read(b)
    assert left["next_round"] == right["next_round"]
    assert left["masks"].keys() == right["masks"].keys()
    for r, masks in left["masks"].items():
        for name, packed in masks.items():
            assert torch.equal(checkpoint.unpack_mask(packed),
                               checkpoint.unpack_mask(right["masks"][r][name]))  # fmt: skip
    for name, value in left["model"].items():
        assert torch.equal(value, right["model"][name]), name
    ticket_a = torch.load(a / "ticket.pt", weights_only=True)
    ticket_b = torch.load(b / "ticket.pt", weights_only=True)
    assert ticket_a["round"] == ticket_b["round"]
    for name, mask in ticket_a["masks"].items():
        assert torch.equal(mask, ticket_b["masks"][name])


def error_line(result, code: int = 2) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def files_of(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def test_a_finished_run_extends_to_what_a_longer_run_computes(tmp_path, invoke):
    assert invoke("run", *TINY, "--rounds", "3", "--out", "short").returncode == 0
    extended = invoke("run", "--resume", "short", "--rounds", "5", "--quiet")
    assert extended.returncode == 0, extended.stderr
    assert extended.stdout.splitlines()[0] == (
        "extended short from 3 to 5 rounds (3 finished; recorded in its config.json)"
    )
    assert invoke("run", *TINY, "--rounds", "5", "--out", "long").returncode == 0
    same_run(tmp_path / "short", tmp_path / "long")
    meta = json.loads((tmp_path / "short" / "config.json").read_text())
    whole = json.loads((tmp_path / "long" / "config.json").read_text())
    differs = {k for k in meta["config"] if meta["config"][k] != whole["config"][k]}
    assert differs == {"out"}  # rounds 5, as if asked for from the start
    [record] = meta["extended"]
    assert (record["from"], record["to"]) == (3, 5)
    assert datetime.fromisoformat(record["at"]).tzinfo is not None
    # the extended folder verifies everywhere: its checkpoint, report, export
    assert rundir.verified(tmp_path / "short", meta)["next_round"] == 5
    assert invoke("report", "short").returncode == 0
    # extending to the rounds it has is its table; a plain resume still says it is complete
    again = invoke("run", "--resume", "short", "--rounds", "5", "--quiet")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already done: short (5 rounds); its table:\n")
    assert "already complete (5 rounds)" in error_line(invoke("run", "--resume", "short"))


def test_a_checkpoint_from_before_an_extension_still_verifies_and_a_forged_one_does_not(
    tmp_path, sample_data
):
    path = tmp_path / "run"
    config = make_config(dataset="mnist-sample", rounds=2, iterations=60, eval_every=30,
                         threads=1)  # fmt: skip
    runs.start(Experiment(config, data=sample_data), path, progress=False)
    extension = runs.extend(path, 4)
    assert (extension.before, extension.after, extension.done, extension.changed) == (2, 4, 2, True)
    meta = rundir.read_meta(path)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):  # both written before it
        rundir.verified(path, meta, name)
    forged = {**meta, "config": {**meta["config"], "rounds": 6},
              "extended": [*meta["extended"], {"from": 3, "to": 6, "at": "now"}]}  # fmt: skip
    (path / "config.json").write_text(json.dumps(forged))
    with pytest.raises(LotteryError, match=r"\(rounds: 2 in checkpoint.pt, 6 in config.json\)"):
        rundir.verified(path, rundir.read_meta(path))


def test_a_stopped_run_may_be_given_fewer_rounds_but_never_fewer_than_it_finished(
    tmp_path, invoke, sample_data
):
    config = make_config(dataset="mnist-sample", rounds=5, iterations=60, eval_every=30,
                         threads=1)  # fmt: skip
    runs.start(Experiment(config, data=sample_data), tmp_path / "cut", progress=False,
               stop_after=2)  # fmt: skip
    before = files_of(tmp_path / "cut")
    assert "has already finished 2 rounds; give --rounds 2 or more; nothing was changed" in (
        error_line(invoke("run", "--resume", "cut", "--rounds", "1"))
    )
    assert files_of(tmp_path / "cut") == before
    done = invoke("run", "--resume", "cut", "--rounds", "3", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "extended cut from 5 to 3 rounds (2 finished" in done.stdout
    assert invoke("run", *TINY, "--rounds", "3", "--out", "three").returncode == 0
    same_run(tmp_path / "cut", tmp_path / "three")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--lr", "0.1"], "only --rounds N may change: it extends it to N rounds); drop --lr"),
        (["--config", "x.toml"], "drop --config"),
        (["--trials", "2"], "drop --trials 2"),
        (["--from-previous"], "resume it with --from-previous first, then extend it"),
        (["--rounds", "0"], "--rounds must be at least 1 (got 0)"),
        (["--workers", "2"], "--workers runs a trials/controls folder in parallel; this is one"),
    ],
    ids=["flag", "config", "trials", "from-previous", "zero", "workers"],
)
def test_extending_refuses_in_one_line_and_changes_nothing(
    tmp_path, invoke, sample_data, args, fragment
):
    config = make_config(dataset="mnist-sample", rounds=2, iterations=60, eval_every=30,
                         threads=1)  # fmt: skip
    runs.start(Experiment(config, data=sample_data), tmp_path / "run", progress=False)
    before = files_of(tmp_path / "run")
    rounds = [] if "--rounds" in args else ["--rounds", "4"]
    assert fragment in error_line(invoke("run", "--resume", "run", *rounds, *args))
    assert files_of(tmp_path / "run") == before


def test_a_trials_controls_folder_extends_with_its_controls(tmp_path, invoke):
    group = [*TINY, "--trials", "1", "--controls"]
    assert invoke("run", *group, "--rounds", "2", "--out", "short").returncode == 0
    trial = tmp_path / "short" / "runs" / "imp" / "trial_0"
    before = files_of(tmp_path / "short")
    assert "extend the folder: python cli.py run --resume short --rounds N" in error_line(
        invoke("run", "--resume", "short/runs/imp/trial_0", "--rounds", "3")
    )
    [network] = trial.glob("branches/reinit-*/round_1/trial_0")
    assert "is a branch's network, one round of its trunk: it has no rounds to extend" in (
        error_line(invoke("run", "--resume", network.relative_to(tmp_path), "--rounds", "3"))
    )
    assert "a folder's rounds can only grow; nothing was changed" in error_line(
        invoke("run", "--resume", "short", "--rounds", "1")
    )
    assert files_of(tmp_path / "short") == before
    sweep = tmp_path / "sweep"  # a grid point's rounds are its sweep file's
    (sweep / "points").mkdir(parents=True)
    (sweep / "sweep.toml").write_text("")
    shutil.copytree(tmp_path / "short", sweep / "points" / "p")
    for folder in ("sweep/points/p", "sweep/points/p/runs/imp/trial_0"):
        line = error_line(invoke("run", "--resume", folder, "--rounds", "3"))
        assert "a grid point of the sweep" in line and line.endswith("nothing was changed")
    extended = invoke("run", "--resume", "short", "--rounds", "3", "--quiet")
    assert extended.returncode == 0, extended.stderr
    assert extended.stdout.startswith("extended short from 2 to 3 rounds (2 finished")
    assert invoke("run", *group, "--rounds", "3", "--out", "long").returncode == 0
    pd.testing.assert_frame_equal(comparable(tmp_path / "short" / "results.csv"),
                                  comparable(tmp_path / "long" / "results.csv"))  # fmt: skip
    same_run(trial, tmp_path / "long" / "runs" / "imp" / "trial_0")
    for path in (tmp_path / "short", trial):
        [record] = json.loads((path / "config.json").read_text())["extended"]
        assert (record["from"], record["to"]) == (2, 3)


def test_a_stop_between_a_folders_config_and_its_runs_is_mended_by_the_next_resume(
    tmp_path, invoke
):
    group = [*TINY, "--trials", "2", "--rounds", "2"]
    assert invoke("run", *group, "--out", "short").returncode == 0
    meta = json.loads((tmp_path / "short" / "config.json").read_text())
    meta["config"]["rounds"] = 3  # as runs.extend leaves it when stopped before its runs
    meta["extended"] = [{"from": 2, "to": 3, "at": "2024-01-01T00:00:00+00:00"}]
    (tmp_path / "short" / "config.json").write_text(json.dumps(meta))
    resumed = invoke("run", "--resume", "short", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert invoke("run", *TINY, "--trials", "2", "--rounds", "3", "--out", "long").returncode == 0
    pd.testing.assert_frame_equal(comparable(tmp_path / "short" / "results.csv"),
                                  comparable(tmp_path / "long" / "results.csv"))  # fmt: skip


def only_folders(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "results").iterdir())


def test_the_same_command_twice_reports_the_finished_run(tmp_path, invoke, plugins):
    first = invoke("run", *TINY, "--rounds", "2")
    assert first.returncode == 0, first.stderr
    [name] = only_folders(tmp_path)
    lines = first.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith(" round remaining"))
    end = next(i for i, line in enumerate(lines) if line.startswith("results written"))
    table = "\n".join(lines[start:end]) + "\n"
    again = invoke("run", *TINY, "--rounds", "2")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"already done: results/{name} (2 rounds); its table:\n{table}"
    assert only_folders(tmp_path) == [name]  # no results/<name>-2
    # the Python API alike: the same tables, nothing trained
    result = run_experiment(dataset="mnist-sample", rounds=2, iterations=60, eval_every=30,
                            threads=1, progress=False)  # fmt: skip
    assert result.run_dir == Path("results") / name
    pd.testing.assert_frame_equal(result.results, pd.read_csv(tmp_path / "results" / name /
                                                              "results.csv"))  # fmt: skip
    # an explicit --out that exists is still refused
    assert invoke("run", *TINY, "--rounds", "2", "--out", "mine").returncode == 0
    assert "already exists and is not empty" in error_line(
        invoke("run", *TINY, "--rounds", "2", "--out", "mine")
    )


def test_a_folder_of_that_name_holding_another_run_is_passed_over(tmp_path, invoke):
    assert invoke("run", *TINY, "--rounds", "1", "--seed", "1", "--out", "other").returncode == 0
    assert invoke("run", *TINY, "--rounds", "1").returncode == 0
    [name] = only_folders(tmp_path)
    (tmp_path / "results" / name).rename(tmp_path / "mine")
    shutil.copytree(tmp_path / "other", tmp_path / "results" / name)  # another run, same name
    again = invoke("run", *TINY, "--rounds", "1")
    assert again.returncode == 0, again.stderr
    assert "already" not in again.stdout and f"results/{name}-2" in again.stdout
    assert only_folders(tmp_path) == [name, f"{name}-2"]
    same_run(tmp_path / "results" / f"{name}-2", tmp_path / "mine")
    # the third time, the run in -2 is found and reported
    third = invoke("run", *TINY, "--rounds", "1")
    assert third.stdout.startswith(f"already done: results/{name}-2 (1 rounds); its table:")


def test_the_same_command_continues_a_stopped_run(tmp_path, invoke, plugins, sample_data):
    config = resolve(make_config(dataset="mnist-sample", rounds=3, iterations=60, eval_every=30,
                                 threads=1), plugins)  # fmt: skip
    stopped = Path("results") / config.run_name()
    runs.start(Experiment(config, plugins=plugins, data=sample_data), stopped, progress=False,
               stop_after=1)  # fmt: skip
    again = invoke("run", *TINY, "--rounds", "3")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == (
        f"{stopped} already holds this experiment, 1 of 3 rounds of its run finished: continuing it"
    )
    assert only_folders(tmp_path) == [stopped.name]
    assert invoke("run", *TINY, "--rounds", "3", "--out", "whole").returncode == 0
    same_run(tmp_path / stopped, tmp_path / "whole")


def test_the_same_trials_command_twice_reports_the_finished_folder(tmp_path, invoke):
    group = [*TINY, "--rounds", "2", "--trials", "2"]
    first = invoke("run", *group)
    assert first.returncode == 0, first.stderr
    [name] = only_folders(tmp_path)
    again = invoke("run", *group)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"already done: results/{name} (2 rounds); its table:\n")
    assert only_folders(tmp_path) == [name]
    other = invoke("run", *group, "--controls")  # another experiment: a folder of its own
    assert other.returncode == 0, other.stderr
    assert only_folders(tmp_path) == sorted([name, f"{name}-controls"])
