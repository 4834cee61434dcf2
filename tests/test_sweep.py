"""Sweeps and parallel trials on a real Ray, with real runs on the MNIST sample at tiny budgets.

One two-node Ray cluster on loopback (``ray.cluster_utils.Cluster``, one CPU a node) serves the
module; this process is its driver, so every in-process sweep goes through ``--address``. One
subprocess uses the embedded local Ray (the default) and is killed with SIGKILL. Checks are
folded together to keep the module's time down: workers start once per driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from lottery_core import engine, group_runs, sweep, sweep_file
from lottery_core.errors import LotteryError
from lottery_core.sweep_file import Sweep, point_name, read_sweep, to_toml

from .conftest import ROOT

# One thread a run everywhere: on a busy 2-core machine two threads a run are several times
# slower (results do not depend on it: tests/test_training.py).
TINY = {"dataset": "mnist-sample", "iterations": 100, "eval_every": 50, "rounds": 2, "threads": 1}
# Long enough to be stopped mid-run, even where a busy machine delays the Ctrl-C: eight rounds
# of 300 iterations, two trials.
LONGER = {**TINY, "rounds": 8, "iterations": 300}
TIME_COLUMNS = ["time_s"]


def write_sweep(path: Path, grid=None, trials=1, controls=False, **base) -> Path:
    path.write_text(to_toml(Sweep(base, grid or {}, trials, controls)))
    return path


def comparable(path: Path, drop=()) -> pd.DataFrame:
    frame = pd.read_csv(path)
    frame = frame.drop(columns=[c for c in [*TIME_COLUMNS, *drop] if c in frame.columns])
    keys = [c for c in ("experiment", "trial", "round") if c in frame.columns]
    return frame.sort_values(keys).reset_index(drop=True)


def locked_by(run_dir: Path) -> int | None:
    """The pid holding the run folder's lock right now (from /proc/locks), or None."""
    try:
        inode = os.stat(run_dir / ".lock").st_ino
        pid = int((run_dir / ".lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF"
        if "FLOCK" not in parts or "->" in parts:  # ours never wait for a lock
            continue
        at = parts.index("FLOCK")
        if parts[at + 4].endswith(f":{inode}") and parts[at + 3] == str(pid):
            return pid
    return None


def wait_until(condition, timeout=900.0, what="condition", process=None):  # a hang guard
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process ended early: {process.communicate()}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def run_dirs(folder: Path) -> list[Path]:
    return sorted(folder.glob("points/*/runs/*/trial_*"))


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on 127.0.0.1 with one CPU each; this process connected as the driver."""
    ray = engine.import_ray(engine.LOOPBACK)
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": engine.LOOPBACK,
            "object_store_memory": 80 * 1024**2}  # fmt: skip
    # At the driver's priority, as the embedded instance's workers: at Ray's default (+15) they
    # crawl beside any other work, and a busy CI would take an hour over this module.
    with engine.workers_at_driver_priority():
        nodes = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        nodes.add_node(**node)
    ray.init(address=nodes.address, log_to_driver=False, logging_level="error")
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {engine.LOOPBACK}
        yield nodes.address
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``run --trials 2 --controls`` in one process, the way it ran before Ray: the results
    every placement must reproduce. Its process must never have imported Ray."""
    folder = tmp_path_factory.mktemp("reference")
    args = ["run", *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()),
            "--trials", "2", "--controls", "--quiet", "--out", "group"]  # fmt: skip
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from lottery_core import cli; "
        f"cli.main({args!r}); "
        "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("NO_RAY"), done.stdout
    return folder / "group"


def test_a_bad_sweep_file_is_one_line_naming_the_entry_and_writes_nothing(tmp_path, invoke):
    cases = [
        ({"grid": {"prune": ["magnitude", "magnitud"]}}, "grid entry prune[1] = 'magnitud'"),
        ({"grid": {"lr": [0.001, -1.0]}}, "grid entry lr[1] = -1.0: lr: Input should be"),
        ({"grid": {"rounds": [2, "3"]}}, "grid entry rounds[1] = '3': rounds must be an integer"),
        ({"grid": {"scope": ["layerwise", "global"], "conv_rate": [0.1]}},
         "grid point conv_rate=0.1,scope=global: --conv-rate only apply"),
        ({"grid": {"batch_size": [60, 99999]}}, "grid point batch_size=99999: --batch-size"),
        ({"grid": {"lr": 0.1}}, "grid.lr must be a non-empty list"),
        ({"grid": {"lrr": [0.1]}}, "grid.lrr: unknown config key"),
        ({"grid": {"seed": [1, 1]}}, "grid entry seed[1] = 1 is listed twice"),
        ({"trials": 0}, "trials must be an integer of at least 1"),
        ({"out": "x"}, "out: a sweep names its run folders"),
    ]  # fmt: skip
    for i, (settings, fragment) in enumerate(cases):
        file = tmp_path / f"bad{i}.toml"
        grid = settings.pop("grid", {})
        text = to_toml(Sweep({"dataset": "mnist-sample", **settings}, grid))
        file.write_text(text.replace("trials = 1\n", "") if "trials" in settings else text)
        result = invoke("sweep", file, "--workers", "1")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, (fragment, result.stderr)
        assert lines[0].startswith(f"Error: invalid sweep file '{file}'"), lines[0]
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "results").exists()
    assert "is not a sweep folder" in invoke("sweep", "status", tmp_path).stderr


def test_point_names_are_stable_and_the_written_file_reads_back(tmp_path):
    # Pinned: renaming would orphan every existing sweep folder.
    assert point_name({"scope": "global", "lr": 0.0012, "rewind_iter": 100}) == (
        "lr=0.0012,rewind_iter=100,scope=global"
    )
    assert point_name({"prune": "magnitude", "download": False}) == (
        "download=false,prune=magnitude"
    )
    assert point_name({"data_dir": "/data/a b"}) == "data_dir=_data_a_b_a99e17"
    assert point_name({}) == "base"
    long = point_name({f"k{i}": "x" * 30 for i in range(6)})
    again = point_name({f"k{i}": "x" * 30 for i in range(6)})
    assert len(long) == sweep_file.NAME_MAX and long == again
    original = Sweep({"dataset": "mnist-sample", "lr": 0.002, "download": False},
                     {"scope": ["layerwise", "global"], "seed": [0, 3]}, 2, True)  # fmt: skip
    file = tmp_path / "s.toml"
    file.write_text(to_toml(original, "a header"))
    again = read_sweep(file)
    assert again.spec() == original.spec() and not again.differences(original)
    assert [point_name(v) for v in again.combinations()] == [
        "scope=layerwise,seed=0", "scope=layerwise,seed=3",
        "scope=global,seed=0", "scope=global,seed=3",
    ]  # fmt: skip


def test_variants_list_points_that_are_no_product_of_fields(tmp_path, plugins):
    """IMP beside pruning at init with its own steps: [[variant]] tables, crossed with the grid,
    named and validated like grid points, written back as they were read."""
    imp = {"prune": "magnitude", "prune_at": "imp", "init_steps": 1}
    synflow = {"prune": "random", "prune_at": "init", "init_steps": 100}
    original = Sweep({"dataset": "mnist-sample", "rounds": 2, "iterations": 10},
                     {"seed": [0, 1]}, variants=[imp, synflow])  # fmt: skip
    file = tmp_path / "v.toml"
    file.write_text(to_toml(original))
    again = read_sweep(file)
    assert again.spec() == original.spec() and not again.differences(original)
    assert again.fields == ["seed", "prune", "prune_at", "init_steps"]
    names = [p.name for p in sweep_file.validate(again, plugins, check_data=False)]
    assert names == [
        "init_steps=1,prune=magnitude,prune_at=imp,seed=0",
        "init_steps=100,prune=random,prune_at=init,seed=0",
        "init_steps=1,prune=magnitude,prune_at=imp,seed=1",
        "init_steps=100,prune=random,prune_at=init,seed=1",
    ]
    assert again.differences(Sweep(again.base, again.grid, variants=[imp]))
    cases = [
        ("[[variant]]\nprune = 'snip'\n[[variant]]\nscope = 'global'\n", "every variant names"),
        ("[[variant]]\nrounds = 3\n", "variant 1: rounds is in the base config too"),
        ("[[variant]]\nprunee = 'x'\n", "variant 1: prunee: not a config field"),
        ("[[variant]]\nprune = 'a'\n[[variant]]\nprune = 'a'\n", "variant 2 repeats variant 1"),
        ("variant = 3\n", "variant must be a list of tables"),
    ]
    for i, (text, fragment) in enumerate(cases):
        bad = tmp_path / f"bad{i}.toml"
        bad.write_text(f"rounds = 2\n{text}")
        with pytest.raises(LotteryError, match=re.escape(fragment)):
            read_sweep(bad)
    unknown = Sweep({"dataset": "mnist-sample"}, {}, variants=[{"prune": "snipp"}])
    with pytest.raises(LotteryError, match="grid point prune=snipp"):
        sweep_file.validate(unknown, plugins, check_data=False)


@pytest.mark.slow
def test_results_do_not_depend_on_placement_and_the_folder_reports(
    cluster, reference, invoke, tmp_path
):
    """The same rows from one process, a sweep on 1 worker, on 2 workers (over two nodes)
    and ``run --trials --controls --workers 2``; then report, status and a rerun."""
    expected = comparable(reference / "results.csv")
    file = write_sweep(tmp_path / "place.toml", {"scope": ["layerwise"]}, 2, True, **TINY)
    for workers in ("1", "2"):
        result = invoke("sweep", "run", file, "--workers", workers, "--address", cluster,
                        "--out", f"w{workers}", "--quiet")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "6 of 6 runs done" in result.stdout
        rows = pd.read_csv(tmp_path / f"w{workers}" / "results.csv")
        assert list(rows.columns[:2]) == ["point", "scope"] and set(rows["point"]) == {
            "scope=layerwise"
        }
        assert {"experiment", "trial"} <= set(rows.columns)
        got = comparable(tmp_path / f"w{workers}" / "results.csv", drop=["point", "scope"])
        pd.testing.assert_frame_equal(got[expected.columns], expected)
        point = tmp_path / f"w{workers}" / "points" / "scope=layerwise"
        assert (point / "aggregate.csv").is_file()
    placed = json.loads((tmp_path / "w2" / "status.json").read_text())["placed"]
    assert len({p["node"] for p in placed.values()}) == 2  # both nodes trained runs

    group = invoke(
        "run",
        *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()),
        "--trials",
        "2",
        "--controls",
        "--workers",
        "2",
        "--out",
        "g",
        "--quiet",
    )
    assert group.returncode == 0, group.stderr  # fmt: skip
    pd.testing.assert_frame_equal(comparable(tmp_path / "g" / "results.csv"), expected)

    # Workers that finish after their driver was killed leave the tables behind the runs: a
    # rerun of a finished sweep rebuilds every table from the runs' own results.
    point = tmp_path / "w2" / "points" / "scope=layerwise"
    tables = [point / "results.csv", point / "aggregate.csv", tmp_path / "w2" / "results.csv",
              tmp_path / "w2" / "aggregate.csv"]  # fmt: skip
    whole = [t.read_bytes() for t in tables]
    for table in tables:
        pd.read_csv(table).iloc[:1].to_csv(table, index=False)
    again = invoke("sweep", file, "--out", "w2", "--address", cluster)
    assert again.returncode == 0 and "all 6 runs are done" in again.stderr, again.stderr
    assert [t.read_bytes() for t in tables] == whole
    other = write_sweep(tmp_path / "other.toml", {"scope": ["global"]}, 2, True, **TINY)
    clash = invoke("sweep", other, "--out", "w2")
    assert clash.returncode == 2 and "holds a different sweep" in clash.stderr

    status = invoke("sweep", "status", "w2")
    assert status.returncode == 0 and "6 runs: 6 done" in status.stdout
    assert [line.split().count("done") for line in status.stdout.splitlines()
            if line.strip().startswith("scope=layerwise")] == [3, 3]  # fmt: skip

    report = invoke("report", "w2", "--by", "experiment")
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "w2" / "report" / "report.md").read_text()
    assert "- **imp**:" in text and "- **reinit**:" in text and "- **random-prune**:" in text
    assert (tmp_path / "w2" / "report" / "accuracy.png").stat().st_size > 1000
    labels = [label for label, _, _ in sweep.report_series(tmp_path / "w2", None)]
    assert labels == ["scope=layerwise / imp", "scope=layerwise / reinit",
                      "scope=layerwise / random-prune"]  # fmt: skip
    bad_by = invoke("report", "w2", "--by", "lr")
    assert bad_by.returncode == 2 and "--by lr: not a grid field" in bad_by.stderr


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_others_finish(cluster, invoke, tmp_path):
    file = write_sweep(tmp_path / "nan.toml", {"lr": [0.0012, 1e38]}, 1, False,
                       **{**TINY, "iterations": 50})  # fmt: skip
    result = invoke("sweep", file, "--address", cluster, "--out", "nan")
    assert result.returncode == 1, result.stderr
    # The progress line (a terminal rewrites it in place; a log gets one line per change).
    assert "runs: 0/2 done, 2 running, 0 failed; 0:00 elapsed, ETA ?" in result.stderr
    assert re.search(r"runs: 1/2 done, 0 running, 1 failed; 0:\d\d elapsed, ETA", result.stderr)
    assert "1 run(s) failed:\n  points/lr=1e+38/runs/imp/trial_0: round 0: the loss became nan" \
        in result.stderr  # fmt: skip
    assert f"Resume with: python cli.py sweep --resume nan --address {cluster}" in result.stderr
    assert "1 of 2 runs done" in result.stdout
    assert set(pd.read_csv(tmp_path / "nan" / "results.csv")["point"]) == {"lr=0.0012"}
    status = invoke("sweep", "status", "nan").stdout
    assert "2 runs: 1 done, 1 failed" in status and "the loss became nan" in status
    assert "resume with: python cli.py sweep --resume nan" in status


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(
    cluster, invoke, tmp_path, uninterrupted
):
    file = write_sweep(tmp_path / "kill.toml", {}, 2, False, **LONGER)
    victim: dict = {}

    def kill_a_worker() -> None:
        def busy():
            for run in run_dirs(tmp_path / "kill"):
                pid = locked_by(run)
                if pid and pid != os.getpid() and group_runs.rows(run) >= 1:
                    return run, pid
            return None

        found = wait_until(lambda: busy() or finished.is_set(), what="a run past its first round")
        if found is True:
            return  # the sweep ended first: asserted below
        run, pid = found
        victim.update(run=run, pid=pid, before=pd.read_csv(run / "results.csv"))
        os.kill(pid, signal.SIGKILL)

    finished = threading.Event()
    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    try:
        result = invoke("sweep", file, "--address", cluster, "--out", "kill", "--quiet")
    finally:
        finished.set()
        killer.join()
    assert victim, "the sweep finished before a worker was seen past its first round"
    assert result.returncode == 0, result.stderr
    assert "2 of 2 runs done" in result.stdout
    after = pd.read_csv(victim["run"] / "results.csv")
    assert len(after) == LONGER["rounds"]
    # The rounds before the kill were kept as they were (time_s too): resumed, not restarted.
    pd.testing.assert_frame_equal(after.iloc[: len(victim["before"])], victim["before"])
    assert int((victim["run"] / ".lock").read_text()) != victim["pid"]
    got = comparable(tmp_path / "kill" / "results.csv", drop=["point"])
    pd.testing.assert_frame_equal(got[uninterrupted.columns], uninterrupted)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pd.DataFrame:
    """The LONGER sweep's rows as two trials in one process, never stopped."""
    from lottery_core.api import run_trials

    out = tmp_path_factory.mktemp("whole") / "group"
    run_trials(trials=2, out=out, progress=False, **LONGER)
    return comparable(out / "results.csv")


@pytest.mark.slow
def test_ctrl_c_then_kill_9_of_the_driver_then_the_same_sweep_finishes(
    cluster, invoke, tmp_path, cli_env, uninterrupted
):
    file = write_sweep(tmp_path / "stop.toml", {}, 2, False, **LONGER)
    folder = tmp_path / "results" / "sweep-stop"

    def interrupt() -> None:
        wait_until(lambda: any(group_runs.rows(r) >= 1 for r in run_dirs(folder)), what="a round")
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt)
    sender.start()
    try:
        stopped = invoke("sweep", file, "--address", cluster)
    except KeyboardInterrupt:  # pragma: no cover - the signal came after the sweep's loop
        pytest.fail("Ctrl-C reached the test instead of the sweep")
    finally:
        sender.join()
    assert stopped.returncode == 130, stopped.stderr
    assert (
        "Interrupted: finished rounds are saved in results/sweep-stop. Resume with: python "
        f"cli.py sweep --resume results/sweep-stop --address {cluster}" in stopped.stderr
    )
    assert "Traceback" not in stopped.stderr  # fmt: skip
    first_rows = {r: pd.read_csv(r / "results.csv") for r in run_dirs(folder)
                  if group_runs.rows(r)}  # fmt: skip
    done_before = sum(group_runs.rows(r) for r in run_dirs(folder))
    if done_before == 2 * LONGER["rounds"]:  # never a failure for a slow machine
        pytest.skip("the Ctrl-C was answered only after every round had finished (a busy "
                    "machine): nothing was left to stop mid-sweep")
    assert 1 <= done_before < 2 * LONGER["rounds"]

    # The default engine, an embedded Ray bound to loopback, in a driver killed with SIGKILL.
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "sweep", "--resume", str(folder), "--workers",
         "2"], cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: sum(group_runs.rows(r) for r in run_dirs(folder)) > done_before,
                   what="progress of the resumed sweep", process=driver)  # fmt: skip
        live = json.loads((folder / "status.json").read_text())["driver"]
        driver.kill()
        driver.communicate()
        assert live["pid"] == driver.pid and not live["finished"]
        assert sum(group_runs.rows(r) for r in run_dirs(folder)) < 2 * LONGER["rounds"]  # work left
        # Its workers go with it (Ray kills a dead driver's workers): no run stays locked.
        wait_until(lambda: not any(locked_by(r) for r in run_dirs(folder)),
                   what="the killed driver's workers to let go of their runs")  # fmt: skip
        # Ray notices a dead driver after a heartbeat or two; on a fast machine its workers may
        # finish the last rounds first. Either way the folder must say what is left.
        left = sum(group_runs.rows(r) for r in run_dirs(folder)) < 2 * LONGER["rounds"]
    finally:  # Ray's agents outlive a killed driver by a minute or two: end them now
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.communicate()
    assert "driver: not running" in invoke("sweep", "status", folder).stdout

    finished = invoke("sweep", file, "--address", cluster, "--quiet")
    assert finished.returncode == 0, finished.stderr
    if left:
        assert "resuming:" in finished.stderr and "2 of 2 runs done" in finished.stdout
    else:
        assert "all 2 runs are done" in finished.stderr and "resuming:" not in finished.stderr
    for run, rows in first_rows.items():  # rounds kept across both stops
        pd.testing.assert_frame_equal(pd.read_csv(run / "results.csv").iloc[: len(rows)], rows)
    got = comparable(folder / "results.csv", drop=["point"])
    pd.testing.assert_frame_equal(got[uninterrupted.columns], uninterrupted)


def one_error(result, code: int = 2) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def test_an_address_where_nothing_answers_is_one_line_at_once(tmp_path, invoke):
    """Ray would retry for minutes, printing each retry: the address is tried first."""
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    file = write_sweep(tmp_path / "s.toml", **TINY)
    started = time.monotonic()
    result = invoke("sweep", file, "--address", f"127.0.0.1:{port}", "--out", "s")
    assert time.monotonic() - started < 30  # seconds, not Ray's minutes of retries
    assert one_error(result) == (
        f"Error: cannot connect to the Ray cluster at 127.0.0.1:{port}: nothing answers there "
        "(Connection refused); start it with 'ray start --head' or check --address"
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "answer, said",
    [
        (None, "it accepted the connection and said nothing in 3 s"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "it answered b'HTTP/1.1 ', not HTTP/2"),
        (b"", "it closed the connection without a word of HTTP/2"),
    ],
    ids=["silent", "http1", "closes"],
)
def test_an_address_where_something_else_listens_is_one_line_in_seconds(
    tmp_path, invoke, answer, said
):
    """A port that accepts TCP but is no Ray (silent, another protocol, closing at once): Ray
    would retry for minutes, its retries on stderr; one line within a few seconds instead."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:  # accepts, then answers ``answer`` (None: nothing at all)
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)
            if answer is not None:  # what the client says first is read, so a close is a FIN
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(1024)
                    conn.sendall(answer)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    file = write_sweep(tmp_path / "s.toml", **TINY)
    try:
        started = time.monotonic()
        result = invoke("sweep", file, "--address", f"127.0.0.1:{port}", "--out", "s")
        seconds = time.monotonic() - started
    finally:
        stop.set()
        thread.join(timeout=10)
        for conn in held:
            conn.close()
        server.close()
    assert seconds < 20, seconds  # the probe's 3 s, not Ray's minutes
    assert held, "the sweep never connected"
    assert one_error(result) == (
        f"Error: cannot connect to the Ray cluster at 127.0.0.1:{port}: something listens there "
        f"but it is not Ray ({said}); start it with 'ray start --head' or check --address (the "
        "head's address is the one 'ray start --head' prints, port 6379 by default)"
    )
    assert not (tmp_path / "s").exists()


def test_a_huge_grid_is_refused_at_once_and_equal_points_are_named(tmp_path, invoke):
    huge = write_sweep(tmp_path / "huge.toml", {"seed": list(range(1000)),
                                                "rewind_iter": list(range(1000))},
                       **TINY)  # fmt: skip
    started = time.monotonic()
    line = one_error(invoke("sweep", huge, "--out", "huge"))
    assert time.monotonic() - started < 30
    assert line == (
        f"Error: invalid sweep file '{huge}': the grid has 1,000,000 points (1000 seed x 1000 "
        "rewind_iter); a sweep takes at most 10,000: split it into several sweeps"
    )
    same = write_sweep(tmp_path / "same.toml", {"lr": [0.001, 1, 1.0]}, **TINY)
    line = one_error(invoke("sweep", same, "--out", "same"))
    assert line == (
        f"Error: invalid sweep file '{same}': grid entries lr[1] = 1 and lr[2] = 1.0 give the "
        "same configuration (points lr=1 and lr=1.0); keep one"
    )
    assert not (tmp_path / "huge").exists() and not (tmp_path / "same").exists()


def test_the_printed_resume_command_is_quoted_for_the_shell(tmp_path):
    folder = tmp_path / "sweep;touch HINT_PWNED"
    address = "127.0.0.1:6379;touch HINT_PWNED"  # --address is typed by a user too
    line = sweep.resume_command(folder, 2, address)
    assert shlex.split(line) == ["python", "cli.py", "sweep", "--resume", str(folder),
                                 "--workers", "2", "--address", address]  # fmt: skip
    subprocess.run(["bash", "-c", f"python() {{ :; }}; {line}"], cwd=tmp_path, check=True)
    assert not (tmp_path / "HINT_PWNED").exists()


@pytest.mark.parametrize(
    "file", sorted((ROOT / "examples" / "sweeps").glob("*.toml")), ids=lambda p: p.stem
)
def test_every_example_sweep_file_reads(file):
    """The sweep files the README and the results' READMEs name are valid sweep files (their
    plugin names are checked when they run: some name the example package's strategies)."""
    found = read_sweep(file)
    assert found.trials >= 1 and found.base["dataset"]
