"""The printed table (one row per measurement, with its target and PASS/FAIL where it has one),
its JSON form, and the lines that name the machine."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class Row:
    """One measurement. ``target`` is ``("<=", bound)`` or ``(">=", bound)``, or None (info)."""

    section: str
    key: str
    label: str
    value: float
    unit: str
    target: tuple[str, float] | None = None

    @property
    def status(self) -> str:
        if self.target is None:
            return ""
        op, bound = self.target
        ok = self.value <= bound if op == "<=" else self.value >= bound
        return "PASS" if ok else "FAIL"


def _fmt(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    if unit in ("ms", "s", "GFLOP/s", "MFLOP", "MiB"):
        return f"{value:,.{3 if unit == 'ms' and value < 10 else 1}f} {unit}"
    return f"{value:g} {unit}".strip()


def render(rows: list[Row], before: dict[str, float] | None = None) -> str:
    """The table as text, grouped by section; a ``before`` column when a baseline is given."""
    header = ["measurement", "value", "target", "status"]
    if before is not None:
        header.insert(1, "before")
    lines: list[list[str]] = []
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append([f"[{section}]"])
        target = "" if row.target is None else f"{row.target[0]} {_fmt(row.target[1], row.unit)}"
        cells = ["  " + row.label, _fmt(row.value, row.unit), target, row.status]
        if before is not None:
            cells.insert(1, _fmt(before.get(row.key), row.unit))
        lines.append(cells)
    widths = [max(len(c[i]) for c in [header, *lines] if len(c) > i) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("-" * len(out[0]))
    for cells in lines:
        if len(cells) == 1:
            out.append(cells[0])
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(out)


def write_json(path: Path, rows: list[Row], meta: dict) -> None:
    """Every row (with its status) and the run's settings, as JSON."""
    payload = {
        "meta": meta,
        "rows": [{**asdict(r), "status": r.status} for r in rows],
        "values": {r.key: r.value for r in rows},
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def read_values(path: Path) -> dict[str, float]:
    """The ``values`` of an earlier ``--json`` file, for the ``before`` column."""
    return json.loads(Path(path).read_text())["values"]


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo`` (Linux) with its ``cpu family`` and
    ``model`` numbers as the kernel reports them (what lscpu shows: the bench names only what
    it read), else what ``platform`` says."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key and key not in fields and value.strip():
                fields[key] = " ".join(value.split())
    except OSError:
        pass
    name = next((fields[k] for k in ("model name", "Model", "cpu model") if k in fields), "")
    if not name:
        return platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine(threads: int, baseline_threads: list[int]) -> dict:
    """What a figure depends on: the CPU, its core count, torch, and the thread counts used."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count() or 0,
        "torch": torch.__version__,
        "threads": threads,
        "baseline_threads": baseline_threads,
    }


def machine_lines(facts: dict) -> str:
    choices = ", ".join(str(t) for t in facts["baseline_threads"])
    return (
        f"CPU: {facts['cpu']}, {facts['cores']} cores\n"
        f"torch {facts['torch']}; our step on {facts['threads']} threads (the config's default, "
        f"one per core); the baselines on the faster of {choices} threads"
    )
