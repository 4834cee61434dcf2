"""The engine's embedded Ray instance, started in this process and stopped by it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lottery_core import engine

from .conftest import ROOT


@pytest.mark.slow
def test_the_embedded_workers_keep_the_drivers_priority_unless_told(monkeypatch):
    """Ray adds 15 to its workers' niceness by default: beside other work they would get a few
    percent of a core. The embedded instance's workers run at the driver's niceness, or at what
    ``RAY_worker_niceness`` adds when the user set it; each unit records its worker's."""
    ray = engine.import_ray(None)
    assert not ray.is_initialized()
    driver = os.nice(0)
    units = [engine.Unit(key=f"u{i}", run=f"r{i}", target="os:getpid", kwargs={}) for i in (0, 1)]
    for told, added in ((None, 0), ("3", 3)):
        if told is not None:
            monkeypatch.setenv(engine.WORKER_NICENESS, told)
        with engine.Engine(engine.plan(workers=2, address=None, threads=1)) as ours:
            outcomes = ours.run(units)
            engine.check_address(ray.get_runtime_context().gcs_address)  # Ray's GCS passes
        assert all(o.ok for o in outcomes.values()), outcomes
        assert {o.pid for o in outcomes.values()} != {os.getpid()}
        assert {o.niceness for o in outcomes.values()} == {driver + added}
        assert os.environ.get(engine.WORKER_NICENESS) == told  # the driver's environment kept
        assert not ray.is_initialized()


def _processes() -> dict[int, tuple[int, str]]:
    """Every live process: its parent and state (zombies are gone for what follows)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it just ended
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _descendants(pid: int, table: dict[int, tuple[int, str]]) -> set[int]:
    found, grew = {pid}, True
    while grew:
        grew = False
        for child, (parent, _) in table.items():
            if parent in found and child not in found:
                found.add(child)
                grew = True
    return found - {pid}


class FakeRay:
    """``ray`` as ``Engine`` uses it, recording its calls; a Ctrl-C arrives inside ``init`` (or
    ``shutdown``), as one did while Ray started its raylet and agents."""

    def __init__(self, interrupt: str):
        self.interrupt, self.calls, self.up = interrupt, [], False

    def is_initialized(self) -> bool:
        return self.up

    def init(self, **kwargs) -> None:
        self.calls.append("init")
        if self.interrupt == "init":
            signal.raise_signal(signal.SIGINT)
        self.up = True
        self.calls.append("init done")

    def cluster_resources(self) -> dict:
        return {"CPU": 2.0}

    def shutdown(self) -> None:
        self.calls.append("shutdown")
        if self.interrupt == "shutdown":
            signal.raise_signal(signal.SIGINT)
        self.up = False
        self.calls.append("shutdown done")


@pytest.mark.parametrize("interrupt", ["init", "shutdown"])
def test_a_ctrl_c_while_ray_starts_or_stops_is_answered_once_it_is_down(monkeypatch, interrupt):
    """Ctrl-C inside ``ray.init`` or ``ray.shutdown`` is held until Ray is up (then shut down
    again) or down, then raised: nothing of the embedded instance outlives the driver."""
    ray = FakeRay(interrupt)
    monkeypatch.setattr(engine, "import_ray", lambda address: ray)
    ours = engine.Engine(engine.plan(workers=1, address=None, threads=1))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with ours:
                assert ray.calls == ["init", "init done"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert ray.calls == ["init", "init done", "shutdown", "shutdown done"]
    assert not ray.up and not ours.owned


# When to press Ctrl-C: as a process whose command holds one of these has started (None: as
# the sweep's status.json says units run).
MOMENTS = {
    "as the raylet starts": ("raylet/raylet ",),
    "as its agents start": ("dashboard/agent.py", "runtime_env/agent/main.py"),
    "as units run": None,
}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("moment", ["as the raylet starts", "as its agents start", "as units run"])
def test_ctrl_c_leaves_no_ray_process_behind(tmp_path, cli_env, moment):
    """A Ctrl-C'd sweep (SIGINT to its process group, as a terminal sends it) shuts its
    embedded Ray down before it exits: within seconds no process that descended from the driver,
    nor any naming its Ray session, is left. Raised inside ``ray.init``, the KeyboardInterrupt
    left the raylet's two agents for a minute (or was lost, and the sweep ran on)."""
    (tmp_path / "s.toml").write_text(
        'trials = 2\ndataset = "mnist-sample"\nrounds = 6\niterations = 1000\neval_every = 500\n'
        "threads = 1\n"
    )
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "sweep", "s.toml", "--out", "s", "--workers", "1",
         "--quiet"], cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    seen: dict[int, str] = {}  # every process that descended from the driver, and its command
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pid in _descendants(driver.pid, _processes()):
                seen[pid] = _cmdline(pid) or seen.get(pid, "")  # after its exec, if it came
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        deadline = time.monotonic() + 300  # a hang guard
        while time.monotonic() < deadline and driver.poll() is None:
            started = MOMENTS[moment]
            if started is not None and any(m in c for c in seen.values() for m in started):
                break
            if started is None and _running(tmp_path / "s" / "status.json"):
                break
            time.sleep(0.01)
        assert driver.poll() is None, driver.communicate()
        os.killpg(driver.pid, signal.SIGINT)
        _, stderr = driver.communicate(timeout=120)
        done.set()
        watcher.join()
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert driver.returncode == 130 and lines[-1].startswith("Interrupted"), stderr
        assert all(line.startswith("sweep s.toml: ") for line in lines[:-1]), stderr  # its intro
        # Ray names its session's folder after the driver: session_<date>_<time>_<us>_<pid>.
        pattern = re.compile(rf"session_[0-9_-]+_{driver.pid}(?![0-9])")
        sessions = {m for c in seen.values() for m in pattern.findall(c)}
        assert sessions, seen  # Ray was started: its processes name their session

        def left() -> list[str]:
            table = _processes()
            ours = {p for p in seen if p in table and table[p][1] != "Z"}
            ours |= {p for p, (_, state) in table.items() if state != "Z"
                     and any(s in _cmdline(p) for s in sessions)}  # fmt: skip
            return sorted(f"{p} {_cmdline(p)[:120]}" for p in ours)

        deadline = time.monotonic() + 10
        while left() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left(), left()
    finally:
        done.set()
        for pid, command in seen.items():  # what this test started and left (a failure above)
            if command and _cmdline(pid) == command:  # the same process, not a reused pid
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()
            driver.communicate()


def _running(status: Path) -> list[str]:
    """The runs a sweep's ``status.json`` says are running (none while it is being written)."""
    try:
        return list(json.loads(status.read_text()).get("running", []))
    except (OSError, ValueError):
        return []
