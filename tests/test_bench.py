"""The benchmark runs end to end at its tiny ``--quick`` size, writing ``--json`` and reading
``--compare``. Nothing here asserts a timing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("[1-2. ", "[3. ", "[4. ", "[5. ", "[6. ")


@pytest.mark.slow
def test_quick_benchmark_prints_every_section_with_finite_ratios(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    older = tmp_path / "older.json"  # an earlier run's file: one row still printed, one gone
    older.write_text(json.dumps({"values": {"overhead_100%": 1.0, "threads_100%": 2.0}}))
    command = ["-m", "bench", "--quick", "--json", str(report), "--compare", str(older)]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for section in SECTIONS:
        assert section in done.stdout, f"section {section!r} missing from:\n{done.stdout}"
    for word in ("step overhead", "bare loop", "DataLoader", "floor", "evaluat", "Conv-2"):
        assert word in done.stdout
    assert "peak RSS" in done.stdout
    assert done.stdout.split()[1] == "before"
    lines = done.stdout.splitlines()
    compared = next(line for line in lines if "bare loop" in line and "100.0% remaining" in line)
    assert compared.split("remaining")[1].split()[0] == "1.00x", compared
    peak = next(line for line in lines if "peak RSS" in line)
    assert peak.split("--iterations")[1].split()[1] == "-", peak  # absent from the older run
    last = done.stdout.rstrip().splitlines()[-2:]  # the lines that name the machine
    assert last[0].startswith("CPU: ") and " cores" in last[0], last
    assert last[1].startswith("torch ") and " threads" in last[1], last
    rows = json.loads(report.read_text())["rows"]
    keys = {row["key"] for row in rows}
    assert {
        "overhead_100%",
        "overhead_21%",
        "overhead_3.6%",
        "datapath",
        "step_ms",
        "floor_ratio",
        "kernel_ratio",
        "eval_share_50k",
        "round_50k_s",
        "conv2_overhead_100%",
        "conv2_datapath",
        "conv2_round_fixed_ms",
        "conv2_floor_ratio",
        "peak_rss_mib",
    } <= keys
    assert any(key.startswith("bare_loop_step_") for key in keys), keys
    for row in rows:
        assert math.isfinite(row["value"]), row
        # a round's fixed cost is a difference of two timings: at --quick sizes it may be 0
        assert row["value"] > 0 or (row["value"] == 0 and "round_fixed" in row["key"]), row
        if row["target"] is not None:
            assert row["status"] in ("PASS", "FAIL")
    meta = json.loads(report.read_text())["meta"]
    assert {"cpu", "cores", "torch", "threads"} <= set(meta)
