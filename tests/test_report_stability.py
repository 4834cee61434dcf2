"""The report's instability section: a real small run, with ``lottery stability``'s tables
written beside it by hand (what the analysis would find is the analysis' own tests' business)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from lottery_core import connectivity, stability
from lottery_core.api import run_branch
from lottery_core.errors import LotteryError
from lottery_core.report import (
    MANIFEST,
    barrier_figure,
    between_figure,
    path_figure,
    write_report,
)
from lottery_core.report_inputs import (
    BETWEEN_ROUNDS,
    STABILITY,
    STABILITY_KIND,
    STABILITY_PATH,
    load_series,
    load_stability,
    read_branch_set,
)

from .conftest import run_into

BUDGET = dict(dataset="mnist-sample", rounds=3, iterations=100, eval_every=25, threads=1)
STANDARD = {"accuracy.png", "early_stop.png", "validation.png", "report.md"}
NEW = {"stability_path.png", "stability_barrier.png", "between_rounds.png"}
# Mean test barrier by (control, round) and k: the ticket unstable at k=0 from round 1 and stable
# from k=50; random pruning unstable at round 2 whatever k.
BARRIERS = {
    ("none", 0): (0.5, 0.4), ("none", 1): (3.0, 1.0), ("none", 2): (5.0, 1.5),
    ("random-prune", 0): (0.5, 0.4), ("random-prune", 1): (4.0, 1.0),
    ("random-prune", 2): (9.0, 6.0),
}  # fmt: skip
KS = (0, 50)


@pytest.fixture(scope="module")
def trunk(tmp_path_factory, sample_data) -> Path:
    """A real finished run of three rounds, left as it is: each test works on a copy."""
    return run_into(tmp_path_factory.mktemp("trunk") / "trunk", BUDGET, sample_data)


def remaining_of(run: Path) -> dict[int, float]:
    results = pd.read_csv(run / "results.csv")
    return dict(zip(results["round"].astype(int), results["remaining"], strict=True))


def stability_table(run: Path) -> pd.DataFrame:
    """``stability.csv`` as ``lottery stability`` writes it: two pairs per subnetwork and k."""
    remaining = remaining_of(run)
    rows = []
    for (control, round_index), barriers in BARRIERS.items():
        for k, barrier in zip(KS, barriers, strict=True):
            for pair, shift in (("0-1", -0.1), ("0-2", 0.1)):
                final = 95.0 - (round_index if control == "random-prune" else 0.0)
                rows.append({
                    "branch": f"stability-{control}-{k}",
                    "round": round_index, "remaining": remaining[round_index], "k": k,
                    "control": control, "pair": pair, "test_barrier": barrier + shift,
                    "test_error_ends": 5.0, "test_error_max": 5.0 + barrier + shift,
                    "train_barrier": barrier / 2, "train_error_ends": 1.0,
                    "train_error_max": 1.0 + barrier / 2, "final_test": final,
                    "dense_final_test": 95.0,
                    "stable": connectivity.stable(barrier + shift),
                    "matching": connectivity.matching(final, 95.0), "distance": 4.0,
                })  # fmt: skip
    return pd.DataFrame(rows)


def path_table(table: pd.DataFrame) -> pd.DataFrame:
    """``stability_path.csv``: each pair's path, a bump in the middle as high as its barrier."""
    rows = []
    for _, row in table.iterrows():
        for split in ("test", "train"):
            for i in range(connectivity.ALPHAS):
                alpha = i / (connectivity.ALPHAS - 1)
                bump = row[f"{split}_barrier"] * (1 - abs(2 * alpha - 1))
                rows.append({
                    "branch": row["branch"], "round": row["round"], "k": row["k"],
                    "control": row["control"], "pair": row["pair"], "split": split,
                    "alpha": alpha, "error": row[f"{split}_error_ends"] + bump, "loss": 0.1,
                })  # fmt: skip
    return pd.DataFrame(rows)


def between_table(run: Path) -> pd.DataFrame:
    remaining = remaining_of(run)
    return pd.DataFrame([
        {"round": r, "next_round": r + 1, "remaining": remaining[r],
         "next_remaining": remaining[r + 1], "test_barrier": barrier,
         "test_error_ends": 5.0, "train_barrier": barrier / 3, "train_error_ends": 1.0,
         "distance": 4.0}
        for r, barrier in ((0, 0.5), (1, 2.5))
    ])  # fmt: skip


def analysed(trunk: Path, tmp_path: Path, tables: str = "stability,path,between") -> Path:
    """A copy of ``trunk`` with the tables named in ``tables`` beside it."""
    run = tmp_path / "trunk"
    shutil.copytree(trunk, run)
    table = stability_table(run)
    wanted = tables.split(",")
    if "stability" in wanted:
        table.to_csv(run / STABILITY, index=False)
    if "path" in wanted:
        path_table(table).to_csv(run / STABILITY_PATH, index=False)
    if "between" in wanted:
        between_table(run).to_csv(run / BETWEEN_ROUNDS, index=False)
    return run


def test_the_report_adds_the_instability_section_and_its_figures(trunk, tmp_path):
    run = analysed(trunk, tmp_path)
    text = write_report([run], out_dir=tmp_path / "report").read_text()
    written = json.loads((tmp_path / "report" / MANIFEST).read_text())
    assert set(written) == STANDARD | NEW
    assert all(written.values())  # every file finished, with its checksum
    assert {p.name for p in (tmp_path / "report").iterdir()} == STANDARD | NEW | {MANIFEST}
    section = text[text.index("## Instability analysis") : text.index("## Figures")]
    table = pd.read_csv(run / STABILITY)
    for line in stability.verdict(table):  # the analysis' verdict, word for word
        assert f"- {line}\n" in section
    assert "IMP round 2" in section and "stable from k=50" in section
    assert "random pruning round 2" in section and "not stable at any k tried" in section
    # the pivot: mean test barrier by subnetwork and k (the pairs' +-0.1 average out)
    remaining = remaining_of(run)
    assert "| subnetwork | round | remaining % | k = 0 | k = 50 |" in section
    assert f"| IMP (winning ticket) | 2 | {remaining[2]:.1f} | 5.00 | 1.50 |" in section
    assert f"| random pruning | 2 | {remaining[2]:.1f} | 9.00 | 6.00 |" in section
    # stable and matching pairs; the between-rounds table
    assert "| IMP (winning ticket) | 12 | 8 | 12 |" in section
    assert "| random pruning | 12 | 6 | 4 |" in section
    assert "| 1 → 2 |" in section and "between 1 of 2 pairs of successive rounds" in section
    for name in sorted(NEW):
        assert f"]({name})" in section
    assert section.index("| IMP (winning ticket) | 0 |") < section.index("| random pruning | 0 |")


def test_figures_draw_a_curve_per_round_and_k_and_the_threshold(trunk, tmp_path):
    run = analysed(trunk, tmp_path)
    series, _ = load_series([run])
    analyses = load_stability(series)
    assert [a.folder for a in analyses] == [run]
    path = path_figure(analyses)
    panels = [ax for ax in path.axes if ax.get_title().startswith("k = ")]
    assert len(panels) == 2 * len(KS)  # the ticket and random pruning, at each k
    assert all(len(ax.get_lines()) == 3 for ax in panels)  # a curve per round
    assert "IMP (winning ticket)" in panels[0].get_ylabel()
    barrier = barrier_figure(analyses)
    left, right = (ax for ax in barrier.axes if ax.get_xlabel())
    threshold = [line for line in left.get_lines() if line.get_linestyle() == ":"]
    assert [list(line.get_ydata()) for line in threshold] == [[connectivity.STABLE_BELOW] * 2]
    assert len(left.get_lines()) == 2 * 3 + 1  # a line per subnetwork and round, the threshold
    assert len(right.get_lines()) == 2 * len(KS) + 1  # a line per subnetwork and k
    dashed = {line.get_linestyle() for line in right.get_lines()}
    assert {"-", "--"} <= dashed  # the ticket solid, random pruning dashed
    assert right.get_xscale() == "log" and right.get_xlabel() == "weights remaining (%)"
    between = between_figure(analyses).axes[0]
    assert len(between.get_lines()) == 3  # test, training subset, threshold


def test_pdf_figures_and_a_later_report_without_the_analysis(trunk, tmp_path):
    run = analysed(trunk, tmp_path)
    out = tmp_path / "report"
    text = write_report([run], out_dir=out, fmt="pdf").read_text()
    assert "[Test barrier between copies" in text and "](stability_barrier.pdf)" in text
    assert "![" not in text.split("## Instability analysis")[1].split("## Figures")[0]
    for name in (run / STABILITY, run / STABILITY_PATH, run / BETWEEN_ROUNDS):
        name.unlink()
    text = write_report([run], out_dir=out).read_text()  # the earlier figures go
    assert {p.name for p in out.iterdir()} == STANDARD | {MANIFEST}
    assert "Instability" not in text and "stability" not in text


def test_only_the_barrier_between_rounds(trunk, tmp_path):
    run = analysed(trunk, tmp_path, tables="between")
    out = tmp_path / "report"
    text = write_report([run], out_dir=out).read_text()
    assert {p.name for p in out.iterdir()} == STANDARD | {"between_rounds.png", MANIFEST}
    section = text[text.index("## Instability analysis") : text.index("## Figures")]
    assert "### Between successive rounds" in section and "| 0 → 1 |" in section
    assert "k = 0" not in section and "stability_barrier" not in section


def test_no_path_table_no_path_figure(trunk, tmp_path):
    run = analysed(trunk, tmp_path, tables="stability")
    out = tmp_path / "report"
    text = write_report([run], out_dir=out).read_text()
    assert {p.name for p in out.iterdir()} == STANDARD | {"stability_barrier.png", MANIFEST}
    assert f"No {STABILITY_PATH} beside it: no figure of the path." in text


DAMAGES = [
    (STABILITY, lambda f: f.drop(columns="test_barrier"), "lacks the columns test_barrier"),
    (STABILITY, lambda f: f.assign(test_barrier=["x"] + list(f["test_barrier"][1:])),
     "has no number in column test_barrier (row 1: 'x'): the table is damaged; no report "
     "over it"),
    (STABILITY, lambda f: f.assign(k=[0.5] + list(f["k"][1:])),
     "has no whole number in column k (row 1: 0.5): the table is damaged; no report over it"),
    (STABILITY, lambda f: f.assign(stable=list(f["stable"][:-1]) + ["maybe"]),
     "has no True or False in column stable (row 24: 'maybe'): the table is damaged; no "
     "report over it"),
    (STABILITY_PATH, lambda f: f.assign(error=list(f["error"][:-1]) + [None]),
     "has no number in column error (row 1440: nan): the table is damaged; no report over it"),
    (BETWEEN_ROUNDS, lambda f: f.drop(columns=["next_round", "round"]),
     "lacks the columns next_round, round"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "damage", "message"), DAMAGES,
                         ids=["column", "text", "k", "stable", "path", "between"])  # fmt: skip
def test_a_damaged_analysis_table_is_one_line(trunk, tmp_path, invoke, name, damage, message):
    run = analysed(trunk, tmp_path)
    damage(pd.read_csv(run / name)).to_csv(run / name, index=False)
    with pytest.raises(LotteryError) as caught:
        write_report([run], out_dir=tmp_path / "report")
    assert str(caught.value) == f"{str(run / name)!r} {message}"
    assert not (tmp_path / "report").exists()  # nothing written
    done = invoke("report", run, "--out", tmp_path / "cli")
    assert done.returncode != 0 and not (tmp_path / "cli").exists()
    assert done.stderr == f"Error: {caught.value}\n"  # one line, no traceback


def test_an_unreadable_analysis_table_is_one_line(trunk, tmp_path, invoke):
    run = analysed(trunk, tmp_path)
    (run / STABILITY).write_bytes(b"\xff\xfe\x00garbage")
    done = invoke("report", run, "--out", tmp_path / "cli")
    assert done.returncode != 0 and len(done.stderr.splitlines()) == 1
    assert "stability.csv' is not a readable table" in done.stderr


def test_the_analysis_copies_are_not_series_and_a_round_0_branch_keeps_its_own(trunk, tmp_path):
    run = analysed(trunk, tmp_path, tables="between")
    (run / "branches" / f"{STABILITY_KIND}-0123abcd").mkdir(parents=True)  # not read at all
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # a branch set from the dense round: its own round 0, not the trunk's as well
        made = run_branch("reinit", run, rounds=[0, 1], progress=False)
    finally:
        torch.set_num_threads(threads)
    branch = read_branch_set(made.folder)
    assert list(branch.results["round"]) == [0, 1]
    series, notes = load_series([run])
    assert [item.origin for item in series] == ["run", "branch"]
    assert notes == [f"trunk: its 1 {STABILITY_KIND} branch set(s) are the instability "
                     "analysis, not series"]  # fmt: skip
    text = write_report([run], out_dir=tmp_path / "report").read_text()
    assert "its 1 stability branch set(s)" in text


def test_the_file_names_are_the_analysis_own():
    assert STABILITY == f"{stability.TABLE}.csv"
    assert STABILITY_PATH == f"{stability.TABLE}_path.csv"
    assert STABILITY_KIND == stability.KIND
