"""Reports: what a reader of one or more runs wants to know, as Markdown and figures.

The question a lottery-ticket experiment answers is "how sparse can the network get and still
match the dense one?", so the report opens with that verdict for every series, then backs it
with the per-round numbers, the per-layer sparsity and the paper's figures (accuracy and
early-stopping iteration against weights remaining, validation curves per round).

What a report reads, and what it refuses to give a verdict over, is ``report_inputs``.
Rounds flagged ``diverged`` or ``chance`` (``divergence``) are named in the verdict, and a dense
round so flagged gives no verdict at all.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import divergence, files, paths
from .errors import LotteryError
from .report_inputs import Series, describe, load_series

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURES = {  # each figure's file name, less the format's suffix, and its title
    "accuracy": "Test accuracy at early stopping",
    "early_stop": "Early-stopping iteration",
    "validation": "Validation accuracy during training, one curve per round",
}
FORMATS = ("png", "pdf", "svg")  # what --format writes the figures as
MARKDOWN = "report.md"
# What the report wrote in its folder (file name -> SHA-256, null while being written): a later
# report may replace exactly those files, unchanged since, and nothing else.
MANIFEST = ".report.json"


# -- numbers -------------------------------------------------------------------------------


def _without(frame: pd.DataFrame, rounds: dict[int, list[str]], column: str) -> pd.DataFrame:
    """``frame`` with ``column`` blanked in flagged ``rounds``: the verdict's walk stops there."""
    frame = frame.copy()
    frame.loc[frame["round"].isin(list(rounds)), column] = math.nan
    return frame


def sparsest_within(
    rounds: pd.DataFrame, tolerance: float, column: str = "test_mean"
) -> pd.Series | None:
    """The sparsest round whose accuracy, and that of every denser round, stays within
    ``tolerance`` points below the dense round (round 0); ``None`` without a round 0.

    Walking down from the dense round and stopping at the first round that falls short keeps
    one lucky sparse round after a collapse from being reported as a matching ticket.
    Accuracy above the dense round counts as within (a ticket may beat the dense network).
    """
    ordered = rounds.sort_values("round")
    if ordered.empty or ordered["round"].iloc[0] != 0:
        return None
    floor = ordered[column].iloc[0] - tolerance
    best = ordered.iloc[0]
    for _, row in ordered.iloc[1:].iterrows():
        if not row[column] >= floor:
            break
        best = row
    return best


# -- formatting ----------------------------------------------------------------------------


def pct(value: float) -> str:
    """Remaining weights as the paper labels them: 100, 51.3, 3.6, 0.58."""
    if not np.isfinite(value):
        return "–"
    if value >= 99.95:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def num(value: float, digits: int = 2) -> str:
    """An accuracy with ``digits`` decimals, or a dash where there is no number (no trial)."""
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines, so every section of the report renders alike."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def verdict_lines(series: Series, tolerance: float) -> list[str]:
    """The headline for one series: how sparse it gets while matching its dense round."""
    summary = series.summary()
    flags = series.flags()
    head = f"- **{series.label}**: "
    if 0 in flags:
        kinds = sorted({flag.split()[0] for flag in flags[0]})
        return [
            head + f"the dense round (round 0) is flagged {', '.join(flags[0])}: "
            f"{'; '.join(divergence.describe(k) for k in kinds)}; no verdict."
        ]
    best = sparsest_within(_without(summary, flags, "test_mean"), tolerance)
    if best is None:
        return [head + "no dense round (round 0) to compare with."]
    dense = summary.iloc[0]
    if len(summary) == 1:
        return [head + f"only the dense round so far ({num(dense['test_mean'])}% test)."]
    if int(best["round"]) == 0:
        line = head + (
            f"no pruned round stays within {tolerance:g} points of the dense network "
            f"({num(dense['test_mean'])}% test); the first pruned round reaches "
            f"{num(summary.iloc[1]['test_mean'])}%"
        )
    else:
        spread = ""
        if len(series.trials) > 1:
            spread = f" (trials {num(best['test_min'])}–{num(best['test_max'])})"
        line = head + (
            f"matches the dense network ({num(dense['test_mean'])}% test) down to "
            f"**{pct(best['remaining'])}% of weights remaining** (round {int(best['round'])}): "
            f"{num(best['test_mean'])}% test at early stopping{spread}, ES iteration "
            f"{best['ES_mean']:.0f} against {dense['ES_mean']:.0f} dense"
        )
    if len(series.trials) > 1:
        per_trial = []
        for trial in series.trials:
            own_flags = {r: f for r, f in flags.items() if any(trial.folder.name in x for x in f)}
            own = sparsest_within(_without(trial.results, own_flags, "test"), tolerance, "test")
            per_trial.append(
                f"{trial.folder.name} {'–' if own is None else pct(own['remaining'])}%"
            )
        line += f"; each trial against its own dense round: {', '.join(per_trial)}"
    if flags:
        named = ", ".join(f"round {r} {', '.join(f)}" for r, f in sorted(flags.items()))
        line += f"; flagged (the verdict stops before them): {named}"
    return [line + "."]


def round_table(series: Series) -> list[str]:
    """The numbers behind the verdict: per round, ES and accuracy over trials, and flags."""
    rows = []
    flags = series.flags()
    for _, row in series.summary().iterrows():
        es = f"{row['ES_mean']:.0f}"
        if np.isfinite(row["ES_std"]):
            es += f" ± {row['ES_std']:.0f}"
        rows.append(
            [
                str(int(row["round"])),
                pct(row["remaining"]),
                str(int(row["trials"])),
                es,
                num(row["val_mean"]),
                num(row["test_mean"]),
                num(row["test_min"]),
                num(row["test_max"]),
            ]
            + ([", ".join(flags.get(int(row["round"]), []))] if flags else [])
        )
    header = ["round", "remaining %", "trials", "ES (mean ± std)", "val %", "test %", "min", "max"]
    return table(header + (["flag"] if flags else []), rows)


def layer_table(series: Series) -> list[str]:
    """Achieved (and, layerwise, target) remaining percentage per layer and round."""
    frames = [t.layers for t in series.trials if not t.layers.empty]
    if not frames:
        return ["No layers.csv in this series."]
    layers = pd.concat(frames, ignore_index=True)
    names = list(pd.unique(layers["layer"]))
    kinds = layers.groupby("layer", sort=False)["kind"].first()
    mean = layers.groupby(["round", "layer"])[["remaining_pct", "target_pct"]].mean()
    remaining = series.summary().set_index("round")["remaining"]
    rows = []
    for round_index in sorted(layers["round"].unique()):
        row = [str(int(round_index)), pct(remaining.get(round_index, math.nan))]
        for name in names:
            achieved, target = mean.loc[(round_index, name)]
            cell = pct(achieved)
            if np.isfinite(target):
                cell += f" / {pct(target)}"
            row.append(cell)
        rows.append(row)
    header = ["round", "remaining %"] + [f"{name} ({kinds[name]})" for name in names]
    scope = series.config.get("scope")
    note = (
        "Cells: achieved % / target %."
        if scope != "global"
        else "Global scope: one threshold for all layers, so no per-layer target; cells are "
        "achieved %."
    )
    return [note, ""] + table(header, rows)


def data_lines(series: list[Series]) -> list[str]:
    """Where the data came from, per folder, so a sample is never mistaken for the full set."""
    sources: dict[str, list[str]] = {}
    for item in series:
        for trial in item.trials:
            source = trial.meta.get("data_source") or "unknown (no config.json)"
            names = sources.setdefault(source, [])
            if item.folder.name not in names:
                names.append(item.folder.name)
    lines = []
    for source, names in sources.items():
        lines.append(f"- Data: {source} (in {', '.join(f'`{n}`' for n in names)})")
    if any("sample" in source.lower() for source in sources):
        lines += [
            "",
            "> **Note:** a data *sample* was used; these numbers are not full-dataset "
            "results and are not comparable with the paper's.",
        ]
    return lines


def setup_lines(item: Series) -> str:
    """What was run, from the config: model, data, method, rates, budget, seeds."""
    c = {k: v for k, v in item.config.items() if v is not None}
    seeds = ", ".join(str(t.meta.get("config", {}).get("seed", "?")) for t in item.trials)
    return (
        f"- **{item.label}**: `{item.folder}`; model {c.get('model', '?')} on "
        f"{c.get('dataset', '?')}, {describe(c)}, {c.get('scope', '?')} rate "
        f"{c.get('rate', '?')} (conv {c.get('conv_rate', '?')}, output "
        f"{c.get('output_rate', '?')}), {c.get('iterations', '?')} iterations per round, "
        f"{len(item.trials)} trial(s), seeds {seeds}"
    )


def markdown(series: list[Series], notes: list[str], tolerance: float) -> str:
    """``report.md``: the verdict first, then what backs it (setup, rounds, layers, figures)."""
    lines = ["# Lottery ticket report", ""]
    lines += data_lines(series) + [""]
    lines += [
        "## Verdict",
        "",
        f"The sparsest round whose mean test accuracy at early stopping stays within "
        f"{tolerance:g} points of the dense network (round 0), this round and every denser one:",
        "",
    ]
    for item in series:
        lines += verdict_lines(item, tolerance)
    lines += ["", "## Series", ""] + [setup_lines(item) for item in series]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    lines += ["", "## Per round", ""]
    lines += [
        "Accuracies are percentages at the early-stopping (ES) iteration, the iteration of "
        "minimum validation loss; mean, min and max over trials.",
        "",
    ]
    for item in series:
        lines += [f"### {item.label}", ""] + round_table(item) + [""]
    lines += ["## Per layer: weights remaining", ""]
    for item in series:
        lines += [f"### {item.label}", ""] + layer_table(item) + [""]
    lines += ["## Figures", ""]
    for name, title in FIGURES.items():
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)


# -- figures -------------------------------------------------------------------------------


def remaining_ticks(values: list[float], most: int = 9) -> list[float]:
    """Tick positions at actual remaining values, thinned to ones evenly apart on a log axis."""
    ordered = sorted({round(v, 6) for v in values if v > 0}, reverse=True)
    if len(ordered) <= most:
        return ordered
    gap = math.log10(ordered[0] / ordered[-1]) / (most - 1) * 0.9
    ticks = [ordered[0]]
    for value in ordered[1:]:
        if math.log10(ticks[-1] / value) >= gap:
            ticks.append(value)
    if ticks[-1] != ordered[-1]:
        ticks[-1] = ordered[-1]
    return ticks


def style_remaining_axis(ax: Axes, values: list[float]) -> None:
    """Log x axis, sparsity growing to the right, ticks labelled with the rounds' remaining %."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = remaining_ticks(values)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: pct(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    high, low = max(values), min(values)
    pad = (high / low) ** 0.04 if high > low else 1.1
    ax.set_xlim(high * pad, low / pad)
    ax.set_xlabel("weights remaining (%)")
    ax.grid(True, alpha=0.3)


def metric_figure(series: list[Series], metric: str, ylabel: str, title: str) -> Figure:
    """``metric`` (mean over trials, min/max band) against weights remaining, one line a series."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    values: list[float] = []
    for item in series:
        summary = item.summary()
        x = summary["remaining"].to_numpy(float)
        values += list(x)
        (line,) = ax.plot(x, summary[f"{metric}_mean"], marker="o", ms=4, label=item.label)
        if len(item.trials) > 1:
            ax.fill_between(
                x,
                summary[f"{metric}_min"],
                summary[f"{metric}_max"],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    style_remaining_axis(ax, values)
    ax.set_ylabel(ylabel)
    if metric == "ES":  # speed-ups are ratios: keep zero in view
        ax.set_ylim(bottom=0)
    bands = " (band: min–max over trials)" if any(len(s.trials) > 1 for s in series) else ""
    ax.set_title(title + bands, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def validation_figure(series: list[Series]) -> Figure:
    """Validation accuracy per iteration, one curve per round coloured by weights remaining;
    one panel per series (its first trial)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    fig = Figure(figsize=(4.6 * columns + 1, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True)
    remaining = [v for s in series for v in s.trials[0].results["remaining"]]
    norm = LogNorm(min(remaining) * 0.9999, max(remaining) * 1.0001)
    cmap = colormaps["viridis"]
    for ax, item in zip(axes.flat, series, strict=False):
        trial = item.trials[0]
        by_round = trial.results.set_index("round")["remaining"]
        history = trial.history
        if history.empty:
            ax.text(0.5, 0.5, "no history.csv", ha="center", transform=ax.transAxes)
        else:
            for round_index, part in history.groupby("round"):
                if round_index in by_round.index:
                    color = cmap(norm(by_round[round_index]))
                    ax.plot(part["iteration"], part["val_acc"], color=color, lw=1.2)
        title = item.label if item.experiment is None else f"{item.label}, {trial.folder.name}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training iteration")
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy (%)")
    for ax in list(axes.flat)[len(series) :]:
        ax.set_visible(False)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9)
    bar.set_label("weights remaining (%)")
    bar.ax.yaxis.set_major_locator(FixedLocator(remaining_ticks(remaining)))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: pct(v)))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    return fig


def _sha256(path: Path) -> str:
    """What ``MANIFEST`` records, so a later report can tell its own files from edited ones."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_out(out_dir: Path) -> None:
    """Refuse a report folder holding anything the report did not write: a user's files, or
    a report's files changed since (``MANIFEST`` says which and what they held)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise LotteryError(f"{str(out_dir)!r} exists and is not a folder")
    try:
        entries = {p.name: p for p in out_dir.iterdir() if not files.is_own_temp(p.name)}
        written: dict[str, str | None] = {}
        if MANIFEST in entries:
            written = json.loads(entries.pop(MANIFEST).read_text())
            if not isinstance(written, dict):
                written = {}
        foreign = []
        for name, entry in sorted(entries.items()):
            ours = name in written and name in (*FIGURES, MARKDOWN)
            if not ours or entry.is_symlink() or not entry.is_file():
                foreign.append(name)
            elif written[name] is not None and _sha256(entry) != written[name]:
                foreign.append(f"{name} (changed since the report wrote it)")
    except (OSError, ValueError) as exc:
        why = files.reason(exc) if isinstance(exc, OSError) else f"unreadable {MANIFEST}"
        raise LotteryError(f"--out {str(out_dir)!r} cannot be checked: {why}") from None
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")  # fmt: skip
        raise LotteryError(
            f"--out {str(out_dir)!r} holds files the report did not write ({shown}); choose "
            "another --out (a new or empty folder), nothing was written"
        )


def _write_manifest(out_dir: Path, names: tuple[str, ...], done: bool) -> None:
    """Claim ``names`` before writing them (``done=False``), then record what they hold."""
    files.write_json(out_dir / MANIFEST,
                     {n: _sha256(out_dir / n) if done else None for n in names})  # fmt: skip


def save_figure(fig: Figure, path: Path) -> None:
    """Atomically, so a killed report never leaves half a PNG under a real name."""
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


# -- the report ----------------------------------------------------------------------------


def write_report(
    run_dirs: list[Path],
    out_dir: Path | None = None,
    tolerance: float = 0.5,
    by: list[str] | None = None,
) -> Path:
    """Write ``report.md`` and its figures for single run and trials/controls folders.

    ``out_dir`` defaults to ``<first run dir>/report/``; returns the path of ``report.md``.
    Files: ``report.md``, ``accuracy.png``, ``early_stop.png``, ``validation.png`` and
    ``.report.json`` (what was written). ``out_dir`` must be new, empty, or hold only an earlier
    report's files unchanged: a user's files are never overwritten (``check_out``).
    """
    if not math.isfinite(tolerance) or tolerance < 0:
        raise LotteryError(
            f"tolerance must be a finite number of points, 0 or more (got {tolerance})"
        )
    series, notes = load_series([Path(p) for p in run_dirs], by=by)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dirs[0]) / "report"
    check_out(out_dir)
    for stray in files.own_temp_files(out_dir, (*FIGURES, MARKDOWN, MANIFEST)):
        stray.unlink(missing_ok=True)  # a killed report's, provably
    names = (*FIGURES, MARKDOWN)
    _write_manifest(out_dir, names, done=False)
    save_figure(
        metric_figure(series, "test", "test accuracy at early stop (%)", FIGURES["accuracy.png"]),
        out_dir / "accuracy.png",
    )
    save_figure(
        metric_figure(series, "ES", "early-stopping iteration", FIGURES["early_stop.png"]),
        out_dir / "early_stop.png",
    )
    save_figure(validation_figure(series), out_dir / "validation.png")
    path = out_dir / MARKDOWN
    files.write_text(path, markdown(series, notes, tolerance))
    _write_manifest(out_dir, names, done=True)
    return path
