"""A run folder nobody can corrupt (issue 11): resume never deletes or guesses, checkpoints prove
what they are, one owner per folder, validation before anything is created, named I/O failures,
divergence flags. Real tiny runs, in-process through ``lottery_core.cli.main`` but for the lock
holders and Ctrl-C, which need a second process."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from lottery_core import divergence, files, report, rundir, runs
from lottery_core.config import make_config
from lottery_core.experiment import Experiment

from .conftest import ROOT

BUDGET = dict(dataset="mnist-sample", rounds=3, iterations=60, eval_every=30, threads=1)
FLAGS = ["--quiet"]
NAMES = ["config.json", "checkpoint.pt", "checkpoint.prev.pt", "results.csv", "history.csv",
         "layers.csv", "ticket.pt", ".lock"]  # fmt: skip


def make_run(path: Path, data, stop_after: int | None = None, **overrides) -> Path:
    config = make_config(**{**BUDGET, **overrides})
    runs.start(Experiment(config, data=data), path, progress=False, stop_after=stop_after)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sample_data):
    """``cut``: rounds 0-1 of 3 saved (checkpoint.pt at 2 rounds, checkpoint.prev.pt at 1);
    ``other``: the same stage of another run (seed 1); ``whole``: the uninterrupted run."""
    root = tmp_path_factory.mktemp("folders")
    return {
        "cut": make_run(root / "cut", sample_data, stop_after=2),
        "other": make_run(root / "other", sample_data, stop_after=2, seed=1),
        "whole": make_run(root / "whole", sample_data),
    }


def invoke_with_ctrl_c_at_write(invoke, monkeypatch, when, *args):
    """Run the CLI in process with Ctrl-C raised where a round would be written, whenever
    ``when(folder, state)`` says so (other writes go ahead)."""
    write_round = rundir.RunFolder.write_round

    def write_or_interrupt(folder, state, model_state):
        if when(folder, state):
            raise KeyboardInterrupt
        write_round(folder, state, model_state)

    with monkeypatch.context() as patch:
        patch.setattr(rundir.RunFolder, "write_round", write_or_interrupt)
        return invoke(*args)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (the lock's holder pid aside: taking the lock rewrites it)."""
    return {p.name: (b"" if p.name == ".lock" else p.read_bytes()) for p in folder.iterdir()}


def same_tables(a: Path, b: Path) -> None:
    """The same experiment's results: every table (time aside) and the ticket's masks."""
    for name in ("results.csv", "history.csv", "layers.csv"):
        left, right = pd.read_csv(a / name), pd.read_csv(b / name)
        pd.testing.assert_frame_equal(left.drop(columns=["time_s"], errors="ignore"),
                                      right.drop(columns=["time_s"], errors="ignore"))  # fmt: skip
    ticket_a = torch.load(a / "ticket.pt", weights_only=True)
    ticket_b = torch.load(b / "ticket.pt", weights_only=True)
    assert ticket_a["round"] == ticket_b["round"]
    for name, mask in ticket_a["masks"].items():
        assert torch.equal(mask, ticket_b["masks"][name])


def one_line(result, code: int = 2) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + 16, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncate": lambda path, other: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "flip": lambda path, other: flip(path),
    "delete": lambda path, other: path.unlink(),
    "foreign": lambda path, other: shutil.copyfile(other / path.name, path),
}
# What each damage leads to: resume and report either continue to the undamaged run's result
# ("same") or refuse with one line holding the fragment (case-insensitive regex).
REFUSED_CONFIG = "config.json"
EXPECTED = {
    ("config.json", "truncate"): ("not readable JSON", "not readable JSON"),
    ("config.json", "flip"): (REFUSED_CONFIG, REFUSED_CONFIG),
    ("config.json", "delete"): ("has checkpoint.pt but no config.json",) * 2,
    ("config.json", "foreign"): ("does not belong .*seed: 0 in checkpoint.pt, 1 in config",) * 2,
    ("checkpoint.pt", "truncate"): ("checkpoint.pt' is damaged.*--from-previous",) * 2,
    ("checkpoint.pt", "flip"): ("checkpoint.pt' is damaged.*--from-previous",) * 2,
    ("checkpoint.pt", "delete"): ("but no checkpoint.pt: it cannot be resumed.*--from-", "same"),
    ("checkpoint.pt", "foreign"): ("does not belong.*seed.*--from-previous",) * 2,
    ("ticket.pt", "truncate"): ("ticket.pt' does not match", "same"),
    ("ticket.pt", "flip"): ("ticket.pt' does not match", "same"),
    ("ticket.pt", "foreign"): ("ticket.pt' does not match", "same"),
}
for _name in ("results.csv", "history.csv", "layers.csv"):
    for _damage in ("truncate", "flip", "foreign"):
        EXPECTED[(_name, _damage)] = (f"{_name}' does not match",) * 2
# Pruning at fixed rates leaves another seed's layers.csv byte for byte the same: no damage.
EXPECTED[("layers.csv", "foreign")] = ("same", "same")
CASES = [(name, damage) for name in NAMES for damage in DAMAGE]


@pytest.mark.parametrize("name, damage", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_each_damaged_file_is_refused_in_one_line_or_resumes_to_the_same_result(
    folders, tmp_path, invoke, name, damage
):
    run = tmp_path / "run"
    shutil.copytree(folders["cut"], run)
    expected_report = report.markdown(*report.load_series([run]), 0.5)
    DAMAGE[damage](run / name, folders["other"])
    before = snapshot(run)
    on_resume, on_report = EXPECTED.get((name, damage), ("same", "same"))

    try:
        text = report.markdown(*report.load_series([run]), 0.5)
    except report.LotteryError as exc:
        assert on_report != "same", f"report refused: {exc}"
        assert "\n" not in str(exc)
        assert re.search(on_report, str(exc), re.I), str(exc)
    else:
        assert on_report == "same", "report went on over a damaged folder"
        assert text == expected_report
    assert snapshot(run) == before  # the report reads, never writes, a run folder

    resumed = invoke("run", "--resume", "run", *FLAGS)
    if on_resume == "same":
        assert resumed.returncode == 0, resumed.stderr
        same_tables(run, folders["whole"])
        assert set(before) <= {p.name for p in run.iterdir()}  # no file lost
    else:
        line = one_line(resumed)
        assert re.search(on_resume, line, re.I), line
        assert snapshot(run) == before  # refused: every file as it was, none lost


def test_a_damaged_checkpoint_falls_back_to_the_previous_one_when_asked(folders, tmp_path, invoke):
    run = tmp_path / "run"
    shutil.copytree(folders["cut"], run)
    flip(run / "checkpoint.pt")
    damaged = (run / "checkpoint.pt").read_bytes()
    line = one_line(invoke("run", "--resume", "run", *FLAGS))
    assert line == (
        "Error: 'run/checkpoint.pt' is damaged: its contents fail their checksum; "
        "checkpoint.prev.pt (rounds 0-0) is intact: to redo round 1 from it, run: "
        "python cli.py run --resume run --from-previous; nothing was changed"
    )
    assert invoke("run", "--resume", "run", "--from-previous", *FLAGS).returncode == 0
    same_tables(run, folders["whole"])
    assert (run / "checkpoint.damaged.pt").read_bytes() == damaged  # kept, not deleted
    assert not list(run.glob(".*.tmp"))
    again = one_line(invoke("run", "--resume", "run", "--from-previous", *FLAGS))
    assert "is intact: resume without --from-previous" in again


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda m: m["config"].update(lr=0.002), "(lr: 0.0012 in checkpoint.pt, 0.002 in config"),
        (lambda m: m["config"].update(rounds=5), "(rounds: 3 in checkpoint.pt, 5 in config.json)"),
        (lambda m: m.update(data_source="full MNIST"), "was changed after 'run/checkpoint.pt' was "
                                                       "written (data_source differs)"),
        (lambda m: m["config"].update(device="cuda"), "(config.device differs)"),
    ],
    ids=["lr", "rounds", "data_source", "device"],
)
def test_an_edited_config_json_is_refused_naming_what_differs(
    folders, tmp_path, invoke, edit, fragment
):
    run = tmp_path / "run"
    shutil.copytree(folders["cut"], run)
    meta = json.loads((run / "config.json").read_text())
    edit(meta)
    (run / "config.json").write_text(json.dumps(meta))
    before = snapshot(run)
    line = one_line(invoke("run", "--resume", "run", *FLAGS))
    assert fragment in line and line.endswith("nothing was changed")
    assert snapshot(run) == before
    with pytest.raises(report.LotteryError, match="config.json"):
        report.load_series([run])


# -- 1. resume never deletes what it did not write ------------------------------------------


def test_a_folder_without_a_usable_checkpoint_is_left_as_it_was(folders, tmp_path, invoke):
    run = tmp_path / "run"
    shutil.copytree(folders["whole"], run)
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.prev.pt").unlink()
    (run / "notes.txt").write_text("my notes\n")
    before = snapshot(run)
    line = one_line(invoke("run", "--resume", "run", *FLAGS))
    assert line == (
        "Error: 'run' has history.csv, layers.csv, notes.txt, results.csv, ticket.pt but no "
        "checkpoint.pt: it cannot be resumed; nothing in it was changed"
    )
    assert snapshot(run) == before
    # the report still reads the tables it can check on their own
    assert "## Verdict" in report.markdown(*report.load_series([run]), 0.5)


def test_a_run_stopped_before_its_first_round_starts_again(folders, tmp_path, invoke):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(folders["whole"] / "config.json", run / "config.json")
    assert invoke("run", "--resume", "run", *FLAGS).returncode == 0
    same_tables(run, folders["whole"])


def test_a_group_resume_refuses_a_damaged_trial_and_keeps_everything(tmp_path, invoke):
    args = ["run", "--dataset", "mnist-sample", "--rounds", "2", "--iterations", "60",
            "--eval-every", "30", "--threads", "1", "--trials", "2", *FLAGS]  # fmt: skip
    assert invoke(*args, "--out", "group").returncode == 0
    trial = tmp_path / "group" / "runs" / "imp" / "trial_1"
    (trial / "checkpoint.pt").unlink()
    (trial / "checkpoint.prev.pt").unlink()
    before = {p: p.read_bytes() for p in (tmp_path / "group").rglob("*") if p.is_file()}
    line = one_line(invoke("run", "--resume", "group", *FLAGS))
    assert "trial_1' has history.csv, layers.csv, results.csv, ticket.pt but no checkpoint" in line
    after = {p: p.read_bytes() for p in (tmp_path / "group").rglob("*") if p.is_file()}
    assert {p for p in before if p.name != ".lock"} == {p for p in after if p.name != ".lock"}
    assert all(after[p] == data for p, data in before.items() if p.name != ".lock")
    # a group whose first round fails leaves nothing behind: the same command can run again
    failed = invoke(*args, "--lr", "1e12", "--out", "bad")
    assert one_line(failed, 1).startswith("Error: round 0: the loss became nan")
    assert not (tmp_path / "bad").exists()


def test_ctrl_c_in_a_group_names_the_group_to_resume(tmp_path, invoke, monkeypatch):
    args = ["run", "--dataset", "mnist-sample", "--rounds", "2", "--iterations", "60",
            "--eval-every", "30", "--threads", "1", "--trials", "2", "--out", "group",
            *FLAGS]  # fmt: skip
    interrupted = invoke_with_ctrl_c_at_write(
        invoke, monkeypatch, lambda folder, state: folder.path.name == "trial_1", *args
    )
    assert interrupted.returncode == 130
    assert interrupted.stderr.strip() == (
        "Interrupted: every saved round of its runs is in group. Resume with: "
        "python cli.py run --resume group"
    )
    assert not (tmp_path / "group" / "runs" / "imp" / "trial_1").exists()  # it saved nothing
    assert invoke("run", "--resume", "group", *FLAGS).returncode == 0
    assert sorted(set(pd.read_csv(tmp_path / "group" / "results.csv")["trial"])) == [0, 1]


# -- 3. one owner per folder ---------------------------------------------------------------

HOLD = """
import sys
from lottery_core import rundir
with rundir.locked(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.slow
def test_a_held_folder_names_its_holder(folders, tmp_path, invoke, cli_env):
    shutil.copytree(folders["cut"], tmp_path / "run")
    (tmp_path / "fresh").mkdir()
    holders = [
        subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / name)], env=cli_env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        for name in ("run", "fresh")
    ]
    try:
        for holder in holders:
            assert holder.stdout.readline().strip() == "held"
        before = snapshot(tmp_path / "run")
        line = one_line(invoke("run", "--resume", "run", *FLAGS))
        assert line == (
            f"Error: 'run' is in use by another lottery process (pid {holders[0].pid}); "
            "wait for it to finish or stop it"
        )
        assert snapshot(tmp_path / "run") == before
        line = one_line(invoke("run", *FLAGS, "--dataset", "mnist-sample", "--iterations", "60",
                               "--rounds", "1", "--out", "fresh"))  # fmt: skip
        assert f"'fresh' is in use by another lottery process (pid {holders[1].pid})" in line
        assert [p.name for p in (tmp_path / "fresh").iterdir()] == [".lock"]
    finally:
        for holder in holders:
            holder.communicate("")
    assert invoke("run", "--resume", "run", *FLAGS).returncode == 0  # the lock went with it


@pytest.mark.parametrize("when", ["after mkdir", "after lock"])
def test_two_starts_into_one_new_folder_leave_one_run(
    folders, tmp_path, invoke, monkeypatch, when
):
    """The second start runs inside the first one's window: between its mkdir and its lock, or
    while it holds the lock. One run finishes there; the other is one line, and writes nothing."""
    args = ["run", "--dataset", "mnist-sample", "--rounds", "3", "--iterations", "60",
            "--eval-every", "30", "--threads", "1", "--out", "same", *FLAGS]  # fmt: skip
    second = []
    owner, name = (rundir, "create") if when == "after mkdir" else (rundir.RunFolder,
                                                                    "write_config")  # fmt: skip
    target = getattr(owner, name)

    def racing(*a, **k):
        if when == "after mkdir":
            target(*a, **k)  # the folder exists, unlocked and empty
        if not second:
            second.append(None)  # the second start must not race a third
            second[0] = invoke(*args)
        if when == "after lock":
            target(*a, **k)  # locked, and nothing written yet

    monkeypatch.setattr(owner, name, racing)
    first = invoke(*args)
    if when == "after mkdir":
        assert second[0].returncode == 0
        line = one_line(first)
        assert "'same' already exists and is not empty" in line
    else:
        assert first.returncode == 0
        line = one_line(second[0])
        assert f"'same' is in use by another lottery process (pid {os.getpid()})" in line
    same_tables(tmp_path / "same", folders["whole"])


# -- 4. validate before creating anything --------------------------------------------------


@pytest.mark.parametrize(
    "out, fragment",
    [
        ("afile/run", "--out 'afile/run': 'afile' is a file, not a folder"),
        ("n" * 300, "is 300 bytes long; the file system allows 255"),
        ("/".join(["d" * 200] * 25), "the path is longer than the 4096 bytes"),
    ],
    ids=["under-a-file", "name-too-long", "path-too-long"],
)
def test_an_out_the_file_system_refuses_is_one_line(tmp_path, invoke, out, fragment):
    (tmp_path / "afile").write_text("")
    line = one_line(invoke("run", "--dataset", "mnist-sample", "--out", out, *FLAGS))
    assert fragment in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@contextmanager
def read_only(folder: Path):
    """``folder`` refuses new files: permissions, or for root (who writes through them) the
    immutable attribute."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot make a read-only folder here")
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_read_only_out_is_one_line(tmp_path, invoke):
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        line = one_line(invoke("run", "--dataset", "mnist-sample", "--out", "ro/run", *FLAGS))
    assert line == "Error: --out 'ro/run': 'ro' is not writable"
    assert not list((tmp_path / "ro").iterdir())


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("rounds = true", "rounds must be an integer (got True)"),
        ("download = 'no'", "download must be true or false (got 'no')"),
        ("lr = inf", "lr: Value error, must be a finite number"),
        ("iterations = 1.5", "iterations must be an iteration count, or steps like 500it, 2ep"),
    ],
)
def test_config_files_are_strictly_typed(tmp_path, invoke, text, fragment):
    (tmp_path / "exp.toml").write_text(f"dataset = 'mnist-sample'\n{text}\n")
    line = one_line(invoke("run", "--config", "exp.toml", "--out", "new", *FLAGS))
    assert fragment in line
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_in_its_first_round_leaves_no_folder(tmp_path, invoke, monkeypatch):
    args = ["run", "--dataset", "mnist-sample", "--rounds", "2", "--iterations", "60",
            "--eval-every", "30", "--threads", "1", "--out", "run", *FLAGS]  # fmt: skip
    line = one_line(invoke(*args, "--lr", "1e12"), 1)
    assert line == (
        "Error: round 0: the loss became nan at iteration 30; no round had finished; "
        "try a lower --lr"
    )
    assert not (tmp_path / "run").exists()
    assert one_line(invoke(*args, "--batch-size", "4000")).endswith("3500 training examples "
                                                                    "of 'mnist-sample'")
    assert not (tmp_path / "run").exists()

    # Ctrl-C while saving round 0
    interrupted = invoke_with_ctrl_c_at_write(invoke, monkeypatch, lambda *_: True, *args)
    assert interrupted.returncode == 130
    assert interrupted.stderr.strip() == (
        "Interrupted before the first round finished; nothing was kept."
    )
    assert not (tmp_path / "run").exists()
    assert invoke(*args).returncode == 0  # the same command simply runs


# -- 5. I/O failures are named -------------------------------------------------------------


def test_a_full_disk_names_the_file_keeps_the_rounds_and_resumes(
    folders, tmp_path, invoke, monkeypatch
):
    real = files.write_all
    writes: list[str] = []

    def disk_full(tmp, data):
        name = Path(tmp).name.split(".")[1]  # .layers.csv.XXXX.tmp -> layers
        writes.append(name)
        if name == "layers" and writes.count("layers") == 2:  # round 1's layers.csv
            real(tmp, data[: len(data) // 2])  # half of it reaches the disk, then no space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tmp, data)

    args = ["run", "--dataset", "mnist-sample", "--rounds", "3", "--iterations", "60",
            "--eval-every", "30", "--threads", "1", "--out", "run", *FLAGS]  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(files, "write_all", disk_full)
        line = one_line(invoke(*args), 1)
    assert line == (
        "Error: could not write 'run/layers.csv': No space left on device; rounds 0-1 are saved "
        "in run; once fixed, continue with: python cli.py run --resume run"
    )
    run = tmp_path / "run"
    assert not list(run.glob(".*.tmp"))
    assert len(pd.read_csv(run / "layers.csv").groupby("round")) == 1  # round 0's, whole
    assert list(pd.read_csv(run / "results.csv")["round"]) == [0]
    assert invoke("run", "--resume", "run", *FLAGS).returncode == 0
    same_tables(run, folders["whole"])


def test_a_folder_that_turned_read_only_is_named_and_the_run_resumes(folders, tmp_path, invoke):
    run = tmp_path / "run"
    shutil.copytree(folders["cut"], run)
    with read_only(run):  # a real OSError from the real write
        line = one_line(invoke("run", "--resume", "run", *FLAGS), 1)
    assert line in (
        f"Error: could not write 'run/checkpoint.pt': {reason}; rounds 0-1 are saved in run; "
        "once fixed, continue with: python cli.py run --resume run"
        for reason in ("Operation not permitted", "Permission denied")
    )
    assert snapshot(run).keys() == snapshot(folders["cut"]).keys()
    assert invoke("run", "--resume", "run", *FLAGS).returncode == 0
    same_tables(run, folders["whole"])


def test_tables_a_stopped_run_lacks_are_written_from_its_checkpoint(folders, tmp_path, invoke):
    run = tmp_path / "run"
    shutil.copytree(folders["whole"], run)
    (run / "history.csv").unlink()  # stopped after the last checkpoint, before its tables
    lines = (run / "results.csv").read_text().splitlines(keepends=True)
    (run / "results.csv").write_text("".join(lines[:-1]))  # the round before the last
    done = invoke("run", "--resume", "run", *FLAGS)
    assert done.returncode == 0, done.stderr
    same_tables(run, folders["whole"])
    assert "already complete" in one_line(invoke("run", "--resume", "run", *FLAGS))


@pytest.mark.slow
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(tmp_path, cli_env):
    """SIGINT while the libraries load, a moment later (the data loading, on an idle machine),
    and while round 0 trains; each moment is waited for, in the process's maps or its files."""
    args = [sys.executable, str(ROOT / "cli.py"), "run", "--dataset", "mnist-sample",
            "--iterations", "3000", "--rounds", "2", "--threads", "1", *FLAGS]  # fmt: skip
    processes = [
        subprocess.Popen([*args, "--out", f"run{i}"], cwd=tmp_path, env=cli_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for i in range(3)
    ]

    def loading_torch(process: subprocess.Popen) -> bool:
        try:
            return "libtorch" in Path(f"/proc/{process.pid}/maps").read_text()
        except OSError:  # it already ended
            return True

    def a_moment_later(process: subprocess.Popen) -> bool:  # whatever it is doing by then
        if not loading_torch(process):
            return False
        time.sleep(1.2)
        return True

    def training(process: subprocess.Popen) -> bool:  # config.json is written after the data
        return process.poll() is not None or (tmp_path / "run2" / "config.json").exists()

    moments = [loading_torch, a_moment_later, training]
    for process, moment in zip(processes, moments, strict=True):
        deadline = time.monotonic() + 600  # a hang guard, not a budget
        while not moment(process) and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
    for i, process in enumerate(processes):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 130, stderr
        assert "Traceback" not in stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Interrupted"), stderr
        folder = tmp_path / f"run{i}"
        assert not folder.exists() or (folder / "checkpoint.pt").exists(), stderr


def test_ctrl_c_while_a_command_loads_torch_waits_for_the_import_then_stops():
    """Raised inside torch's start-up, where its C++ calls back into Python, a KeyboardInterrupt
    aborted the process with a C++ trace (seen beside two busy loops): the Ctrl-C is held until
    the import is done, then answered as the first Ctrl-C."""
    from lottery_core import cli

    previous = signal.signal(signal.SIGINT, cli._first_ctrl_c)  # as main() sets it
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with cli.loading_libraries():
                with cli.loading_libraries():  # nested loads hold it too
                    signal.raise_signal(signal.SIGINT)
                    steps.append("inner import done")
                steps.append("outer import done")
        assert steps == ["inner import done", "outer import done"]
        assert signal.getsignal(signal.SIGINT) is cli._later_ctrl_c  # answered once
        with cli.loading_libraries():  # with no Ctrl-C, nothing happens
            steps.append("quiet")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert steps[-1] == "quiet"


# -- 6. divergence is reported -------------------------------------------------------------


def test_an_exploding_loss_is_flagged_in_the_table_results_and_report(tmp_path, invoke):
    result = invoke("run", "--dataset", "mnist-sample", "--rounds", "2", "--iterations", "60",
                    "--eval-every", "30", "--threads", "1", "--lr", "1e4", "--out", "run",
                    *FLAGS)  # fmt: skip
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()[1:3 + 1]
    assert header.split()[-1] == "flag" and all(row.split()[-1] == "diverged" for row in rows)
    assert list(pd.read_csv(tmp_path / "run" / "results.csv")["flag"]) == ["diverged"] * 2
    assert invoke("report", "run").returncode == 0
    text = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "the dense round (round 0) is flagged diverged: its loss exploded (try a lower --lr); " \
           "no verdict." in text  # fmt: skip
    assert "| flag |" in text and "| diverged |" in text


def test_flags_from_the_losses_and_the_accuracy():
    def rows(*losses):
        return [{"train_loss": loss, "val_loss": 0.5} for loss in losses]

    assert divergence.check(rows(0.9, 0.3), 92.0, 10) == ""
    assert divergence.check(rows(0.9, 1e16), 92.0, 10) == "diverged"  # above 10 ln(10)
    assert divergence.check(rows(0.5, 2.2), 40.0, 10) == "diverged"  # 4x its start
    assert divergence.check(rows(2.3, 2.3), 14.9, 10) == "chance"  # at most 10% + 5 points
    assert divergence.check(rows(2.3, 2.3), 15.1, 10) == ""
    assert divergence.check(rows(0.7, 0.69), 54.0, 2) == "chance"
    assert math.isnan(divergence.round_flag(rows(0.9, 0.3), 92.0, 10))  # an empty cell


# -- 7. what a hostile tester found ----------------------------------------------------------


def test_a_lock_that_is_a_link_or_has_other_names_is_refused_and_left_alone(
    folders, tmp_path, invoke
):
    """The run writes its pid into ``.lock``: never into a user's file that ``.lock`` names."""
    mine = tmp_path / "mine.txt"
    mine.write_text("my notes\n")
    run = tmp_path / "run"
    shutil.copytree(folders["cut"], run)
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(mine)
    before = snapshot(run)
    assert one_line(invoke("run", "--resume", "run", *FLAGS)) == (
        "Error: 'run/.lock' is a symbolic link, not this tool's lock file; remove it (nothing "
        "was changed)"
    )
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / ".lock").symlink_to(mine)
    line = one_line(invoke("run", "--dataset", "mnist-sample", "--iterations", "60", "--rounds",
                           "1", "--threads", "1", "--out", "fresh", *FLAGS))  # fmt: skip
    assert line.startswith("Error: 'fresh/.lock' is a symbolic link")
    (run / ".lock").unlink()
    os.link(mine, run / ".lock")  # a hard link: the same file under a second name
    assert one_line(invoke("run", "--resume", "run", *FLAGS)) == (
        "Error: 'run/.lock' has other names, not this tool's lock file; remove it (nothing "
        "was changed)"
    )
    assert mine.read_text() == "my notes\n"
    assert {n: b for n, b in snapshot(run).items() if n != ".lock"} == {
        n: b for n, b in before.items() if n != ".lock"
    }
    assert [p.name for p in (tmp_path / "fresh").iterdir()] == [".lock"]


HOSTILE = "run;touch HINT_PWNED"


def pasted(line: str, cwd: Path) -> list[str]:
    """The command after ``with: `` (or ``run: ``) in ``line`` as the shell splits it, once
    pasted into a shell whose ``python`` does nothing (only an injected command leaves a
    trace)."""
    command = re.search(r"(?:with|run): (python cli\.py .*?)(; nothing was changed)?$", line)[1]
    subprocess.run(["bash", "-c", f"python() {{ :; }}; {command}"], cwd=cwd, check=True)
    assert not (cwd / "HINT_PWNED").exists(), command
    return shlex.split(command)


def test_every_printed_command_is_quoted_for_the_shell(folders, tmp_path, invoke, monkeypatch):
    args = ["run", "--dataset", "mnist-sample", "--rounds", "3", "--iterations", "60",
            "--eval-every", "30", "--threads", "1", "--out", HOSTILE, *FLAGS]  # fmt: skip
    stopped = invoke_with_ctrl_c_at_write(
        invoke, monkeypatch, lambda folder, state: state.next_round == 2, *args
    )
    assert stopped.returncode == 130
    assert pasted(stopped.stderr.strip(), tmp_path) == ["python", "cli.py", "run", "--resume",
                                                        HOSTILE]  # fmt: skip
    refused = one_line(invoke(*args))  # an existing --out says how to continue it
    assert pasted(refused, tmp_path) == ["python", "cli.py", "run", "--resume", HOSTILE]

    real = files.write_all

    def disk_full(tmp, data):
        if ".results.csv." in tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tmp, data)

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_all", disk_full)
        full = one_line(invoke("run", "--resume", HOSTILE, *FLAGS), 1)
    assert pasted(full, tmp_path) == ["python", "cli.py", "run", "--resume", HOSTILE]

    flip(tmp_path / HOSTILE / "checkpoint.pt")
    damaged = one_line(invoke("run", "--resume", HOSTILE, *FLAGS))
    assert pasted(damaged, tmp_path) == ["python", "cli.py", "run", "--resume", HOSTILE,
                                         "--from-previous"]  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_while_cli_py_imports_and_a_second_ctrl_c_are_one_line(tmp_path, cli_env):
    """SIGINT at cli.py's first import (its ``_json`` is mapped), and twice on a training run:
    the second arrives while the first is being answered."""
    args = [sys.executable, str(ROOT / "cli.py"), "run", "--dataset", "mnist-sample",
            "--iterations", "3000", "--rounds", "3", "--threads", "1", *FLAGS]  # fmt: skip

    def maps(process: subprocess.Popen) -> str:
        try:
            return Path(f"/proc/{process.pid}/maps").read_text()
        except OSError:  # it already ended
            return "_json"

    def check(process: subprocess.Popen, stderr: str) -> None:
        assert process.returncode == 130, stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Interrupted"), stderr

    for i in range(3):
        process = subprocess.Popen([*args, "--out", f"early{i}"], cwd=tmp_path, env=cli_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while "_json" not in maps(process) and time.monotonic() < deadline:
            pass  # no sleep: the window is a few milliseconds
        process.send_signal(signal.SIGINT)
        check(process, process.communicate(timeout=60)[1])
        assert not (tmp_path / f"early{i}").exists()

    process = subprocess.Popen([*args, "--out", "twice"], cwd=tmp_path, env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "twice" / "results.csv").exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    first = os.read(process.stderr.fileno(), 65536)  # the first Ctrl-C is being answered
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    check(process, (first + rest).decode())
    assert (tmp_path / "twice" / "checkpoint.pt").exists()


def test_a_resume_of_a_folder_whose_run_is_starting_names_the_holder(tmp_path, invoke, cli_env):
    (tmp_path / "starting").mkdir()  # a run between taking its folder and writing config.json
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "starting")],
                              env=cli_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        expected = (f"Error: 'starting' is in use by another lottery process (pid {holder.pid}); "
                    "wait for it to finish or stop it")  # fmt: skip
        assert one_line(invoke("run", "--resume", "starting", *FLAGS)) == expected
        assert one_line(invoke("sweep", "--resume", "starting")) == expected
    finally:
        holder.communicate("")
    assert [p.name for p in (tmp_path / "starting").iterdir()] == [".lock"]


def test_a_full_disk_during_a_resume_is_one_line_and_it_resumes_again(
    folders, tmp_path, invoke, monkeypatch
):
    """Without --quiet: the progress bar must not add lines around the error."""
    run = tmp_path / "run"
    shutil.copytree(folders["cut"], run)
    real = files.write_all

    def disk_full(tmp, data):
        if ".history.csv." in tmp:
            real(tmp, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tmp, data)

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_all", disk_full)
        line = one_line(invoke("run", "--resume", "run"), 1)
    assert line == (
        "Error: could not write 'run/history.csv': No space left on device; rounds 0-2 are saved "
        "in run; once fixed, continue with: python cli.py run --resume run"
    )
    assert not [p for p in run.iterdir() if files.is_own_temp(p.name)]
    assert invoke("run", "--resume", "run", *FLAGS).returncode == 0
    same_tables(run, folders["whole"])


def test_resume_removes_only_temporary_files_it_can_prove_it_wrote(folders, tmp_path, invoke):
    run = tmp_path / "run"
    shutil.copytree(folders["cut"], run)
    users = {".results.csv.backup.tmp": b"my backup\n", ".checkpoint.pt.old.tmp": b"old\n",
             ".results.csv.12345678.tmp": b"mine too\n"}  # fmt: skip
    for name, data in users.items():
        (run / name).write_bytes(data)
    leftover = run / files.temp_name("results.csv")  # what a killed writer leaves
    leftover.write_bytes(b"half a tab")
    assert invoke("run", "--resume", "run", *FLAGS).returncode == 0
    same_tables(run, folders["whole"])
    assert {name: (run / name).read_bytes() for name in users} == users
    assert not leftover.exists()
