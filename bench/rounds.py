"""Whole rounds: the share of a round spent evaluating, and the peak memory of a default run."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lottery_core import training
from lottery_core.config import make_config
from lottery_core.experiment import Experiment
from lottery_core.progress import Progress
from lottery_core.specs import DatasetSplits

from .steps import num_threads

REPO = Path(__file__).resolve().parents[1]
PAPER_ITERATIONS = 50_000


@dataclass
class EvalShare:
    """Medians over repeats of one measured round, and the 50K-iteration round it implies."""

    iterations: int
    round_s: float
    eval_s: float
    end_eval_s: float

    @property
    def share(self) -> float:
        return self.eval_s / self.round_s

    def extrapolated(self, iterations: int = PAPER_ITERATIONS) -> tuple[float, float]:
        """(round seconds, evaluation share) of an ``iterations`` round: everything but the two
        end-of-round test evaluations scales with the iteration count."""
        scale = iterations / self.iterations
        round_s = (self.round_s - self.end_eval_s) * scale + self.end_eval_s
        eval_s = (self.eval_s - self.end_eval_s) * scale + self.end_eval_s
        return round_s, eval_s / round_s


@contextmanager
def _timed_evaluate(test_x) -> Iterator[dict[str, float]]:
    """Wrap ``training.evaluate`` to add up its wall time (all calls, and test-set calls).

    Every evaluation of a round goes through that one function and blocks the round while it
    runs, so this is the round's wall time spent evaluating.
    """
    original = training.evaluate
    spent = {"all": 0.0, "test": 0.0}

    def timed(model, x, y, images=lambda batch: batch):
        start = time.perf_counter()
        try:
            return original(model, x, y, images)
        finally:
            elapsed = time.perf_counter() - start
            spent["all"] += elapsed
            if x is test_x:
                spent["test"] += elapsed

    training.evaluate = timed
    try:
        yield spent
    finally:
        training.evaluate = original


def eval_share(data: DatasetSplits, iterations: int, eval_every: int, repeats: int) -> EvalShare:
    """Time whole LeNet-300-100 rounds of ``iterations`` through ``Experiment.train``, on the
    config's thread count (as ``Experiment.run`` sets it)."""
    config = make_config(
        model="lenet_fc",
        dataset="mnist",
        iterations=iterations,
        eval_every=eval_every,
        rounds=100,
        device="cpu",
        seed=0,
    )
    experiment = Experiment(config, data=data)
    state = experiment.start()
    progress = Progress(iterations, enabled=False)
    rounds, evals, ends = [], [], []
    with num_threads(experiment.config.threads):  # type: ignore[arg-type]
        for repeat in range(repeats + 1):
            with _timed_evaluate(experiment.data.test_x) as spent:
                start = time.perf_counter()
                experiment.train(state, 1, progress)
                elapsed = time.perf_counter() - start
            if repeat:  # the first round is a warm-up
                rounds.append(elapsed)
                evals.append(spent["all"])
                ends.append(spent["test"])
    median = statistics.median
    return EvalShare(iterations, median(rounds), median(evals), median(ends))


_MEASURE_CHILD = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def memory_dataset() -> str:
    """Full MNIST where ``data/`` holds it (``../shared/data/unpack data``), else the sample."""
    present = (REPO / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    return "mnist" if present else "mnist-sample"


def peak_rss_mib(rounds: int, iterations: int, dataset: str) -> tuple[float, float]:
    """Peak resident memory (MiB) of ``cli.py run`` on ``dataset``, and of a process that only
    imports what that run imports; each the lone child of a small parent, so no other child
    of the benchmark is counted."""
    with tempfile.TemporaryDirectory() as tmp:
        run = [
            "cli.py",
            "run",
            "--no-download",
            "--dataset",
            dataset,
            "--rounds",
            str(rounds),
            "--iterations",
            str(iterations),
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(Path(tmp) / "run"),
        ]
        return _peak_rss(run), _peak_rss(["-c", _IMPORTS])


_IMPORTS = (
    "import lottery_core.cli, lottery_core.experiment, lottery_plugins.datasets, "
    "lottery_plugins.models, pandas"
)


def _peak_rss(arguments: list[str]) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE_CHILD, sys.executable, *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory run failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
