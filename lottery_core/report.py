"""Reports: what a reader of one or more runs wants to know, as Markdown and figures.

The question a lottery-ticket experiment answers is "how sparse can the network get and still
match the dense one?", so the report opens with that verdict for every series, then backs it
with the per-round numbers, the per-layer sparsity and the paper's figures (accuracy and
early-stopping iteration against weights remaining, validation curves per round).

What a report reads, and what it refuses to give a verdict over, is ``report_inputs``.
Rounds flagged ``diverged`` or ``chance`` (``divergence``) are named in the verdict, and a dense
round so flagged gives no verdict at all.

A run folder with an instability analysis (``lottery stability``: ``stability.csv``,
``between_rounds.csv``) adds its section: the mean test barrier by subnetwork and k, how many
pairs are stable and matching, ``stability.verdict`` in words, and its figures (the error along
the linear path, the barrier against k and against weights remaining, the barrier between
successive rounds). A report of a run without one is as before.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import divergence, files, paths
from .config import ExperimentConfig
from .errors import LotteryError
from .report_inputs import STABILITY_PATH, Series, Stability, describe, load_series, load_stability

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap, LogNorm
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
        for trial, name in zip(series.trials, series.trial_names(), strict=True):
            own_flags = {r: f for r, f in flags.items() if any(x.endswith(f" in {name}")
                                                                for x in f)}  # fmt: skip
            own = sparsest_within(_without(trial.results, own_flags, "test"), tolerance, "test")
            per_trial.append(f"{name} {'–' if own is None else pct(own['remaining'])}%")
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


def setup_lines(item: Series, style: Style | None = None) -> str:
    """What was run, from the config: model, data, method, rates, budget, seeds, and the
    series' name in the figures where that is not its label."""
    c = {k: v for k, v in item.config.items() if v is not None}
    seeds = ", ".join(str(t.meta.get("config", {}).get("seed", "?")) for t in item.trials)
    method = describe(c)
    kind = _branch_kind(item)
    if kind is not None:
        method = f"branch {kind} of a {method} run"
    shown = f" (figures: *{style.name}*)" if style is not None and style.name != item.label else ""
    return (
        f"- **{item.label}**{shown}: `{item.folder}`; model {c.get('model', '?')} on "
        f"{c.get('dataset', '?')}, {method}, {c.get('scope', '?')} rate "
        f"{c.get('rate', '?')} (conv {c.get('conv_rate', '?')}, output "
        f"{c.get('output_rate', '?')}), {c.get('iterations', '?')} iterations per round, "
        f"{len(item.trials)} trial(s), seeds {seeds}"
    )


def markdown(
    series: list[Series],
    notes: list[str],
    tolerance: float,
    fmt: str = "png",
    styles: list[Style] | None = None,
    analyses: list[Stability] | None = None,
) -> str:
    """``report.md``: the verdict first, then what backs it (setup, rounds, layers, the
    instability ``analyses`` where there are any, figures in ``fmt``)."""
    styles = styles if styles is not None else series_styles(series)
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
    lines += ["", "## Series", ""]
    lines += [setup_lines(item, style) for item, style in zip(series, styles, strict=True)]
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
    lines += stability_lines(analyses or [], fmt)
    lines += ["## Figures", ""]
    for stem, title in FIGURES.items():  # a PDF is a link: Markdown viewers show no PDF inline
        lines += [f"{'' if fmt == 'pdf' else '!'}[{title}]({stem}.{fmt})", ""]
    return "\n".join(lines)


# -- names and colours ---------------------------------------------------------------------

IMP = "IMP (winning ticket)"
# An experiment's name in the figures, whatever the report: a group's experiments and the
# branch kinds by what they are, the paper's controls as the paper names them.
NAMES = {
    "reinit": "random reinit",
    "reinit-random": "random reinit",  # the controls of groups from before branches
    "random-prune": "random pruning",
    "prune-random": "random pruning",
    "shuffle": "shuffled mask",
    "sign-reinit": "sign-preserving reinit",
    "invert": "inverted mask",
}
# matplotlib's tab10 (C0..C9), spelled out so no style sheet changes what a name is drawn in.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
FIXED = {IMP: 0, "random reinit": 1, "random pruning": 2}  # the paper's three: C0, C1, C2
HASHED = (3, 4, 5, 6, 8, 9)  # any other name: one of these by a hash of it (C7's grey: no)
LINESTYLES = ("-", "--", ":", "-.")  # by the folder given, where several share a name
MARKERS = ("o", "s", "^", "D", "v", "P")
REFERENCE = "#000000"  # the dense-accuracy and training-budget lines


@dataclass(frozen=True)
class Style:
    """How a series is drawn: its legend name, and the colour its experiment has in every
    report (``key``, its name without a folder's prefix or a ``--label``, chooses it)."""

    name: str
    key: str
    color: str
    linestyle: str = "-"
    marker: str = "o"


def method_name(config: dict[str, Any]) -> str:
    """A run's method in words, IMP by its name (magnitude pruning, rewound survivors)."""
    fields = ExperimentConfig.model_fields  # IMP: the config's defaults, pruning trained weights
    defaults = (fields["prune"].default, fields["reinit"].default, fields["prune_at"].default)
    if (config.get("prune"), config.get("reinit"), config.get("prune_at") or "imp") == defaults:
        words = IMP
        if config.get("scope") == "global":
            words += ", global"
        if config.get("rewind_iter"):
            words += f", rewind to iteration {config['rewind_iter']}"
        return words
    return describe(config)


def _branch_kind(item: Series) -> str | None:
    """The branch kind of a series of branch sets (a group's control, a run's branches)."""
    record = item.trials[0].meta.get("branch")
    if (item.trials[0].folder / paths.BRANCH).is_file() and isinstance(record, dict):
        return str(record.get("kind") or paths.branch_kind_of(item.trials[0].folder))
    return None


def experiment_name(item: Series) -> str:
    """A series' name in the figures, the same in every report: its method in words for a run
    (``IMP (winning ticket)``), its experiment's for a group's (``random reinit``), with the
    grid point for a sweep's, its kind's (and options) for a run's branch set; never a folder's
    hash."""
    experiment = item.experiment
    if item.origin == "sweep":
        if experiment is None:
            return item.name
        own = _experiment_words(item, experiment)
        point = item.name[: -len(f" / {experiment}")] if item.name != experiment else ""
        return f"{point}: {own}" if point else own
    if item.origin == "branch":  # branch_label: "kind (options, seed)"
        kind = _branch_kind(item) or paths.branch_kind_of(item.folder)
        rest = item.name[len(kind) :] if item.name.startswith(kind) else ""
        return NAMES.get(kind, kind) + rest
    if experiment is None:  # a single run
        return method_name(item.config)
    return _experiment_words(item, experiment)


def _experiment_words(item: Series, experiment: str) -> str:
    """A group's or sweep's experiment in words: IMP's method, a control's or branch's name."""
    if experiment == paths.MAIN:
        return method_name(item.config)
    return NAMES.get(experiment, experiment)


def series_styles(series: list[Series], labels: list[str] | None = None) -> list[Style]:
    """Each series' legend name and look. Names: ``experiment_name``, after the folder's name
    where several folders were given, or the folder's ``labels`` entry (with the experiment's
    name where the folder holds several series). Colours: the paper's three fixed (IMP C0,
    random reinit C1, random pruning C2), any other name one of ``HASHED`` by its hash, moved to
    the next free one only where two names of one report would share it; line style and marker
    by the folder given, so one experiment of two folders keeps its colour and both show."""
    sources = sorted({item.source for item in series})
    per_source = {s: sum(item.source == s for item in series) for s in sources}
    names, keys = [], []
    for item in series:
        own = experiment_name(item)
        keys.append(own)
        if labels is not None:
            label = labels[item.source]
            names.append(label if per_source[item.source] == 1 else f"{label}: {own}")
        elif len(sources) > 1:
            names.append(f"{item.folder.name if item.origin != 'branch' else _given(item)}: {own}")
        else:
            names.append(own)
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # two series of one name: told apart
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name} #{seen[name]}"
    colors = _colors(keys)
    position = {s: i for i, s in enumerate(sources)}
    return [
        Style(name, key, colors[key], LINESTYLES[position[item.source] % len(LINESTYLES)],
              MARKERS[position[item.source] % len(MARKERS)])  # fmt: skip
        for item, name, key in zip(series, names, keys, strict=True)
    ]


def _given(item: Series) -> str:
    """The name of the run folder given whose branch set ``item`` is."""
    return item.folder.parent.parent.name


def _colors(keys: list[str]) -> dict[str, str]:
    """A colour for each name: ``FIXED``, else by hash into ``HASHED`` (the next free one on a
    clash within these names, names in sorted order; any colour once those are used up)."""
    found = {k: PALETTE[FIXED[k]] for k in keys if k in FIXED}
    taken = {FIXED[k] for k in found}
    for key in sorted(set(keys) - set(found)):
        start = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        order = [HASHED[(start + i) % len(HASHED)] for i in range(len(HASHED))]
        order += [i for i in range(len(PALETTE)) if i not in HASHED]
        free = [i for i in order if i not in taken]
        index = free[0] if free else order[0]
        taken.add(index)
        found[key] = PALETTE[index]
    return found


def _text(name: str) -> str:
    """``name`` as figure text: a ``$`` is a dollar sign, not mathtext."""
    return name.replace("$", r"\$")


# -- figures -------------------------------------------------------------------------------


def remaining_limits(values: list[float]) -> tuple[float, float]:
    """The remaining axis' limits, densest first (sparsity grows to the right), padded."""
    high, low = max(values), min(values)
    pad = (high / low) ** 0.04 if high > low else 1.1
    return high * pad, low / pad


def _label_size(text: str, size: float, vertical: bool) -> float:
    """How long a tick label is along its axis, in points (DejaVu Sans' digits are 0.64 em)."""
    if vertical:
        return 1.2 * size
    return size * sum(0.32 if c == "." else 0.64 for c in text)


def remaining_ticks(
    values: list[float], length: float = 430.0, size: float = 10.0, vertical: bool = False
) -> list[float]:
    """Tick positions at the remaining values the series reach, thinned so that no two labels
    on an axis ``length`` points long, in ``size`` point type, come within an em of each other:
    the densest and the sparsest value, then the others in the order given (the first series'
    rounds first) wherever they keep clear of every tick taken. Series at different rates reach
    different values; their labels never run into each other (``64.160.1``), and no two ticks
    read the same (two values of one label are closer than that)."""
    given = list(dict.fromkeys(round(v, 6) for v in values if v > 0))
    if len(given) < 2:
        return given
    high, low = remaining_limits(given)
    scale = length / math.log(high / low)

    def clear(a: float, b: float) -> bool:
        room = (_label_size(pct(a), size, vertical) + _label_size(pct(b), size, vertical)) / 2
        return abs(math.log(a / b)) * scale >= room + size

    ticks = [max(given)]
    for value in [min(given), *given]:
        if all(clear(value, tick) for tick in ticks):
            ticks.append(value)
    return sorted(ticks, reverse=True)


def _tick_size(vertical: bool = False) -> float:
    """The tick labels' type size in points, as the style sheet sets it."""
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties

    size = rcParams["ytick.labelsize"] if vertical else rcParams["xtick.labelsize"]
    return float(FontProperties(size=size).get_size_in_points())


def style_remaining_axis(ax: Axes, values: list[float], length: float = 430.0) -> None:
    """Log x axis, sparsity growing to the right, ticks labelled with the rounds' remaining %,
    as many as fit ``length`` points (the axis' width, at least) without touching."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = remaining_ticks(values, length, _tick_size())
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: pct(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(*remaining_limits(values))
    ax.set_xlabel("weights remaining (%)")
    ax.grid(True, alpha=0.3)


def dense_accuracy(series: list[Series]) -> tuple[Series, float] | None:
    """The dense round's mean test accuracy of the first series that has an unflagged one."""
    for item in series:
        summary = item.summary()
        if not summary.empty and summary["round"].iloc[0] == 0 and 0 not in item.flags():
            return item, float(summary["test_mean"].iloc[0])
    return None


def budgets(series: list[Series]) -> list[int]:
    """The training budgets (iterations a round) of the series, each once, ascending."""
    found = {item.config.get("iterations") for item in series}
    return sorted(int(b) for b in found if isinstance(b, int | float) and b > 0)


def metric_figure(
    series: list[Series],
    metric: str,
    ylabel: str,
    title: str,
    styles: list[Style] | None = None,
) -> Figure:
    """``metric`` (mean over trials, min/max band) against weights remaining, one line a series,
    the legend under the axes. On the accuracy figure (``test``) a line marks the dense
    network's accuracy; on the early-stopping one (``ES``) a line marks the training budget."""
    from matplotlib.figure import Figure

    styles = styles if styles is not None else series_styles(series)
    fig = Figure(figsize=(7.5, 5.4), layout="constrained")
    ax = fig.add_subplot()
    values: list[float] = []
    handles: list[Any] = []
    for item, style in zip(series, styles, strict=True):
        summary = item.summary()
        x = summary["remaining"].to_numpy(float)
        values += list(x)
        (line,) = ax.plot(x, summary[f"{metric}_mean"], color=style.color, ls=style.linestyle,
                          marker=style.marker, ms=4, lw=1.6, zorder=3,
                          label=_text(style.name))  # fmt: skip
        handles.append(line)
        if len(item.trials) > 1:  # light, edged by thin dashes: overlapping bands stay legible
            low, high = summary[f"{metric}_min"], summary[f"{metric}_max"]
            ax.fill_between(x, low, high, color=style.color, alpha=0.15, linewidth=0, zorder=1)
            for edge in (low, high):
                ax.plot(x, edge, color=style.color, ls=(0, (3, 2)), lw=0.7, alpha=0.7,
                        zorder=2, label="_band edge")  # fmt: skip
    style_remaining_axis(ax, values, length=fig.get_figwidth() * 72 * 0.8)
    ax.set_ylabel(ylabel)
    dense = dense_accuracy(series) if metric == "test" else None
    if dense is not None:
        item, accuracy = dense
        several = len({s.source for s in series}) > 1  # a group's series share round 0
        whose = f", {styles[series.index(item)].name}" if several else ""
        label = _text(f"dense network{whose}: {num(accuracy)}%")
        handles.append(ax.axhline(accuracy, color=REFERENCE, ls=":", lw=1.1, zorder=2,
                                  label=label))  # fmt: skip
    if metric == "ES":  # speed-ups are ratios: keep zero in view, and the budget above
        top = max(float(s.summary()["ES_max"].max()) for s in series)
        for budget in budgets(series):
            label = f"training budget ({budget:,} iterations)"
            handles.append(ax.axhline(budget, color=REFERENCE, ls="--", lw=1.1, zorder=2,
                                      label=label))  # fmt: skip
            top = max(top, budget)
        ax.set_ylim(0, top * 1.08)
    bands = " (band: min–max over trials)" if any(len(s.trials) > 1 for s in series) else ""
    ax.set_title(title + bands, fontsize=10)
    longest = max(len(h.get_label()) for h in handles)
    fig.legend(handles=handles, labels=[h.get_label() for h in handles],
               loc="outside lower center", ncols=min(len(handles), 3 if longest <= 28 else 2),
               fontsize=8, frameon=False)  # fmt: skip
    return fig


def validation_figure(series: list[Series], styles: list[Style] | None = None) -> Figure:
    """Validation accuracy per iteration, one curve per round coloured by weights remaining;
    one panel per series (its first trial)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    styles = styles if styles is not None else series_styles(series)
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    fig = Figure(figsize=(4.6 * columns + 1, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True)
    remaining = [v for s in series for v in s.trials[0].results["remaining"]]
    norm = remaining_norm(remaining)
    cmap = colormaps["viridis"]
    for ax, item, style in zip(axes.flat, series, styles, strict=False):
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
        title = _text(style.name)
        if len(item.trials) > 1:
            title += f"\n(first trial, {item.trial_names()[0]})"
        ax.set_title(title, fontsize=9, color=style.color)
        ax.set_xlabel("training iteration")
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy (%)")
    for ax in list(axes.flat)[len(series) :]:
        ax.set_visible(False)
    remaining_colorbar(fig, axes, norm, cmap, remaining)
    return fig


def remaining_norm(values: list[float]) -> LogNorm:
    """Colours by weights remaining (a log scale, as the x axes), spanning ``values``."""
    from matplotlib.colors import LogNorm

    return LogNorm(min(values) * 0.9999, max(values) * 1.0001)


def remaining_colorbar(fig: Figure, axes: Any, norm: LogNorm, cmap: Colormap,
                       values: list[float]) -> None:  # fmt: skip
    """The colour bar of curves coloured by weights remaining, beside ``axes``, labelled at
    the remaining percentages of ``values`` that fit (``remaining_ticks``)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9)
    bar.set_label("weights remaining (%)")
    length = fig.get_figheight() * 72 * 0.9 * 0.75
    ticks = remaining_ticks(values, length, _tick_size(vertical=True), vertical=True)
    bar.ax.yaxis.set_major_locator(FixedLocator(ticks))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: pct(v)))
    bar.ax.yaxis.set_minor_locator(NullLocator())


# -- the instability analysis ----------------------------------------------------------------

STABILITY_FIGURES = {  # each figure's file name, less the format's suffix, and its title
    "stability_path": "Test error along the linear path between two copies",
    "stability_barrier": "Test barrier between copies, against k and against weights remaining",
    "between_rounds": "Barrier between the trained networks of successive rounds",
}
CONTROL_STYLES = {"reinit": (":", "^"), "random-prune": ("--", "s")}  # the ticket: ("-", "o")


def control_name(control: str) -> str:
    """A subnetwork of the analysis by the report's names: the ticket as IMP, a control as the
    paper calls it."""
    from .stability import is_ticket

    return IMP if is_ticket(control) else NAMES.get(control, control)


def _controls(values: Any) -> list[str]:
    """The controls among ``values``, the ticket first, then the paper's order."""
    found = list(dict.fromkeys(str(v) for v in values))
    from .stability import CONTROL_KINDS, is_ticket

    rank = {c: i + 1 for i, c in enumerate(CONTROL_KINDS)}
    return sorted(found, key=lambda c: (0 if is_ticket(c) else rank.get(c, len(rank) + 1), c))


def _control_style(control: str) -> tuple[str, str]:
    """A control's line style and marker: the ticket solid, the controls dashed or dotted."""
    from .stability import is_ticket

    return ("-", "o") if is_ticket(control) else CONTROL_STYLES.get(control, ("-.", "D"))


def _by(frame: pd.DataFrame, column: str) -> list[tuple[int, pd.DataFrame]]:
    """``frame``'s rows by the whole number in ``column`` (a round, a k), ascending."""
    values = frame[column].to_numpy(int)
    return [(int(v), frame[values == v]) for v in sorted(set(values.tolist()))]


def _test_path(analysis: Stability) -> pd.DataFrame:
    """The points of an analysis' paths on the test set, of the rounds ``stability.csv``
    gives the weights remaining of (the curves' colours)."""
    path = analysis.path
    if path.empty or analysis.table.empty:
        return path.iloc[0:0]
    known = set(analysis.table["round"])
    return path[(path["split"] == "test") & path["round"].isin(known)]


def _remaining_of(analysis: Stability) -> dict[int, float]:
    """Weights remaining at each round of the analysis' ``stability.csv``."""
    table = analysis.table
    return {int(r): float(v) for r, v in zip(table["round"], table["remaining"], strict=True)}


def stability_stems(analyses: list[Stability]) -> list[str]:
    """The figures of the instability analysis the analyses have rows for, in
    ``STABILITY_FIGURES``' order."""
    have = {
        "stability_path": any(not _test_path(a).empty for a in analyses),
        "stability_barrier": any(not a.table.empty for a in analyses),
        "between_rounds": any(not a.between.empty for a in analyses),
    }
    return [stem for stem in STABILITY_FIGURES if have[stem]]


def _threshold(ax: Axes) -> Any:
    """The stability threshold (``connectivity.STABLE_BELOW``) as a dotted line."""
    from .connectivity import STABLE_BELOW

    return ax.axhline(STABLE_BELOW, color=REFERENCE, ls=":", lw=1.1, zorder=2,
                      label=f"stable below {STABLE_BELOW:g} points")  # fmt: skip


def _barrier_limits(ax: Axes, values: list[float]) -> None:
    """Zero to above the highest barrier, the stability threshold always in view."""
    from .connectivity import STABLE_BELOW

    finite = [v for v in values if np.isfinite(v)]
    top = max([STABLE_BELOW * 1.25, *(v * 1.08 for v in finite)])
    ax.set_ylim(min([0.0, *(v * 1.08 for v in finite)]), top)


def path_figure(analyses: list[Stability]) -> Figure:
    """Test error along the linear path from one copy (α = 0) to the other (α = 1), mean over
    the pairs: one panel per subnetwork (the ticket, each control) and k, one curve per round
    coloured by weights remaining."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    rows = []  # (name, control, points, remaining by round)
    with_path = [a for a in analyses if not _test_path(a).empty]
    for analysis in with_path:
        test = _test_path(analysis)
        remaining = _remaining_of(analysis)
        prefix = f"{analysis.label}\n" if len(with_path) > 1 else ""
        for control in _controls(test["control"]):
            rows.append((prefix + control_name(control), control,
                         test[test["control"] == control], remaining))  # fmt: skip
    ks = sorted({int(k) for _, _, points, _ in rows for k in points["k"]})
    values = list(dict.fromkeys(remaining[int(r)] for *_, points, remaining in rows
                                for r in points["round"]))  # fmt: skip
    norm = remaining_norm(values)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(3.2 * len(ks) + 1.6, 2.7 * len(rows) + 0.9), layout="constrained")
    axes = fig.subplots(len(rows), len(ks), squeeze=False, sharex=True, sharey=True)
    for row, (name, control, points, remaining) in enumerate(rows):
        color = PALETTE[FIXED.get(control_name(control), 7)]
        for column, k in enumerate(ks):
            ax = axes[row, column]
            part = points[points["k"] == k]
            if part.empty:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            for round_index, curve in _by(part, "round"):
                mean = curve.groupby("alpha")["error"].mean()
                ax.plot(mean.index, mean.to_numpy(), lw=1.3,
                        color=cmap(norm(remaining[round_index])))  # fmt: skip
            ax.set_title(f"k = {k}", fontsize=9)
            ax.grid(True, alpha=0.3)
        axes[row, 0].set_ylabel(f"{_text(name)}\ntest error (%)", color=color, fontsize=9)
    for ax in axes[-1, :]:
        ax.set_xlabel("α (copy 1 → copy 2)")
    remaining_colorbar(fig, axes, norm, cmap, values)
    fig.suptitle(STABILITY_FIGURES["stability_path"] + ", mean over pairs; one curve per round",
                 fontsize=10)  # fmt: skip
    return fig


def barrier_figure(analyses: list[Stability]) -> Figure:
    """The test barrier (mean over pairs) against k, one line per round coloured by weights
    remaining, and against weights remaining, one line per k; the ticket solid, the controls
    dashed or dotted; a line at the stability threshold. One row per analysis."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    found = [a for a in analyses if not a.table.empty]
    every_k = sorted({int(k) for a in found for k in a.table["k"]})
    k_colors = colormaps["plasma"](np.linspace(0.0, 0.8, max(len(every_k), 2)))
    k_color = {k: k_colors[i] for i, k in enumerate(every_k)}
    values = [float(v) for a in found for v in a.table["remaining"]]
    norm = remaining_norm(values)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(11.5, 4.2 * len(found) + 1.0), layout="constrained")
    axes = fig.subplots(len(found), 2, squeeze=False)
    controls: list[str] = []
    for (left, right), analysis in zip(axes, found, strict=True):
        groups = analysis.table.groupby(["control", "round", "k"], as_index=False)
        means = groups.agg(barrier=("test_barrier", "mean"), remaining=("remaining", "first"))
        ks = sorted(int(k) for k in means["k"].unique())
        position = {k: i for i, k in enumerate(ks)}
        for control in _controls(means["control"]):
            controls.append(control)
            ls, marker = _control_style(control)
            part = means[means["control"] == control]
            for _, line in _by(part, "round"):
                line = line.sort_values("k")
                left.plot([position[int(k)] for k in line["k"]], line["barrier"], ls=ls,
                          marker=marker, ms=4, lw=1.4,
                          color=cmap(norm(float(line["remaining"].iloc[0]))))  # fmt: skip
            for k, line in _by(part, "k"):
                line = line.sort_values("round")
                right.plot(line["remaining"], line["barrier"], ls=ls, marker=marker, ms=4,
                           lw=1.4, color=k_color[k])  # fmt: skip
        left.set_xticks(range(len(ks)), [str(k) for k in ks])
        left.set_xlim(-0.4, len(ks) - 0.6)
        left.set_xlabel("k: the iteration the copies start from")
        left.grid(True, alpha=0.3)
        style_remaining_axis(right, list(means["remaining"]), fig.get_figwidth() * 72 * 0.4)
        for ax in (left, right):
            threshold = _threshold(ax)
            _barrier_limits(ax, list(means["barrier"]))
            ax.set_ylabel("test barrier (points of error)")
        who = f"{_text(analysis.label)}\n" if len(found) > 1 else ""
        left.set_title(f"{who}against k, one line per round", fontsize=9)
        right.set_title(f"{who}against weights remaining, one line per k", fontsize=9)
    remaining_colorbar(fig, axes[:, 0], norm, cmap, values)
    handles: list[Any] = []
    for control in dict.fromkeys(controls):
        ls, marker = _control_style(control)
        handles.append(Line2D([], [], color=REFERENCE, ls=ls, marker=marker, ms=4, lw=1.4,
                              label=_text(control_name(control))))  # fmt: skip
    handles += [Line2D([], [], color=k_color[k], lw=2, label=f"k = {k}") for k in every_k]
    handles.append(threshold)
    fig.legend(handles=handles, labels=[h.get_label() for h in handles],
               loc="outside lower center", ncols=min(len(handles), 4), fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle(STABILITY_FIGURES["stability_barrier"] + " (mean over pairs)", fontsize=10)
    return fig


def between_figure(analyses: list[Stability]) -> Figure:
    """Paul et al. (2023): the barrier between the trained networks of rounds r and r+1, on the
    test set and the training subset, at round r+1's weights remaining."""
    from matplotlib.figure import Figure

    found = [a for a in analyses if not a.between.empty]
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    values: list[float] = []
    barriers: list[float] = []
    handles: list[Any] = []
    for index, analysis in enumerate(found):
        color = PALETTE[index % len(PALETTE)]
        rows = analysis.between.sort_values("round")
        x = rows["next_remaining"].to_numpy(float)
        values += list(x)
        who = f"{analysis.label}: " if len(found) > 1 else ""
        for column, split, ls, marker in (
            ("test_barrier", "test set", "-", "o"),
            ("train_barrier", "training subset", "--", "s"),
        ):
            if column not in rows:
                continue
            y = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
            if not np.isfinite(y).any():
                continue
            barriers += list(y)
            (line,) = ax.plot(x, y, color=color, ls=ls, marker=marker, ms=4, lw=1.6,
                              label=_text(f"{who}{split}"))  # fmt: skip
            handles.append(line)
    style_remaining_axis(ax, values, length=fig.get_figwidth() * 72 * 0.8)
    ax.set_xlabel("weights remaining of round r+1 (%)")
    ax.set_ylabel("barrier between rounds r and r+1 (points of error)")
    handles.append(_threshold(ax))
    _barrier_limits(ax, barriers)
    ax.set_title(STABILITY_FIGURES["between_rounds"] + " (Paul et al. 2023)", fontsize=10)
    longest = max(len(h.get_label()) for h in handles)
    columns = 3 if longest <= 28 else (2 if longest <= 50 else 1)
    fig.legend(handles=handles, labels=[h.get_label() for h in handles],
               loc="outside lower center", ncols=min(len(handles), columns), fontsize=8,
               frameon=False)  # fmt: skip
    return fig


STABILITY_DRAW = {"stability_path": path_figure, "stability_barrier": barrier_figure,
                  "between_rounds": between_figure}  # fmt: skip


def pivot_lines(rows: pd.DataFrame) -> list[str]:
    """``stability.pivot`` as a table: the mean test barrier by subnetwork and k."""
    from .stability import pivot

    means = pivot(rows)
    remaining = _remaining_of_rows(rows)
    ks = list(means.columns)
    found = []
    for control in _controls(means.index.get_level_values("control")):
        part = means.xs(control, level="control").sort_index()
        rounds = part.index.get_level_values("round").to_numpy(int).tolist()
        for round_index, cells in zip(rounds, part.to_numpy(float), strict=True):
            found.append([control_name(control), str(round_index),
                          pct(remaining.get((control, round_index), math.nan)),
                          *(num(float(v)) for v in cells)])  # fmt: skip
    return table(["subnetwork", "round", "remaining %", *(f"k = {k}" for k in ks)], found)


def _remaining_of_rows(rows: pd.DataFrame) -> dict[tuple[str, int], float]:
    """Weights remaining of each subnetwork and round of ``stability.csv``, unrounded."""
    found: dict[tuple[str, int], float] = {}
    for c, r, v in zip(rows["control"], rows["round"], rows["remaining"], strict=True):
        found.setdefault((str(c), int(r)), float(v))
    return found


def count_lines(rows: pd.DataFrame) -> list[str]:
    """Per subnetwork: pairs of copies, and how many are stable and matching."""
    found = []
    for control in _controls(rows["control"]):
        part = rows[rows["control"] == control]
        found.append([control_name(control), str(len(part)), str(int(part["stable"].sum())),
                      str(int(part["matching"].sum()))])  # fmt: skip
    if len(found) > 1:
        found.append(["all", str(len(rows)), str(int(rows["stable"].sum())),
                      str(int(rows["matching"].sum()))])  # fmt: skip
    return table(["subnetwork", "pairs", "stable", "matching"], found)


def between_lines(rows: pd.DataFrame) -> list[str]:
    """The barriers between successive rounds, and how many are under the threshold."""
    from .connectivity import STABLE_BELOW

    rows = rows.sort_values("round")
    for column in ("train_barrier", "distance"):  # shown where the table has them
        numbers = pd.to_numeric(rows[column], errors="coerce") if column in rows else math.nan
        rows = rows.assign(**{column: numbers})
    found = []
    for _, row in rows.iterrows():
        found.append([f"{int(row['round'])} → {int(row['next_round'])}",
                      f"{pct(row['remaining'])} → {pct(row['next_remaining'])}",
                      num(row["test_barrier"]), num(row["train_barrier"]),
                      num(row["distance"])])  # fmt: skip
    stable = int((rows["test_barrier"] < STABLE_BELOW).sum())
    header = ["rounds", "remaining %", "test barrier", "train barrier", "distance"]
    return table(header, found) + [
        "",
        f"Under {STABLE_BELOW:g} points (linearly connected) between {stable} of {len(rows)} "
        "pairs of successive rounds.",
    ]


def stability_lines(analyses: list[Stability], fmt: str = "png") -> list[str]:
    """The instability section of ``report.md`` (nothing without an analysis): what was
    measured, the mean test barrier by subnetwork and k (``stability.pivot``), the counts of
    stable and matching pairs, ``stability.verdict`` in words, the barriers between successive
    rounds, and the figures."""
    if not analyses:
        return []
    from .connectivity import MATCHING_WITHIN, STABLE_BELOW
    from .stability import verdict

    lines = [
        "## Instability analysis",
        "",
        "Frankle et al. (2020): copies of a round's subnetwork, started from iteration k of "
        "the dense network's training (its weights there, under the round's mask) and trained "
        "to the end with different data orders. The *test barrier* is the highest test error "
        "on the straight path between two copies minus the mean of the two ends' errors, in "
        f"points; a pair is *stable* when it is under {STABLE_BELOW:g} points, and *matching* "
        f"when the copies' mean final test accuracy is within {MATCHING_WITHIN:g} points of "
        "the dense network's. Controls: random reinit (the round's mask, fresh weights trained "
        "to k) and random pruning (a random mask of the same sizes).",
        "",
    ]
    several = len(analyses) > 1
    heading = "####" if several else "###"
    for analysis in analyses:
        if several:
            lines += [f"### {analysis.label}", ""]
        rows = analysis.table
        if not rows.empty:
            lines += ["Mean test barrier over the pairs of copies (points of error), by "
                      "subnetwork and k:", ""]  # fmt: skip
            lines += pivot_lines(rows) + [""]
            lines += ["Pairs of copies, over every round and k:", ""] + count_lines(rows) + [""]
            lines += [f"The least k tried from which each subnetwork is stable (barrier under "
                      f"{STABLE_BELOW:g} points there and at every larger k):", ""]  # fmt: skip
            lines += [f"- {line}" for line in verdict(rows)] + [""]
        if not analysis.between.empty:
            lines += [
                f"{heading} Between successive rounds",
                "",
                "Paul et al. (2023): the barrier on the straight path between the trained "
                "networks of rounds r and r+1 (each under its own mask).",
                "",
            ]
            lines += between_lines(analysis.between) + [""]
        if not rows.empty and _test_path(analysis).empty:
            lines += [f"No {STABILITY_PATH} beside it: no figure of the path.", ""]
    for stem in stability_stems(analyses):  # a PDF is a link, as in the Figures section
        lines += [f"{'' if fmt == 'pdf' else '!'}[{STABILITY_FIGURES[stem]}]({stem}.{fmt})", ""]
    return lines


def _sha256(path: Path) -> str:
    """What ``MANIFEST`` records, so a later report can tell its own files from edited ones."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def figure_files(fmt: str) -> tuple[str, ...]:
    """The figures' file names in format ``fmt``."""
    return tuple(f"{stem}.{fmt}" for stem in FIGURES)


def stability_files(fmt: str, stems: list[str] | None = None) -> tuple[str, ...]:
    """The instability figures' file names in format ``fmt`` (``stems``: those drawn; all)."""
    return tuple(f"{stem}.{fmt}" for stem in (STABILITY_FIGURES if stems is None else stems))


# Every name a report may write: a later report in another format replaces an earlier one's.
OWN_NAMES = (*(name for fmt in FORMATS for name in figure_files(fmt) + stability_files(fmt)),
             MARKDOWN)  # fmt: skip


def check_out(out_dir: Path) -> dict[str, str | None]:
    """Refuse a report folder holding anything the report did not write: a user's files, or
    a report's files changed since (``MANIFEST`` says which and what they held). Returns what
    ``MANIFEST`` lists of the files there, each checked to be as the report wrote it."""
    if not out_dir.exists():
        return {}
    if not out_dir.is_dir():
        raise LotteryError(f"{str(out_dir)!r} exists and is not a folder")
    try:
        entries = {p.name: p for p in out_dir.iterdir() if not files.is_own_temp(p.name)}
        written: dict[str, str | None] = {}
        if MANIFEST in entries:
            written = json.loads(_read_manifest(entries.pop(MANIFEST), out_dir))
            if not isinstance(written, dict):
                written = {}
        foreign = []
        for name, entry in sorted(entries.items()):
            ours = name in written and name in OWN_NAMES
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
    return {name: written[name] for name in entries}


def _read_manifest(path: Path, out_dir: Path) -> str:
    """``MANIFEST``'s text, if it is a regular file: a FIFO there would block its reader for
    good (a device or a socket is no better), so anything else is refused in one line, never
    opened (and what is opened, without following a link nor waiting, is checked again)."""
    kind = files.special_kind(path)
    if kind is None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb") as handle:
            kind = files.special_kind(handle.fileno())
            if kind is None:
                return handle.read().decode()
    raise LotteryError(
        f"--out {str(out_dir)!r} holds a {MANIFEST} that is {kind}, not a file a report wrote; "
        "choose another --out (a new or empty folder), nothing was written"
    )


def _write_manifest(out_dir: Path, names: tuple[str, ...], done: bool,
                    kept: dict[str, str | None] | None = None) -> None:  # fmt: skip
    """Claim ``names`` before writing them (``done=False``; with ``kept``, an earlier report's
    files still there, about to be removed), then record what they hold."""
    record = {n: _sha256(out_dir / n) if done else None for n in names}
    files.write_json(out_dir / MANIFEST, {**(kept or {}), **record})


def save_figure(fig: Figure, path: Path, fmt: str = "png") -> None:
    """Atomically, so a killed report never leaves half a figure under a real name; without a
    date in a PDF or SVG, nor random ids in an SVG, so the same report is the same file."""
    from matplotlib import rc_context

    metadata = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
    with rc_context({"svg.hashsalt": "lottery-report"}):
        files.atomic_write(
            path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110, metadata=metadata)
        )


def check_labels(labels: list[str] | None, count: int) -> None:
    """One ``--label`` per folder given, each a name on one line; else one line saying so."""
    if labels is None:
        return
    if len(labels) != count:
        raise LotteryError(
            f"--label given {len(labels)} time(s) for {count} run folder(s): give one per "
            "folder, in the order of the folders"
        )
    for label in labels:
        if not label.strip() or any(ord(c) < 32 for c in label):
            raise LotteryError(f"--label {label!r}: a legend name needs text on one line")


# -- the report ----------------------------------------------------------------------------


def write_report(
    run_dirs: list[Path],
    out_dir: Path | None = None,
    tolerance: float = 0.5,
    by: list[str] | None = None,
    labels: list[str] | None = None,
    fmt: str = "png",
) -> Path:
    """Write ``report.md`` and its figures for single run and trials/controls folders.

    ``out_dir`` defaults to ``<first run dir>/report/``; returns the path of ``report.md``.
    Files: ``report.md``, ``accuracy.<fmt>``, ``early_stop.<fmt>``, ``validation.<fmt>``
    (``fmt``: png, pdf or svg) and ``.report.json`` (what was written); for a run with an
    instability analysis also ``stability_path.<fmt>``, ``stability_barrier.<fmt>`` and
    ``between_rounds.<fmt>``, those it has rows for (``stability_stems``). ``out_dir`` must be new,
    empty, or hold only an earlier report's files unchanged: a user's files are never
    overwritten (``check_out``); an earlier report's figures in another format are removed.
    ``labels``: one legend name per folder of ``run_dirs`` (``series_styles``), also the
    series' names in ``report.md``.
    """
    if not math.isfinite(tolerance) or tolerance < 0:
        raise LotteryError(
            f"tolerance must be a finite number of points, 0 or more (got {tolerance})"
        )
    if fmt not in FORMATS:
        raise LotteryError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    check_labels(labels, len(run_dirs))
    series, notes = load_series([Path(p) for p in run_dirs], by=by)
    styles = series_styles(series, labels)
    if labels is not None:  # the user's names, in the text as in the figures
        for item, style in zip(series, styles, strict=True):
            item.label = style.name
    analyses = load_stability(series)
    stems = stability_stems(analyses)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dirs[0]) / "report"
    earlier = check_out(out_dir)
    for stray in files.own_temp_files(out_dir, (*OWN_NAMES, MANIFEST)):
        stray.unlink(missing_ok=True)  # a killed report's, provably
    figures = dict(zip(FIGURES, figure_files(fmt), strict=True))
    extra = dict(zip(stems, stability_files(fmt, stems), strict=True))
    names = (*figures.values(), *extra.values(), MARKDOWN)
    stale = {name: sha for name, sha in earlier.items() if name not in names}
    _write_manifest(out_dir, names, done=False, kept=stale)
    for name in stale:  # an earlier report's, unchanged (check_out): this report replaces it
        (out_dir / name).unlink(missing_ok=True)
    accuracy = metric_figure(series, "test", "test accuracy at early stop (%)",
                             FIGURES["accuracy"], styles)  # fmt: skip
    save_figure(accuracy, out_dir / figures["accuracy"], fmt)
    early = metric_figure(series, "ES", "early-stopping iteration", FIGURES["early_stop"], styles)
    save_figure(early, out_dir / figures["early_stop"], fmt)
    save_figure(validation_figure(series, styles), out_dir / figures["validation"], fmt)
    for stem, name in extra.items():
        save_figure(STABILITY_DRAW[stem](analyses), out_dir / name, fmt)
    path = out_dir / MARKDOWN
    files.write_text(path, markdown(series, notes, tolerance, fmt, styles, analyses))
    _write_manifest(out_dir, names, done=True)
    return path
