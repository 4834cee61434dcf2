"""bench.lockstep at a smoke-test size: it runs both groups, compares what it says it compares
and prints its verdict lines (timings are the bench's business, not a test's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import lockstep


def test_the_lockstep_bench_runs_both_groups_and_compares_their_tables(tmp_path):
    saved = tmp_path / "out.txt"
    lockstep.main(["--quick", "--keep", str(tmp_path / "groups"), "--save", str(saved)])
    text = saved.read_text()
    assert "tables the same bit for bit" in text and "serial/batched" in text
    assert "CPU:" in text
    assert {p.name for p in (tmp_path / "groups").iterdir()} == {"idle-0-serial",
                                                                  "idle-0-batched"}  # fmt: skip


def test_the_lockstep_command_differs_only_in_batched(tmp_path):
    args = argparse.Namespace(rounds=2, iterations=40, eval_every=20, trials=2, controls=True)
    serial = lockstep.command(Path("x"), args, "mnist-sample", False)
    batched = lockstep.command(Path("x"), args, "mnist-sample", True)
    assert batched == [*serial, "--batched"] and "--controls" in serial
