"""A group's IMP trials trained in lockstep: round r of every trial as one batched model.

Why: a group's trials are N runs of one protocol that differ only in their seeds, so the
training of their round r is N networks of one shape, which ``batched.train_members`` trains as
one model. Every trial's run stays an ordinary run (``runs.start``/``runs.resume`` in a thread of
its own: its folder, checkpoints, resume, hooks and tables unchanged); only the training of each
round is handed to a ``Lockstep`` (``Experiment.round_trainer``). The lockstep waits until
every run still going has handed in a round, trains those with the same settings as the members
of one batched model, and hands each run its round back (``Trained``), which the run records as
its own. Pruning, reinitialisation and writing stay in each run's thread (the GIL serialises
them; they are a small share of a round); the arithmetic of training is batched.

What holds: each member is its single run as ``batched`` states (on the CPU, LeNet-300-100 bit
for bit), so a group trained in lockstep writes the tables a serial group writes, the
``time_s`` column aside (each run's share of its batch's wall time). A run whose loss stops
being finite fails as it would alone (its ``NonFiniteLoss``), the others go on. A model or
optimizer the batched trainer cannot take (``batched.unsupported``) trains in its own thread as
it would anyway. Ctrl-C (``stop``) stops the batch under way at its next evaluation and every
waiting run: each saves what it finished, as a serial run does.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import masks
from .batched import Member, train_members, training_threads, unsupported
from .errors import Interrupted
from .experiment import Experiment, Trained

WAIT = 0.2  # seconds between looks at a stop while waiting for a batch or a thread


@dataclass
class _Request:
    """One run's round, handed in: the member it trains as, and (once trained) its outcome."""

    experiment: Experiment
    round_index: int
    member: Member
    key: str
    result: Trained | BaseException | None = None


class Lockstep:
    """The round trainer of ``runs`` runs going at once (``Experiment.round_trainer``): each
    call hands in one run's round and returns it trained, once every live run has handed one
    in. A run that ends (finished, failed or stopped) calls ``leave``."""

    def __init__(self, runs: int):
        self._cond = threading.Condition()
        self._live = runs
        self._waiting: list[_Request] = []
        self._stopped = False
        self.batches: list[int] = []  # members of each batch trained: what a test can check

    def __call__(self, experiment: Experiment, round_index: int) -> Trained | None:
        assert experiment.model is not None
        if unsupported(experiment.model, experiment.settings(round_index)) is not None:
            return None  # the run trains it itself, as it would alone
        parameters = {name: p.detach().clone() for name, p in experiment.parameters().items()}
        member = Member(masks.current_masks(experiment.layers), parameters,
                        experiment.seeds["data_order"])  # fmt: skip
        request = _Request(experiment, round_index, member, experiment.batch_key(round_index))
        with self._cond:
            self._check()
            self._waiting.append(request)
            batch = self._take()
        if batch:
            self._train(batch)
        with self._cond:
            while request.result is None:
                self._check()
                self._cond.wait(WAIT)
        if isinstance(request.result, BaseException):
            raise request.result
        return request.result

    def leave(self) -> None:
        """One run less to wait for: those waiting train now if it was the last awaited."""
        with self._cond:
            self._live -= 1
            batch = self._take()
        if batch:
            self._train(batch)

    def stop(self) -> None:
        """Ctrl-C: the batch under way stops at its next evaluation, waiting runs at once."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _check(self) -> None:
        if self._stopped:
            raise KeyboardInterrupt

    def _take(self) -> list[_Request]:
        """Every waiting request, once every live run has handed one in (lock held)."""
        if self._waiting and len(self._waiting) >= self._live:
            batch, self._waiting = self._waiting, []
            return batch
        return []

    def _train(self, batch: list[_Request]) -> None:
        groups: dict[str, list[_Request]] = {}
        for request in batch:
            groups.setdefault(request.key, []).append(request)
        for group in groups.values():
            try:
                self._train_group(group)
            except BaseException as exc:  # a stop, or a failure: each run raises it
                for request in group:
                    request.result = exc
            with self._cond:
                self._cond.notify_all()

    def _train_group(self, group: list[_Request]) -> None:
        first = group[0]
        experiment = first.experiment
        assert experiment.model is not None
        settings = experiment.settings(first.round_index)
        rewind_at = experiment.config.rewind_iter if first.round_index == 0 else 0

        def check(_steps: int) -> None:
            self._check()

        config = experiment.config
        started = time.perf_counter()
        with training_threads(config.threads, config.thread_rule, experiment.device) as rule:
            results = train_members(experiment.model, [r.member for r in group],
                                    experiment.data, settings, snapshot_at=rewind_at or None,
                                    progress=check, threads=rule)  # fmt: skip
        share = (time.perf_counter() - started) / len(group)
        self.batches.append(len(group))
        for request, result in zip(group, results, strict=True):
            if result.error is not None:  # the run fails as it would alone
                request.result = result.error
            else:
                request.result = Trained(result.parameters, result.outcome, result.snapshot,
                                         share)  # fmt: skip


def run_together(
    jobs: Sequence[Callable[[Lockstep], None]], lockstep: Lockstep | None = None
) -> list[BaseException | None]:
    """Run ``jobs`` (each one run, given the lockstep to train its rounds with: ``lockstep``, or
    a new one) in threads of their own, in this context (the command's report); returns each
    job's exception or ``None``. Ctrl-C here stops them all; each saves what it finished, then
    the first run's ``Interrupted`` is raised."""
    lockstep = Lockstep(len(jobs)) if lockstep is None else lockstep
    errors: list[BaseException | None] = [None] * len(jobs)

    ended = [threading.Event() for _ in jobs]  # not Thread.join: a join that Ctrl-C interrupts
    # can report a live thread as ended (CPython's gh-90882), and its run still holds its folder

    def body(index: int, job: Callable[[Lockstep], None]) -> None:
        try:
            job(lockstep)
        except BaseException as exc:
            errors[index] = exc
        finally:
            lockstep.leave()
            ended[index].set()

    for index, job in enumerate(jobs):
        threading.Thread(target=contextvars.copy_context().run, args=(body, index, job),
                         name=f"lockstep-{index}", daemon=True).start()  # fmt: skip
    try:
        for event in ended:
            while not event.wait(WAIT):
                pass
    except KeyboardInterrupt:
        lockstep.stop()
        for event in ended:
            while not event.wait(WAIT):
                pass
        raise next((e for e in errors if isinstance(e, Interrupted)), KeyboardInterrupt()
                   ) from None  # fmt: skip
    return errors
