"""Reports on real tiny runs laid out as a trials/controls group, and the statistics behind them."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import socket
import stat
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection

from lottery_core import files
from lottery_core.api import run_trials
from lottery_core.config import make_config
from lottery_core.errors import LotteryError, WriteFailed
from lottery_core.group_runs import write_group_config
from lottery_core.report import (
    load_series,
    metric_figure,
    pct,
    series_styles,
    sparsest_within,
    validation_figure,
    write_report,
)
from lottery_core.report_inputs import Series, read_trial
from lottery_core.resolution import resolve
from lottery_core.tables import aggregate

from .conftest import run_into

BUDGET = dict(dataset="mnist-sample", rounds=3, iterations=100, eval_every=25, threads=1)
LAYOUT = {
    "imp": ({}, 2),
    "reinit-random": ({"reinit": "random"}, 2),
    "prune-random": ({"prune": "random"}, 1),
}


@pytest.fixture(scope="module")
def group(tmp_path_factory, sample_data, plugins) -> Path:
    """A group folder as trials/controls write it: ``runs/<experiment>/trial_<i>/``."""
    root = tmp_path_factory.mktemp("group")
    write_group_config(root, resolve(make_config(**BUDGET), plugins), trials=2, controls=False)
    for name, (change, trials) in LAYOUT.items():
        for trial in range(trials):
            run_into(root / "runs" / name / f"trial_{trial}", BUDGET, sample_data, seed=trial,
                     **change)
    return root


@pytest.fixture(scope="module")
def controls(tmp_path_factory) -> Path:
    """A real group with --controls: two IMP trials, each with its reinit and random-prune
    branch sets (``runs/imp/trial_<i>/branches/<kind>-<hash>/``)."""
    root = tmp_path_factory.mktemp("controls") / "group"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_trials(make_config(**BUDGET), trials=2, controls=True, out=root, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root


def trial_frames(group: Path, name: str) -> pd.DataFrame:
    folders = sorted((group / "runs" / name).glob("trial_*"))
    return pd.concat(
        [pd.read_csv(f / "results.csv").assign(trial=i) for i, f in enumerate(folders)]
    )


# -- statistics ----------------------------------------------------------------------------


def test_aggregate_gives_mean_std_min_max_per_experiment_and_round():
    frame = pd.DataFrame(
        {
            "experiment": ["imp", "imp", "imp", "imp", "ctrl", "ctrl"],
            "trial": [0, 0, 1, 1, 0, 0],
            "round": [0, 1, 0, 1, 0, 1],
            "remaining": [100.0, 80.0, 100.0, 80.0, 100.0, 80.0],
            "ES": [300, 200, 500, 400, 300, 600],
            "val": [90.0, 91.0, 92.0, 95.0, 90.0, 89.0],
            "test": [91.0, 92.0, 93.0, 96.0, 91.0, 88.0],
        }
    )
    out = aggregate(frame)
    assert list(out["experiment"]) == ["imp", "imp", "ctrl", "ctrl"]  # order of appearance
    assert list(out["round"]) == [0, 1, 0, 1]
    imp1 = out.iloc[1]
    assert imp1["trials"] == 2 and imp1["remaining"] == 80.0
    assert (imp1["ES_mean"], imp1["ES_min"], imp1["ES_max"]) == (300, 200, 400)
    assert imp1["ES_std"] == pytest.approx(np.std([200, 400], ddof=1))
    assert (imp1["test_mean"], imp1["test_min"], imp1["test_max"]) == (94.0, 92.0, 96.0)
    assert imp1["val_mean"] == 93.0
    ctrl1 = out.iloc[3]
    assert ctrl1["trials"] == 1 and ctrl1["test_mean"] == 88.0
    assert math.isnan(ctrl1["test_std"])  # one trial: no spread to report
    without = aggregate(frame[frame.experiment == "imp"].drop(columns=["experiment", "trial"]))
    assert "experiment" not in without and list(without["trials"]) == [2, 2]


def test_sparsest_within_walks_down_from_the_dense_round():
    rounds = pd.DataFrame(
        {
            "round": [0, 1, 2, 3, 4],
            "remaining": [100.0, 80.0, 64.1, 51.3, 41.1],
            "test_mean": [92.0, 92.3, 91.6, 90.0, 92.0],
        }
    )
    assert sparsest_within(rounds, 0.5)["round"] == 2  # round 4 recovers, but after a drop
    assert sparsest_within(rounds, 2.0)["round"] == 4
    assert sparsest_within(rounds, 0.1)["round"] == 1  # above the dense round counts
    assert sparsest_within(rounds.iloc[1:], 0.5) is None


def test_aggregate_rejects_a_table_without_results_columns():
    with pytest.raises(LotteryError, match="test"):
        aggregate(pd.DataFrame({"round": [0], "remaining": [100.0], "ES": [1], "val": [1.0]}))


# -- the report ----------------------------------------------------------------------------


def test_report_on_a_group(group):
    path = write_report([group])
    assert path == group / "report" / "report.md"
    for name in ("accuracy.png", "early_stop.png", "validation.png"):
        assert (path.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in path.read_text()
    text = path.read_text()
    assert "NOT full MNIST" in text and "sample" in text
    verdict, tables = text.split("## Per round")
    for name in LAYOUT:
        summary = aggregate(trial_frames(group, name))
        best = sparsest_within(summary, 0.5)
        line = next(x for x in verdict.splitlines() if x.startswith(f"- **{name}**"))
        if best["round"] > 0:
            assert f"down to **{pct(best['remaining'])}% of weights remaining**" in line
            assert f"{best['test_mean']:.2f}% test" in line
        else:
            assert "no pruned round stays within 0.5 points" in line
        for _, row in summary.iterrows():
            cells = f"| {pct(row['remaining'])} | {int(row['trials'])} |"
            assert f"| {int(row['round'])} {cells}" in tables
            assert (
                f"{row['test_mean']:.2f} | {row['test_min']:.2f} | {row['test_max']:.2f} |"
                in tables
            )
    imp_line = next(x for x in verdict.splitlines() if x.startswith("- **imp**"))
    assert "trials " in imp_line and "trial_0" in imp_line and "trial_1" in imp_line
    assert "| 1 | 80.0 | 80.0 / 80.0 | 80.0 / 80.0 | 90.0 / 90.0 |" in tables  # per layer


def test_tolerance_decides_the_verdict(group, tmp_path):
    text = write_report([group], out_dir=tmp_path, tolerance=100).read_text()
    for name in LAYOUT:
        assert f"- **{name}**: matches the dense network" in text
        assert "down to **64.1% of weights remaining** (round 2)" in text
    with pytest.raises(LotteryError, match="tolerance"):
        write_report([group], out_dir=tmp_path, tolerance=-1)


def legend_texts(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def drawn(fig):
    """``fig`` laid out and drawn, so its artists have their places in display space."""
    FigureCanvasAgg(fig).draw()
    return fig


def test_accuracy_figure_reads_like_the_papers(group):
    series, _ = load_series([group])
    fig = drawn(metric_figure(series, "test", "test accuracy", "title"))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    left, right = ax.get_xlim()
    assert left > 100 > 64 > right  # sparsity grows to the right
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "80.0", "64.1"]
    imp = aggregate(trial_frames(group, "imp"))
    dense = f"dense network: {imp['test_mean'].iloc[0]:.2f}%"
    assert legend_texts(fig) == ["IMP (winning ticket)", "random pruning", "random reinit", dense]
    means = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert list(means[0].get_ydata()) == list(imp["test_mean"])
    line = next(x for x in ax.get_lines() if x.get_label() == dense)
    assert list(line.get_ydata()) == [imp["test_mean"].iloc[0]] * 2  # across the whole axis
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # imp and reinit-random have two trials; prune-random one
    assert all(band.get_alpha() == 0.15 for band in bands)
    edges = [x for x in ax.get_lines() if x.get_label() == "_band edge"]
    assert len(edges) == 4 and all(x.get_linestyle() == "--" for x in edges)  # min and max
    legend = fig.legends[0].get_window_extent()
    assert legend.y1 < ax.get_window_extent().y0  # under the axes, never over the data
    es = metric_figure(series, "ES", "ES", "title").axes[0]
    assert es.get_ylim()[0] == 0


def test_early_stop_figure_marks_the_training_budget(group, tmp_path):
    series, _ = load_series([group])
    fig = metric_figure(series, "ES", "ES", "title")
    ax = fig.axes[0]
    budget = [x for x in ax.get_lines() if x.get_label().startswith("training budget")]
    assert [x.get_label() for x in budget] == ["training budget (100 iterations)"]
    assert list(budget[0].get_ydata()) == [BUDGET["iterations"]] * 2
    assert ax.get_ylim()[1] > BUDGET["iterations"]
    assert "training budget (100 iterations)" in legend_texts(fig)
    assert not any(t.startswith("dense network") for t in legend_texts(fig))  # accuracy only
    longer = tmp_path / "longer"  # two budgets in one report: a line for each
    shutil.copytree(group / "runs" / "imp" / "trial_0", longer)
    meta = json.loads((longer / "config.json").read_text())
    meta["config"]["iterations"] = 250
    (longer / "config.json").write_text(json.dumps(meta))
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (longer / name).unlink()
    both, _ = load_series([group, longer])
    lines = metric_figure(both, "ES", "ES", "title").axes[0].get_lines()
    assert {x.get_ydata()[0] for x in lines if x.get_label().startswith("training")} == {100, 250}


def synthetic(folder: Path, rate: float, rounds: int, reinit: str = "rewind") -> Path:
    """A run folder of tables and config.json alone, pruned at ``rate`` for ``rounds`` rounds."""
    folder.mkdir(parents=True)
    config = dict(prune="magnitude", reinit=reinit, scope="layerwise", rate=rate,
                  iterations=300, dataset="mnist-sample", model="lenet_fc")  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"config": config}))
    remaining = [100 * (1 - rate) ** k for k in range(rounds)]
    test = [93 - 0.05 * k * k for k in range(rounds)]
    pd.DataFrame({"round": range(rounds), "remaining": remaining, "ES": 200, "val": test,
                  "test": test}).to_csv(folder / "results.csv", index=False)  # fmt: skip
    history = [{"round": r, "iteration": i, "val_acc": 90.0 + i / 100 - r / 10}
               for r in range(rounds) for i in (100, 200, 300)]  # fmt: skip
    pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    return folder


def assert_apart(labels, vertical: bool = False) -> None:
    """Tick labels that read as distinct numbers and keep at least 2 pixels apart."""
    texts = [label.get_text() for label in labels if label.get_text()]
    assert len(texts) >= 2 and len(set(texts)) == len(texts), texts
    assert all(float(text) > 0 for text in texts), texts
    boxes = sorted((b.y0, b.y1) if vertical else (b.x0, b.x1)
                   for b in (label.get_window_extent() for label in labels if label.get_text()))
    for (_, end), (start, _) in zip(boxes, boxes[1:], strict=False):
        assert start - end >= 2, texts


@pytest.mark.parametrize(
    "runs",
    [[(0.2, 4), (0.22, 4)], [(0.2, 5), (0.25, 4), (0.3, 3)], [(0.2, 30), (0.5, 8)],
     [(0.2, 16), (0.25, 9)], [(0.01, 6), (0.2, 3)]],
    ids=["close", "three", "long", "different", "tiny-steps"],
)
def test_tick_labels_never_collide_when_series_reach_different_sparsities(tmp_path, runs):
    folders = [synthetic(tmp_path / f"r{i}", rate, rounds)
               for i, (rate, rounds) in enumerate(runs)]  # fmt: skip
    series, _ = load_series(folders)
    fig = drawn(metric_figure(series, "test", "test accuracy", "title"))
    ax = fig.axes[0]
    assert_apart(ax.get_xticklabels())
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "100" and ticks[-1] == pct(min(100 * (1 - r) ** (n - 1) for r, n in runs))
    bar = drawn(validation_figure(series)).axes[-1]  # the colour bar's ticks too
    assert_apart(bar.get_yticklabels(), vertical=True)


def test_names_and_colours_are_the_same_in_every_report(group, tmp_path):
    """An experiment has one name and one colour whatever else the report shows: IMP C0,
    random reinit C1, random pruning C2, whether a group's control or an older group's
    ``reinit-random`` folder; a plain IMP run is IMP; any other method keeps its colour."""
    single = tmp_path / "single"
    shutil.copytree(group / "runs" / "imp" / "trial_0", single)
    other = synthetic(tmp_path / "other", 0.2, 3, reinit="random")
    steeper = synthetic(tmp_path / "steeper", 0.3, 3)
    alone, _ = load_series([group])
    together, _ = load_series([other, group, single, steeper])
    by_key = {}
    for series in (alone, together, load_series([steeper, other])[0]):
        for style in series_styles(series):
            by_key.setdefault(style.key, set()).add(style.color)
    assert {key: colors for key, colors in by_key.items()} == {
        "IMP (winning ticket)": {"#1f77b4"},
        "random reinit": {"#ff7f0e"},
        "random pruning": {"#2ca02c"},
        "magnitude pruning, random reinit": by_key["magnitude pruning, random reinit"],
    }
    assert len(by_key["magnitude pruning, random reinit"]) == 1
    styles = series_styles(together)
    assert [s.name for s in styles] == [
        "other: magnitude pruning, random reinit",
        f"{group.name}: IMP (winning ticket)",
        f"{group.name}: random pruning",
        f"{group.name}: random reinit",
        "single: IMP (winning ticket)",
        "steeper: IMP (winning ticket)",
    ]
    # one experiment in two folders: its colour, told apart by line style and marker
    imp = [s for s in styles if s.key == "IMP (winning ticket)"]
    assert len({s.color for s in imp}) == 1 and len({(s.linestyle, s.marker) for s in imp}) == 3
    fig = metric_figure(together, "test", "test", "title", styles)
    drawn_colors = {x.get_label(): x.get_color() for x in fig.axes[0].get_lines()}
    assert drawn_colors["single: IMP (winning ticket)"] == "#1f77b4"


def test_a_sweeps_series_are_named_by_their_grid_point_and_experiment(controls, tmp_path):
    trial = read_trial(synthetic(tmp_path / "run", 0.2, 3))
    control = read_trial(next((controls / "runs" / "imp" / "trial_0" / "branches").glob("rei*")))
    cases = {  # the sweep's own label (report_series), its experiment -> name in the figures
        ("scope=global / imp", "imp"): "scope=global: IMP (winning ticket)",
        ("scope=global / reinit", "reinit"): "scope=global: random reinit",
        ("imp", "imp"): "IMP (winning ticket)",  # --by experiment: the paper's colours
        ("prune-random", "prune-random"): "random pruning",
        ("scope=global", None): "scope=global",  # --by scope
    }
    series = [Series(label, tmp_path, experiment, [control if experiment == "reinit" else trial],
                     origin="sweep", name=label) for label, experiment in cases]  # fmt: skip
    styles = series_styles(series)
    assert [s.name for s in styles] == list(cases.values())
    assert styles[2].color == "#1f77b4" and styles[3].color == "#2ca02c"
    assert len({s.color for s in styles}) == len(styles)


def test_branch_sets_and_controls_are_named_by_what_they_are(controls, tmp_path):
    """A group with --controls: its controls' names, never their folders' hashes, in the
    figures and the text; each trial by its trunk's name."""
    series, _ = load_series([controls])
    assert [s.name for s in series_styles(series)] == [
        "IMP (winning ticket)", "random reinit", "random pruning"]  # fmt: skip
    fig = validation_figure(series)
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "random reinit\n(first trial, trial_0)" in titles
    text = write_report([controls], out_dir=tmp_path / "report").read_text()
    hashes = re.compile(r"-[0-9a-f]{8}\b")
    assert not hashes.search(text), hashes.search(text)
    assert "trial_0 " in text and "trial_1 " in text
    assert "- **reinit** (figures: *random reinit*)" in text
    trunk = controls / "runs" / "imp" / "trial_0"  # a run with its branch sets beside it
    beside, _ = load_series([trunk])
    assert [s.name for s in series_styles(beside)] == [
        "IMP (winning ticket)", "random pruning", "random reinit"]  # fmt: skip


def test_labels_name_each_folder(group, tmp_path, invoke):
    single = tmp_path / "single"
    shutil.copytree(group / "runs" / "reinit-random" / "trial_0", single)
    series, _ = load_series([single, group])
    styles = series_styles(series, ["baseline $1", "paper"])
    assert [s.name for s in styles] == [
        "baseline $1", "paper: IMP (winning ticket)", "paper: random pruning",
        "paper: random reinit"]  # fmt: skip
    fig = metric_figure(series, "test", "test", "title", styles)
    assert legend_texts(fig)[:2] == [r"baseline \$1", "paper: IMP (winning ticket)"]
    fig.savefig(io.BytesIO(), format="png")  # a dollar sign is text, not mathtext
    result = invoke("report", single, group, "--label", "baseline", "--label", "paper")
    assert result.returncode == 0, result.stderr
    text = (single / "report" / "report.md").read_text()
    assert "- **baseline**: " in text and "- **paper: random reinit**: " in text


@pytest.mark.parametrize(
    "labels, message",
    [(["a"], "--label given 1 time(s) for 2 run folder(s): give one per folder, in the order "
             "of the folders"),
     (["a", "b", "c"], "--label given 3 time(s) for 2 run folder(s)"),
     (["a", " "], "--label ' ': a legend name needs text on one line"),
     (["a", "b\nc"], "--label 'b\\nc': a legend name needs text on one line")],
    ids=["fewer", "more", "blank", "two-lines"],
)
def test_a_label_per_folder_or_one_line(group, tmp_path, invoke, labels, message):
    single = tmp_path / "single"
    shutil.copytree(group / "runs" / "imp" / "trial_0", single)
    result = invoke("report", single, group, *[x for label in labels for x in ("--label", label)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (single / "report").exists()


def test_figures_in_each_format(group, tmp_path, invoke):
    out = tmp_path / "out"
    stems = ("accuracy", "early_stop", "validation")
    for fmt in ("pdf", "svg", "png"):  # each report replaces the one before, format and all
        result = invoke("report", group, "--out", out, "--format", fmt)
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [".report.json", "report.md", *(f"{s}.{fmt}" for s in stems)])  # fmt: skip
        assert sorted(json.loads((out / ".report.json").read_text())) == sorted(
            ["report.md", *(f"{s}.{fmt}" for s in stems)])  # fmt: skip
        text = (out / "report.md").read_text()
        for stem in stems:
            data = (out / f"{stem}.{fmt}").read_bytes()
            if fmt == "pdf":
                assert data.startswith(b"%PDF-") and b"%%EOF" in data[-32:]
                assert f"]({stem}.pdf)" in text and "![" not in text.split("## Figures")[1]
            elif fmt == "svg":
                root = ElementTree.fromstring(data)
                assert root.tag == "{http://www.w3.org/2000/svg}svg"
                assert "![" in text and f"]({stem}.svg)" in text
            else:
                assert data.startswith(b"\x89PNG\r\n\x1a\n")
        if fmt == "svg":  # the same report is the same file: no date, no random ids
            first = (out / "accuracy.svg").read_bytes()
            assert invoke("report", group, "--out", out, "--format", fmt).returncode == 0
            assert (out / "accuracy.svg").read_bytes() == first
    bad = invoke("report", group, "--out", out, "--format", "jpg")
    assert bad.returncode == 2 and "'jpg' is not one of 'png', 'pdf', 'svg'" in bad.stderr
    with pytest.raises(LotteryError, match="format 'gif': one of png, pdf, svg"):
        write_report([group], out_dir=out, fmt="gif")


def test_validation_figure_has_a_curve_per_round_for_each_series(group):
    series, _ = load_series([group])
    fig = validation_figure(series)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_xlabel()]
    assert len(panels) == len(LAYOUT)
    for ax in panels:
        assert len(ax.get_lines()) == BUDGET["rounds"]


def test_single_runs_and_groups_together(group, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(group / "runs" / "reinit-random" / "trial_0", single)
    path = write_report([single])
    assert path == single / "report" / "report.md"
    assert "- **magnitude pruning, random reinit**" in path.read_text()
    series, _ = load_series([single, group])
    assert [s.label for s in series] == [
        "single (magnitude pruning, random reinit)",
        f"{group.name} / imp",
        f"{group.name} / prune-random",
        f"{group.name} / reinit-random",
    ]
    twice, _ = load_series([single, single])
    assert twice[1].label.endswith("#2")


def test_unfinished_trials_are_skipped_with_a_note(group, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(group / "runs" / "imp" / "trial_0", partial / "runs" / "imp" / "trial_0")
    shutil.copy(group / "config.json", partial)
    (partial / "runs" / "imp" / "trial_1").mkdir()
    text = write_report([partial]).read_text()
    assert "skipped runs/imp/trial_1" in text


def test_unusable_folders_are_named_in_the_error(group, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(LotteryError, match="nowhere"):
        write_report([missing])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LotteryError, match="empty.*results.csv"):
        write_report([tmp_path / "empty"])
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "results.csv").write_text("round,remaining,ES,val,test\n")
    with pytest.raises(LotteryError, match="fresh.*no finished round"):
        write_report([tmp_path / "fresh"])
    (tmp_path / "group" / "runs").mkdir(parents=True)
    shutil.copy(group / "config.json", tmp_path / "group")
    with pytest.raises(LotteryError, match="group.*no finished run"):
        write_report([tmp_path / "group"])
    with pytest.raises(LotteryError, match="no run folder"):
        write_report([])


# -- the report checks its inputs ----------------------------------------------------------


def tables_only(group: Path, tmp_path: Path) -> Path:
    """A run folder of tables and ``config.json`` alone (its checkpoints deleted)."""
    folder = tmp_path / "tables"
    shutil.copytree(group / "runs" / "imp" / "trial_0", folder)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (folder / name).unlink()
    return folder


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f.drop(index=1), "lacks round 1 (it lists 0, 2): the table is damaged; no "
                                    "verdict over a gap"),
        (lambda f: pd.concat([f, f.iloc[[1]]]), "lists round 1 more than once: the table is "
                                                "damaged; no verdict over it"),
        (lambda f: f.assign(test=[f["test"][0], math.nan, f["test"][2]]),
         "has no number in column test (row 2: nan): the table is damaged; no report over it"),
        (lambda f: f.assign(ES=["100", "1e", "100"]),
         "has no number in column ES (row 2: '1e'): the table is damaged; no report over it"),
        (lambda f: f.drop(columns="test"), "lacks the columns test"),
    ],
    ids=["gap", "duplicate", "nan", "text", "column"],
)
def test_a_damaged_results_table_is_one_line_not_a_verdict(group, tmp_path, damage, message):
    folder = tables_only(group, tmp_path)
    assert "## Verdict" in write_report([folder], out_dir=tmp_path / "ok").read_text()
    damage(pd.read_csv(folder / "results.csv")).to_csv(folder / "results.csv", index=False)
    with pytest.raises(LotteryError) as caught:
        write_report([folder], out_dir=tmp_path / "report")
    assert str(caught.value) == f"{str(folder / 'results.csv')!r} {message}"
    assert not (tmp_path / "report").exists()


def test_an_unreadable_table_or_a_checkpointed_one_that_disagrees_is_refused(group, tmp_path):
    folder = tables_only(group, tmp_path)
    (folder / "history.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LotteryError, match="history.csv' is not a readable table"):
        load_series([folder])
    checked = tmp_path / "checked"  # a checkpoint beside the tables: they must agree with it
    shutil.copytree(group / "runs" / "imp" / "trial_0", checked)
    lines = (checked / "results.csv").read_text().splitlines(keepends=True)
    (checked / "results.csv").write_text(lines[0] + lines[1] + lines[3])  # round 1 deleted
    with pytest.raises(LotteryError, match="results.csv' does not match .*checkpoint.pt"):
        load_series([checked])


def test_a_damaged_trial_of_a_group_is_refused_not_skipped(group, tmp_path):
    copy = tmp_path / "group"
    shutil.copytree(group, copy)
    results = copy / "runs" / "reinit-random" / "trial_1" / "results.csv"
    results.write_text(results.read_text()[:40])
    with pytest.raises(LotteryError, match="reinit-random/trial_1/results.csv' does not match"):
        write_report([copy])


def test_a_nan_tolerance_is_refused(group, tmp_path):
    for tolerance in (math.nan, math.inf, -1):
        with pytest.raises(LotteryError, match="tolerance must be a finite number of points"):
            write_report([group], out_dir=tmp_path, tolerance=tolerance)
    assert not list(tmp_path.iterdir())


def test_flagged_rounds_are_named_and_end_the_verdict(group, tmp_path):
    folder = tables_only(group, tmp_path)
    frame = pd.read_csv(folder / "results.csv")
    frame.assign(flag=[math.nan, math.nan, "chance"]).to_csv(folder / "results.csv", index=False)
    text = write_report([folder], out_dir=tmp_path / "report", tolerance=100).read_text()
    assert "down to **80.0% of weights remaining** (round 1)" in text  # not round 2
    assert "flagged (the verdict stops before them): round 2 chance." in text
    assert "| chance |" in text
    frame.assign(flag=["diverged", math.nan, math.nan]).to_csv(folder / "results.csv", index=False)
    text = write_report([folder], out_dir=tmp_path / "report").read_text()
    assert "the dense round (round 0) is flagged diverged: its loss exploded (try a lower " in text
    assert "matches the dense network" not in text


def test_report_never_overwrites_files_it_did_not_write(group, tmp_path, invoke):
    """An --out holding a user's files (or a report's files edited since) is refused in one
    line and left as it was; a new, empty or earlier report folder is written."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my thesis\n")
    (mine / "accuracy.png").write_bytes(b"my figure")
    result = invoke("report", group, "--out", "mine")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines == [
        "Error: --out 'mine' holds files the report did not write (accuracy.png, report.md); "
        "choose another --out (a new or empty folder), nothing was written"
    ], result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["accuracy.png", "report.md"]
    assert (mine / "report.md").read_text() == "my thesis\n"
    assert (mine / "accuracy.png").read_bytes() == b"my figure"

    (tmp_path / "empty").mkdir()
    for out in ("new", "empty", "new"):  # a report folder is written again by a report
        assert invoke("report", group, "--out", out).returncode == 0
    (tmp_path / "new" / "notes.txt").write_text("notes\n")
    assert "(notes.txt)" in invoke("report", group, "--out", "new").stderr
    (tmp_path / "new" / "notes.txt").unlink()
    (tmp_path / "new" / "report.md").write_text("edited\n")
    assert "(report.md (changed since the report wrote it))" in invoke(
        "report", group, "--out", "new"
    ).stderr
    assert (tmp_path / "new" / "report.md").read_text() == "edited\n"


@contextlib.contextmanager
def never_blocked(fifo: Path, after: float = 60.0):
    """A hang guard: if the code under test is still blocked opening ``fifo`` ``after`` seconds
    on, a writer opens and closes it, so the reader gets an empty file and the test fails."""
    done = threading.Event()

    def release() -> None:
        if not done.wait(after):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def make_special(path: Path, kind: str) -> None:
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "socket":  # bound by a relative name: a full tmp path can pass AF_UNIX's 108
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(os.path.relpath(path))
    else:  # a link to a FIFO: never followed
        os.mkfifo(path.with_name("elsewhere"))
        path.symlink_to("elsewhere")


@pytest.mark.parametrize("kind", ["FIFO", "folder", "socket", "symbolic link"])
def test_a_special_file_where_the_report_writes_is_one_line_and_never_opened(
    tmp_path, invoke, kind
):
    """A FIFO named ``.report.json`` in --out blocked the report for good (project issue 27):
    whatever is there and is no regular file (a FIFO, a socket, a folder, a link) is refused in
    one line before anything is written, and never opened."""
    run = synthetic(tmp_path / "run", 0.2, 3)
    out = tmp_path / "out"
    out.mkdir()
    make_special(out / ".report.json", kind)
    before = sorted(p.name for p in out.iterdir())
    started = time.monotonic()
    with never_blocked(out / ".report.json"):
        result = invoke("report", run, "--out", "out")
    assert time.monotonic() - started < 60
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines == [
        f"Error: --out 'out' holds a .report.json that is a {kind}, not a file a report "
        "wrote; choose another --out (a new or empty folder), nothing was written"
    ], result.stderr
    assert sorted(p.name for p in out.iterdir()) == before
    assert not (tmp_path / "run" / "report").exists()


def test_a_fifo_under_a_reports_own_name_is_refused_and_never_written(tmp_path, invoke):
    """A FIFO where a figure or report.md goes, even one an earlier manifest lists, is no file
    of the report's; ``files.atomic_write`` itself refuses to put a file in its place."""
    run = synthetic(tmp_path / "run", 0.2, 3)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "report.md")
    (out / ".report.json").write_text(json.dumps({"report.md": None}))
    with never_blocked(out / "report.md"):
        result = invoke("report", run, "--out", "out")
        assert result.returncode == 2 and "holds files the report did not write (report.md)" in (
            result.stderr
        ), result.stderr
        with pytest.raises(WriteFailed) as caught:
            files.write_text(out / "report.md", "text")
    said = f"could not write {str(out / 'report.md')!r}: it is a FIFO, not a regular file"
    assert str(caught.value) == said
    assert stat.S_ISFIFO(os.lstat(out / "report.md").st_mode)
    assert sorted(p.name for p in out.iterdir()) == [".report.json", "report.md"]
