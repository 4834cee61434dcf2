"""The benchmark runs end to end at its tiny ``--quick`` size. Nothing here asserts a timing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("[1-2. ", "[3. ", "[4. ", "[5. ", "[6. ")


def test_quick_benchmark_prints_every_section_with_finite_ratios(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for section in SECTIONS:
        assert section in done.stdout, f"section {section!r} missing from:\n{done.stdout}"
    for word in ("step overhead", "DataLoader", "floor", "evaluat", "Conv-2", "peak RSS"):
        assert word in done.stdout
    rows = json.loads(report.read_text())["rows"]
    keys = {row["key"] for row in rows}
    assert {
        "overhead_100%",
        "overhead_21%",
        "overhead_3.6%",
        "datapath",
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
    for row in rows:
        assert math.isfinite(row["value"]), row
        # a round's fixed cost is a difference of two timings: at --quick sizes it may be 0
        assert row["value"] > 0 or (row["value"] == 0 and "round_fixed" in row["key"]), row
        if row["target"] is not None:
            assert row["status"] in ("PASS", "MISS")
