"""Ray as the engine: every unit of work (a run, or a run's first round) is one Ray task.

By default a sweep starts an embedded Ray instance on this machine: bound to loopback only, no
dashboard, a modest object store, and ``workers x threads`` CPUs so that ``workers`` runs train
at once with ``threads`` torch threads each and the cores are not oversubscribed. ``address``
sends the same work to an existing cluster instead; a process that already called
``ray.init`` (a notebook, a test) is used as it is. Only sweeps and ``run --workers`` import
this module, and Ray is imported inside it on first use, so a plain run never loads Ray.

A unit is a function named by ``"module:function"`` with keyword arguments; it runs in a Ray
worker, brings one run folder further and returns. Units restart safely, since a run resumes
from its last checkpoint: a worker that dies (killed, out of memory) has its unit retried by
Ray (``max_retries``); a unit that fails for its own reason (a ``LotteryError``: a diverging
loss...) is recorded with its one-line error and not retried, the units that depend on it are
skipped, and everything else finishes. Ctrl-C cancels the running units (they stop like a run
does on Ctrl-C: finished rounds stay) and raises :class:`EngineInterrupted`; the embedded
instance is then shut down with all its processes. A Ctrl-C while it starts or shuts down is held
until that is done, then answered (``ctrl_c_held``), so none of its processes outlives the
driver.

Ray lowers its workers' priority (niceness +15) unless told otherwise. The units are the
training the user asked for, so the embedded instance's workers keep the priority the command
started with (``nice -n 10 lottery sweep ...`` still makes them nice); beside other work at the
default priority, Ray's +15 left each worker a few percent of a core. ``RAY_worker_niceness`` in
the environment is respected, and every unit records its worker's niceness.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import interrupts
from .errors import Interrupted, LotteryError
from .resolution import default_threads

LOOPBACK = "127.0.0.1"
OBJECT_STORE_BYTES = 128 * 1024**2  # units exchange small dicts; files carry the results
MAX_RETRIES = 3  # a unit whose worker died is run again this many times
CANCEL_WAIT_S = 15.0
CONNECT_TIMEOUT_S = 3.0  # how long an --address may take to answer before it is refused
# Ray uses loopback for a node's address only with its cluster mode off; the embedded instance
# and a cluster on 127.0.0.1 need that, a real multi-machine cluster must not have it.
_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
WORKER_NICENESS = "RAY_worker_niceness"  # Ray's own setting: added to a worker's niceness


class EngineInterrupted(Exception):
    """Ctrl-C: the running units were cancelled; every finished round is on disk."""


@dataclass(frozen=True)
class Plan:
    """Where the units run: ``workers`` at once (``None``: as many as the cluster's CPUs fit),
    with ``threads`` torch threads each, on the embedded instance or at ``address``."""

    workers: int | None
    threads: int
    address: str | None = None

    def describe(self) -> str:
        where = "local Ray" if self.address is None else f"Ray at {self.address}"
        many = (
            "as many workers as the cluster fits"
            if self.workers is None
            else (f"{self.workers} worker{'s' if self.workers != 1 else ''}")
        )
        return f"{many}, {self.threads} thread{'s' if self.threads != 1 else ''} each, {where}"


def plan(workers: int | None, address: str | None, threads: int | None) -> Plan:
    """The thread rule for parallel runs: ``workers`` defaults to this machine's cores and each
    run gets ``cores // workers`` threads (at least one); on a cluster a run gets one thread
    unless the config says otherwise."""
    if workers is not None and workers < 1:
        raise LotteryError(f"--workers must be at least 1 (got {workers})")
    if address is not None and not address.strip():
        raise LotteryError("--address must name a Ray cluster (host:port, or auto)")
    check_address(address)
    cores = default_threads()
    if address is None:
        workers = workers or cores
        threads = threads or max(1, cores // workers)
    else:
        threads = threads or 1
    return Plan(workers, threads, address)


def check_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """One line within ``timeout`` seconds if no Ray answers at ``address`` (``host:port``): Ray
    itself would retry for minutes, printing its retries, where nothing listens and where
    something else does. A Ray cluster's address (its GCS, or a Ray Client server) is a gRPC
    server, which answers a client's HTTP/2 preface with its SETTINGS frame at once; a port that
    stays silent, closes or says something else is not one. ``auto`` and a host without a port
    are left to Ray, as is the protocol where Ray speaks TLS (``RAY_USE_TLS``)."""
    if address is None or address.strip() == "auto":
        return
    where = address.strip().removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        return
    import socket

    hint = "start it with 'ray start --head' or check --address"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            answer = _http2_answer(conn, timeout)
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise LotteryError(
            f"cannot connect to the Ray cluster at {address}: nothing answers there ({why}"
            f"{f' in {timeout:g} s' if isinstance(exc, TimeoutError) else ''}); {hint}"
        ) from None
    if answer is not None:
        raise LotteryError(
            f"cannot connect to the Ray cluster at {address}: something listens there but it is "
            f"not Ray ({answer}); {hint} (the head's address is the one 'ray start --head' "
            "prints, port 6379 by default)"
        )


# A client's HTTP/2 connection preface and an empty SETTINGS frame (RFC 9113, section 3.4).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _http2_answer(conn: Any, timeout: float) -> str | None:
    """``None`` if the peer on ``conn`` answers the HTTP/2 preface within ``timeout`` seconds as
    a gRPC server does (its first frame a SETTINGS frame on stream 0), else what it did instead,
    in words."""
    deadline = time.monotonic() + timeout
    header = b""
    try:
        conn.sendall(_HTTP2_PREFACE)
        while len(header) < 9:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = conn.recv(9 - len(header))
            if not chunk:
                return "it closed the connection without a word of HTTP/2"
            header += chunk
    except TimeoutError:
        left = "nothing" if not header else f"{len(header)} bytes"
        return f"it accepted the connection and said {left} in {timeout:g} s"
    except OSError as exc:
        return f"it dropped the connection: {exc.strerror or exc}"
    kind, stream = header[3], int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
    if kind == 4 and stream == 0:
        return None
    return f"it answered {header[:9]!r}, not HTTP/2"


def is_loopback(address: str | None) -> bool:
    if address is None:
        return True
    host = address.rpartition(":")[0] if ":" in address else address
    host = host.removeprefix("ray://")
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


@contextmanager
def workers_at_driver_priority() -> Iterator[None]:
    """While Ray starts its processes, tell it to add nothing to its workers' niceness, unless
    the user's environment already says what to add; the driver's environment is restored."""
    if WORKER_NICENESS in os.environ:
        yield
        return
    os.environ[WORKER_NICENESS] = "0"
    try:
        yield
    finally:
        os.environ.pop(WORKER_NICENESS, None)


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Ctrl-C held back while Ray starts or stops the embedded instance's processes, then
    answered by the handler that was on (the CLI's first Ctrl-C, or Python's
    ``KeyboardInterrupt``). Raised inside ``ray.init``, a KeyboardInterrupt left the raylet's
    agents (the raylet itself, at times) running for a minute after the driver had exited (Ray
    knew none of them yet, so nothing shut them down), was lost in Ray's code (the sweep then
    ran to its end) or crashed the driver; inside ``ray.shutdown`` it would leave them too.
    Outside the main thread, or with no Python handler on, it changes nothing."""
    with interrupts.held():
        yield


def import_ray(address: str | None):
    """Import Ray, with loopback addressing for the embedded instance and loopback clusters."""
    if "ray" not in sys.modules and is_loopback(address):
        os.environ.setdefault(_LOCAL_ONLY, "0")
    import ray

    return ray


@dataclass
class Unit:
    """One task: ``target(**kwargs)`` in a worker. ``run`` names the run folder it advances
    (progress counts runs), ``after`` the units that must have succeeded first, ``rounds`` how
    many rounds it trains and ``count`` (in the driver) how many its run has finished so far."""

    key: str
    run: str
    target: str
    kwargs: dict[str, Any]
    after: tuple[str, ...] = ()
    rounds: int = 1
    count: Callable[[], int] | None = None
    gpu: bool = True  # may ask for a GPU share (False: the config says device cpu)
    first: bool = False  # schedule before units that are not ``first`` (it unlocks others)


@dataclass
class Outcome:
    """How a unit ended: ``ok``, or its one-line ``error``; where it ran, and how long."""

    key: str
    ok: bool
    error: str = ""
    skipped: bool = False
    value: Any = None
    pid: int | None = None
    node: str | None = None
    host: str | None = None
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    niceness: int | None = None
    traceback: str = ""


@dataclass
class Event:
    """What the driver's callback sees after a change or a tick."""

    done: int
    running: int
    failed: int
    skipped: int
    total: int
    rounds_done: int
    rounds_total: int
    elapsed: float
    outcome: Outcome | None = None  # set when a unit just ended
    unit: Unit | None = None
    running_units: list[Unit] = field(default_factory=list)

    def eta(self, rounds_at_start: int = 0) -> float | None:
        """Seconds left at the rate rounds were finished since the start (None: unknown)."""
        done = self.rounds_done - rounds_at_start
        if done <= 0 or self.elapsed <= 0:
            return None
        return (self.rounds_total - self.rounds_done) * self.elapsed / done


def call(target: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What a Ray task runs: ``target(**kwargs)``, its errors as data (not retried)."""
    import socket

    started = time.perf_counter()
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "node": None,
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
    }
    try:
        import ray

        info["node"] = ray.get_runtime_context().get_node_id()
    except Exception:  # not in a Ray worker (called directly)
        pass
    module, _, name = target.partition(":")
    previous = os.getcwd()
    try:
        if kwargs.get("cwd"):  # the driver's folder: a relative data_dir means the same there,
            os.chdir(kwargs["cwd"])  # and config.json records it as given, not made absolute
        value = getattr(importlib.import_module(module), name)(**kwargs)
        return {**info, "ok": True, "value": value, **_spent(started)}
    except (KeyboardInterrupt, Interrupted):
        raise  # a cancel: the driver knows
    except LotteryError as exc:
        error, trace = str(exc), ""
    except Exception as exc:  # a bug or a plugin's error: one line here, the trace kept
        error, trace = f"{type(exc).__name__}: {exc}".splitlines()[0], traceback.format_exc()
    finally:
        os.chdir(previous)
    return {**info, "ok": False, "error": error, "traceback": trace, **_spent(started)}


def _spent(started: float) -> dict[str, float]:
    """A unit's wall time and its worker's peak resident memory so far (MiB): ``VmHWM`` where
    Linux has it (``ru_maxrss`` would include what the process inherited before exec)."""
    peak = None
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    if peak is None:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = usage / (1024**2 if sys.platform == "darwin" else 1024)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak}


class _Schedule:
    """The driver's state while ``Engine.run`` runs units: what waits (``first`` units ahead),
    what runs (by Ray object ref), how each unit ended, and the progress the callback sees."""

    def __init__(
        self,
        units: list[Unit],
        on_event: Callable[[Event], None] | None,
        limit: int | None,
        gpu_share: float,
    ) -> None:
        self.units = units
        self.on_event = on_event
        self.limit = limit  # units running at once (None: as many as Ray fits)
        self.gpu_share = gpu_share
        self.by_key = {u.key: u for u in units}
        order = sorted(range(len(units)), key=lambda i: (not units[i].first, i))
        self.waiting = [units[i] for i in order]
        self.outcomes: dict[str, Outcome] = {}
        self.inflight: dict[Any, Unit] = {}
        self.counted: dict[str, int] = {}  # each running unit's run's count when it was sent
        self.started = time.perf_counter()
        self.runs = {u.run for u in units}

    def counts(self) -> tuple[int, int, int, int]:
        """Runs done, running, failed and skipped: a run counts once, failed over skipped."""
        by_key, outcomes = self.by_key, self.outcomes
        failed = {by_key[k].run for k, o in outcomes.items() if not o.ok and not o.skipped}
        skipped = {by_key[k].run for k, o in outcomes.items() if o.skipped} - failed
        busy = {u.run for u in self.inflight.values()} - failed
        open_runs = {u.run for u in self.units if u.key not in outcomes}
        done = len(self.runs - open_runs - failed - skipped)
        return done, len(busy), len(failed), len(skipped)

    def rounds_done(self) -> int:
        """Rounds of the units that succeeded, and those running units have finished so far."""
        total = sum(self.by_key[k].rounds for k, o in self.outcomes.items() if o.ok)
        for unit in self.inflight.values():
            if unit.count is not None:
                now = unit.count() - self.counted.get(unit.key, 0)
                total += max(0, min(unit.rounds, now))
        return total

    def rounds_total(self) -> int:  # what failed or was skipped will not be trained
        outcomes = self.outcomes
        return sum(u.rounds for u in self.units if u.key not in outcomes or outcomes[u.key].ok)

    def emit(self, outcome: Outcome | None = None, unit: Unit | None = None) -> None:
        """Tell the callback (if any) where things stand; ``outcome``: ``unit`` just ended."""
        if self.on_event is None:
            return
        done, running, failed, skipped = self.counts()
        self.on_event(
            Event(
                done, running, failed, skipped, len(self.runs), self.rounds_done(),
                self.rounds_total(), time.perf_counter() - self.started,
                outcome, unit, list(self.inflight.values()),
            )
        )  # fmt: skip

    def submit_ready(self, remote: Any) -> None:
        """Send each waiting unit whose ``after`` units succeeded, while the limit allows; skip
        those that depend on a failure (in order, so ``first`` units go first)."""
        outcomes = self.outcomes
        for unit in list(self.waiting):
            bad = [k for k in unit.after if k in outcomes and not outcomes[k].ok]
            if bad:
                self.waiting.remove(unit)
                outcomes[unit.key] = Outcome(
                    unit.key, False, f"not run: {self.by_key[bad[0]].run} failed", skipped=True
                )
                self.emit(outcomes[unit.key], unit)
                continue
            if not all(k in outcomes for k in unit.after):
                continue
            if self.limit is not None and len(self.inflight) >= self.limit:
                break
            self.waiting.remove(unit)
            options: dict[str, float] = {}
            if unit.gpu and self.gpu_share > 0:
                options["num_gpus"] = self.gpu_share
            task = remote.options(**options) if options else remote
            self.counted[unit.key] = unit.count() if unit.count is not None else 0
            self.inflight[task.remote(unit.target, unit.kwargs)] = unit

    def skip_waiting(self) -> None:
        """Mark every waiting unit skipped: nothing runs that could unlock it."""
        for unit in self.waiting:
            self.outcomes[unit.key] = Outcome(unit.key, False, "not run", skipped=True)


class Engine:
    """A Ray connection (started, joined or borrowed) that runs units."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.ray: Any = None
        self.owned = False
        self.startup_s = 0.0
        self.gpu_share = 0.0

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start, join or borrow Ray. Whatever stops it half way (Ctrl-C, an error after
        ``ray.init``) shuts down what it started before it goes on up, ``with`` or not."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        started = time.perf_counter()
        ray = self.ray = import_ray(self.plan.address)
        quiet = {"log_to_driver": False, "logging_level": "error", "configure_logging": True}
        if ray.is_initialized():
            self._check_same_cluster()
        elif self.plan.address is None:
            assert self.plan.workers is not None  # ``plan`` sets it for the embedded instance
            with workers_at_driver_priority(), ctrl_c_held():
                ray.init(
                    address="local",
                    num_cpus=self.plan.workers * self.plan.threads,
                    include_dashboard=False,
                    object_store_memory=OBJECT_STORE_BYTES,
                    **quiet,
                )
                self.owned = True  # before a Ctrl-C held meanwhile is raised: stop() ends it
        else:
            try:
                ray.init(address=self.plan.address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise LotteryError(
                    f"cannot connect to the Ray cluster at {self.plan.address}: {first}"
                ) from None
            self.owned = True
        self.gpu_share = self._gpu_share()
        self.startup_s = time.perf_counter() - started

    def _check_same_cluster(self) -> None:
        wanted = self.plan.address
        if wanted is None or wanted == "auto":
            return
        current = self.ray.get_runtime_context().gcs_address
        if wanted.removeprefix("ray://") != current:
            raise LotteryError(
                f"this process is already connected to the Ray cluster at {current}; "
                f"it cannot also use --address {wanted}"
            )

    def _gpu_share(self) -> float:
        """A GPU share per run when the cluster has GPUs: the GPUs split over the runs that
        train at once (at most one GPU a run), so every worker slot can get one."""
        resources = self.ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        if gpus <= 0:
            return 0.0
        slots = self.plan.workers or max(1, int(resources.get("CPU", 1) // self.plan.threads))
        return math.floor(min(1.0, gpus / slots) * 10_000) / 10_000

    def stop(self) -> None:
        """Shut down the Ray this engine started or joined: the embedded instance's processes
        (GCS, raylet, its agents and workers) end with it. A Ctrl-C meanwhile is held until
        that is done (``ctrl_c_held``), so even a first one on the way out leaves none behind."""
        owned, self.owned = self.owned, False
        if owned and self.ray is not None and self.ray.is_initialized():
            with ctrl_c_held():
                self.ray.shutdown()

    def cluster(self) -> dict[str, Any]:
        """The nodes and resources units can use (for messages and tests)."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {"nodes": len(nodes), "resources": self.ray.cluster_resources()}

    # -- running units -------------------------------------------------------------------

    def run(
        self,
        units: list[Unit],
        on_event: Callable[[Event], None] | None = None,
        poll_s: float = 0.5,
    ) -> dict[str, Outcome]:
        """Run ``units`` (respecting ``after``) and return every unit's outcome by key."""
        ray = self.ray
        remote = ray.remote(call).options(
            num_cpus=self.plan.threads,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
        )
        schedule = _Schedule(units, on_event, self.plan.workers, self.gpu_share)
        try:
            schedule.submit_ready(remote)
            schedule.emit()
            while schedule.waiting or schedule.inflight:
                if not schedule.inflight:  # everything left waits on a unit that never ran
                    schedule.skip_waiting()
                    break
                ready, _ = ray.wait(list(schedule.inflight), num_returns=1, timeout=poll_s)
                for ref in ready:
                    unit = schedule.inflight.pop(ref)
                    outcome = self._outcome(unit, ref)
                    schedule.outcomes[unit.key] = outcome
                    schedule.submit_ready(remote)
                    schedule.emit(outcome, unit)
                if not ready:
                    schedule.emit()
        except KeyboardInterrupt:
            self._cancel(list(schedule.inflight))
            raise EngineInterrupted() from None
        return schedule.outcomes

    def _outcome(self, unit: Unit, ref: Any) -> Outcome:
        exceptions = self.ray.exceptions
        try:
            result = self.ray.get(ref)
        except exceptions.TaskCancelledError:
            return Outcome(unit.key, False, "cancelled")
        except exceptions.RayTaskError as exc:  # raised past ``call``: keep its first line
            cause = getattr(exc, "cause", None) or exc
            return Outcome(unit.key, False, f"{type(cause).__name__}: {cause}".splitlines()[0])
        except exceptions.RayError as exc:  # the worker or its node died more than it may
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return Outcome(
                unit.key,
                False,
                f"its worker died {MAX_RETRIES + 1} times ({type(exc).__name__}: {first})",
            )
        return Outcome(
            unit.key,
            bool(result["ok"]),
            result.get("error", ""),
            value=result.get("value"),
            pid=result.get("pid"),
            node=result.get("node"),
            host=result.get("host"),
            seconds=float(result.get("seconds", 0.0)),
            peak_rss_mb=float(result.get("peak_rss_mb", 0.0)),
            niceness=result.get("niceness"),
            traceback=result.get("traceback", ""),
        )

    def _cancel(self, refs: list[Any]) -> None:
        """Ask the running units to stop (a KeyboardInterrupt in each), then wait for them."""
        for ref in refs:
            try:
                self.ray.cancel(ref)
            except Exception:  # already finished
                pass
        if refs:
            try:
                self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                pass
