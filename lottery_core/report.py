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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import divergence, files, paths
from .config import ExperimentConfig
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
) -> str:
    """``report.md``: the verdict first, then what backs it (setup, rounds, layers, figures
    in ``fmt``)."""
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
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    styles = styles if styles is not None else series_styles(series)
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    fig = Figure(figsize=(4.6 * columns + 1, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True)
    remaining = [v for s in series for v in s.trials[0].results["remaining"]]
    norm = LogNorm(min(remaining) * 0.9999, max(remaining) * 1.0001)
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
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9)
    bar.set_label("weights remaining (%)")
    length = fig.get_figheight() * 72 * 0.9 * 0.75
    ticks = remaining_ticks(remaining, length, _tick_size(vertical=True), vertical=True)
    bar.ax.yaxis.set_major_locator(FixedLocator(ticks))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: pct(v)))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    return fig


def _sha256(path: Path) -> str:
    """What ``MANIFEST`` records, so a later report can tell its own files from edited ones."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def figure_files(fmt: str) -> tuple[str, ...]:
    """The figures' file names in format ``fmt``."""
    return tuple(f"{stem}.{fmt}" for stem in FIGURES)


# Every name a report may write: a later report in another format replaces an earlier one's.
OWN_NAMES = (*(name for fmt in FORMATS for name in figure_files(fmt)), MARKDOWN)


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
    (``fmt``: png, pdf or svg) and ``.report.json`` (what was written). ``out_dir`` must be new,
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
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dirs[0]) / "report"
    earlier = check_out(out_dir)
    for stray in files.own_temp_files(out_dir, (*OWN_NAMES, MANIFEST)):
        stray.unlink(missing_ok=True)  # a killed report's, provably
    figures = dict(zip(FIGURES, figure_files(fmt), strict=True))
    names = (*figures.values(), MARKDOWN)
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
    path = out_dir / MARKDOWN
    files.write_text(path, markdown(series, notes, tolerance, fmt, styles))
    _write_manifest(out_dir, names, done=True)
    return path
