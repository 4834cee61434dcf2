"""OpenLTH's LeNet-300-100 lottery recipe in OpenLTH and in this framework, side by side.

``python -m bench.openlth_lenet --open-lth PATH`` runs facebookresearch/open_lth's
``mnist_lenet_300_100`` default recipe (SGD lr 0.1 without momentum or weight decay, batch 128,
40 epochs a level, ``sparse_global`` pruning of 20% a level with the output layer's weights
ignored) with ``open_lth.py lottery``, and the closest run this framework's flags express
(``lottery run --model lenet_fc --optimizer sgd --lr 0.1 --batch-size 128 --scope global
--rate 0.2``, the same number of SGD steps a level), on the same MNIST files (``--data-dir``,
torchvision's layout). Levels are interleaved: each tool trains level L in its own fresh process
(OpenLTH's ``--levels=L`` skips the levels it has; ours is ``--resume DIR --rounds L+1``), the
tool that goes first alternating, so a shared machine's drift hits both alike. Per level it
prints the weights remaining, OpenLTH's test accuracy at the end of training (what OpenLTH
reports), ours at the end and at early stopping, each tool's wall seconds (the process) and its
own training time, and the ratio of the walls.

OpenLTH is only run, never imported here: PATH is a checkout (or a bare git repository, whose
HEAD is extracted), copied to a temporary folder where ``FIXES`` (two one-line compatibility
fixes for current PyTorch and NumPy) are applied; its ``open_lth_data`` and dataset roots live in
a temporary home (``$HOME``, which its ``platforms/local.py`` reads), whose
``open_lth_datasets/mnist`` is a link to ``--data-dir``. ``bench/README.md`` has the figures.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OPEN_LTH = os.environ.get("OPEN_LTH", "/tmp/open_lth")
MNIST_TRAIN = 60_000  # OpenLTH trains on all of it (no validation split)
BATCH = 128
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# (file, text before, text after, why): what OpenLTH at 2ce732f needs on torch 2.14 / NumPy 2.
FIXES: tuple[tuple[str, str, str, str], ...] = (
    (
        "models/base.py",
        "class Model(abc.ABC, torch.nn.Module):",
        "class Model(torch.nn.Module, abc.ABC):",
        "MRO: torch's DistributedDataParallel now derives from Module and Joinable (an ABC), so "
        "OpenLTH's DistributedDataParallel(Model, DDP) with Model(ABC, Module) has no "
        "consistent method resolution order and `import models.base` fails",
    ),
    (
        "training/optimizers.py",
        "np.product(",
        "np.prod(",
        "np.product was removed in NumPy 2.0 (used by the learning-rate schedule's lambda)",
    ),
)


class Missing(Exception):
    """OpenLTH's checkout (or the data) is not where it was asked for."""


# -- the machine ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_slug(model: str) -> str:
    """A short machine name for file names: ``epyc``, ``xeon``, ... from the CPU model."""
    words = re.sub(r"\((R|TM|tm)\)", " ", model).lower().split()
    for known in ("epyc", "xeon", "ryzen", "threadripper", "core", "graviton", "neoverse"):
        if known in words:
            return known
    useful = [w for w in words if w not in {"amd", "intel", "processor", "cpu", "@"}]
    return re.sub(r"[^a-z0-9]+", "-", useful[0]) if useful else "cpu"


def machine_line() -> str:
    import torch  # here, so --help and a missing checkout stay instant

    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}, load average at the end "
        f"{os.getloadavg()[0]:.2f}"
    )


# -- OpenLTH's copy -------------------------------------------------------------------------


def _is_bare_git(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def find_open_lth(path: Path) -> tuple[Path, bool]:
    """``(path, bare)`` for a checkout holding ``open_lth.py`` or a bare git repository, or a
    directory that holds one bare repository (``repo``); ``Missing`` otherwise."""
    if (path / "open_lth.py").is_file():
        return path, False
    for candidate in (path, path / "repo", path / ".git"):
        if _is_bare_git(candidate):
            return candidate, True
    raise Missing(
        f"OpenLTH's checkout not found at {path} (no open_lth.py there): clone "
        "facebookresearch/open_lth and pass --open-lth PATH (or set OPEN_LTH)"
    )


def copy_open_lth(source: Path, dest: Path) -> str:
    """OpenLTH's files into ``dest`` (a fresh copy; the source is never written); returns the
    commit where git can tell it, else ``unknown``."""
    where, bare = find_open_lth(source)
    dest.mkdir(parents=True, exist_ok=True)
    git = ["git", f"--git-dir={where}"] if bare else ["git", "-C", str(where)]
    if bare:
        tar = subprocess.run([*git, "archive", "HEAD"], capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
            archive.extractall(dest, filter="data")
    else:
        shutil.copytree(where, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    done = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def apply_fixes(tree: Path) -> list[str]:
    """Apply ``FIXES`` to the copy at ``tree``; one line per fix saying what was done (a fix
    whose new text is already there is reported as not needed). A file that has neither text is
    an error: the checkout is not the OpenLTH these fixes were written for."""
    report = []
    for name, before, after, why in FIXES:
        path = tree / name
        text = path.read_text()
        if before in text:
            path.write_text(text.replace(before, after))
            report.append(f"{name}: `{before}` -> `{after}` ({why})")
        elif after in text:
            report.append(f"{name}: already `{after}`, not changed")
        else:
            raise Missing(f"{name} in the OpenLTH copy has neither `{before}` nor `{after}`")
    return report


def open_lth_home(home: Path, datasets: dict[str, Path]) -> dict[str, str]:
    """An environment whose ``$HOME`` is ``home``: OpenLTH's ``platforms/local.py`` puts its
    results under ``~/open_lth_data`` and reads datasets from ``~/open_lth_datasets/<name>``,
    here links to the given folders."""
    root = home / "open_lth_datasets"
    root.mkdir(parents=True, exist_ok=True)
    for name, folder in datasets.items():
        link = root / name
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
    return {**os.environ, "HOME": str(home)}


# -- one level in each tool -----------------------------------------------------------------


@dataclass
class LevelResult:
    """One tool's level: remaining %, accuracies in percent, seconds."""

    remaining: float
    test_end: float
    wall_s: float
    train_s: float
    test_es: float = math.nan
    es: int = -1
    output_remaining: float = math.nan


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None, log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(
            f"{' '.join(argv[:3])} ... exited {done.returncode}; log {log}:\n" + "\n".join(tail)
        )
    return wall


def open_lth_argv(level: int, epochs: int) -> list[str]:
    return [
        sys.executable,
        "open_lth.py",
        "lottery",
        "--default_hparams=mnist_lenet_300_100",
        f"--levels={level}",
        f"--training_steps={epochs}ep",
    ]


def open_lth_level(
    tree: Path, env: dict[str, str], level: int, epochs: int, log: Path
) -> LevelResult:
    wall = _run(open_lth_argv(level, epochs), tree, env, log)
    found = sorted(
        (Path(env["HOME"]) / "open_lth_data").glob(f"lottery_*/replicate_1/level_{level}/main")
    )
    if len(found) != 1:
        raise RuntimeError(f"OpenLTH's level {level} folder not found (or several): {found}")
    folder = found[0]
    rows = [line.split(",") for line in (folder / "logger").read_text().splitlines() if line]
    accuracy = {int(step): float(value) for name, step, value in rows if name == "test_accuracy"}
    sparsity = json.loads((folder / "sparsity_report.json").read_text())
    # the level's start and end weights are saved as its training starts and ends
    start, end = folder / "model_ep0_it0.pth", folder / f"model_ep{epochs}_it0.pth"
    return LevelResult(
        remaining=100 * sparsity["unpruned"] / sparsity["total"],
        test_end=100 * accuracy[max(accuracy)],
        wall_s=wall,
        train_s=end.stat().st_mtime - start.stat().st_mtime,
    )


def ours_argv(
    out: Path, level: int, iterations: int, data_dir: Path, threads: int | None
) -> list[str]:
    if level > 0:
        return [
            sys.executable,
            "cli.py",
            "run",
            "--resume",
            str(out),
            "--rounds",
            str(level + 1),
            "--quiet",
        ]
    argv = [
        sys.executable,
        "cli.py",
        "run",
        "--model",
        "lenet_fc",
        "--dataset",
        "mnist",
        "--data-dir",
        str(data_dir),
        "--no-download",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--batch-size",
        str(BATCH),
        "--iterations",
        str(iterations),
        "--scope",
        "global",
        "--rate",
        "0.2",
        "--prune",
        "magnitude",
        "--reinit",
        "rewind",
        "--rounds",
        "1",
        "--seed",
        "0",
        "--out",
        str(out),
        "--quiet",
    ]
    if threads:
        argv += ["--threads", str(threads), "--thread-rule", "fixed"]
    return argv


def ours_level(
    out: Path, level: int, iterations: int, data_dir: Path, threads: int | None, log: Path
) -> LevelResult:
    wall = _run(ours_argv(out, level, iterations, data_dir, threads), ROOT, None, log)
    with (out / "results.csv").open() as f:
        row = [r for r in csv.DictReader(f) if int(r["round"]) == level][0]
    with (out / "layers.csv").open() as f:
        output = [
            r for r in csv.DictReader(f) if int(r["round"]) == level and r["kind"] == "output"
        ]
    return LevelResult(
        remaining=float(row["remaining"]),
        test_end=float(row["final_test"]),
        wall_s=wall,
        train_s=float(row["time_s"]),
        test_es=float(row["test"]),
        es=int(row["ES"]),
        output_remaining=float(output[0]["remaining_pct"]) if output else math.nan,
    )


# -- the table ------------------------------------------------------------------------------

COLUMNS = (
    "level",
    "OLTH remain%",
    "ours remain%",
    "ours out%",
    "OLTH test",
    "ours final",
    "ours ES",
    "ours test@ES",
    "OLTH wall_s",
    "ours wall_s",
    "wall OLTH/ours",
    "OLTH train_s",
    "ours train_s",
    "train OLTH/ours",
)


def table_rows(levels: Sequence[tuple[LevelResult, LevelResult]]) -> list[list[str]]:
    """One row of strings per level: ``(OpenLTH's, ours)``."""
    rows = []
    for level, (theirs, ours) in enumerate(levels):
        rows.append(
            [
                str(level),
                f"{theirs.remaining:.1f}",
                f"{ours.remaining:.1f}",
                f"{ours.output_remaining:.1f}",
                f"{theirs.test_end:.2f}",
                f"{ours.test_end:.2f}",
                str(ours.es),
                f"{ours.test_es:.2f}",
                f"{theirs.wall_s:.1f}",
                f"{ours.wall_s:.1f}",
                f"{theirs.wall_s / ours.wall_s:.2f}x",
                f"{theirs.train_s:.1f}",
                f"{ours.train_s:.1f}",
                f"{theirs.train_s / ours.train_s:.2f}x",
            ]
        )
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    lines = [" ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += [" ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def totals(levels: Sequence[tuple[LevelResult, LevelResult]]) -> str:
    theirs = sum(t.wall_s for t, _ in levels)
    ours = sum(o.wall_s for _, o in levels)
    return (
        f"total wall: OpenLTH {theirs:.0f} s, ours {ours:.0f} s "
        f"({theirs / ours:.2f}x); both {theirs + ours:.0f} s"
    )


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.openlth_lenet", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--open-lth",
        type=Path,
        default=Path(DEFAULT_OPEN_LTH),
        help="OpenLTH checkout, or a bare git repository of it (default: "
        "$OPEN_LTH, else /tmp/open_lth); never written, a copy is patched",
    )
    parser.add_argument(
        "--levels",
        type=int,
        default=3,
        help="pruning levels after the dense one, as OpenLTH's --levels (default 3: levels 0..3)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=40,
        help="epochs a level in OpenLTH (its recipe: 40); ours trains the same "
        "number of steps, epochs x ceil(60000 / 128)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for both tools (OMP_NUM_THREADS for OpenLTH, "
        "--threads N --thread-rule fixed for ours); default: each tool's own "
        "(OpenLTH: torch's, one per core; ours: its adaptive rule)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "data",
        help="folder holding MNIST/raw/ (torchvision's layout), read by both",
    )
    parser.add_argument("--save", type=Path, default=None, help="also write the output here")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep both tools' run folders and logs in this new folder",
    )
    args = parser.parse_args(argv)
    if args.levels < 0 or args.epochs < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--levels must be >= 0, --epochs and --threads >= 1")
    return args


def check_mnist(data_dir: Path) -> None:
    raw = data_dir / "MNIST" / "raw"
    lacking = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if lacking:
        raise Missing(f"MNIST not found: {raw} lacks {', '.join(lacking)} (uncompressed)")


def run(args: argparse.Namespace, work: Path) -> str:
    tree = work / "open_lth"
    commit = copy_open_lth(args.open_lth, tree)
    fixes = apply_fixes(tree)
    env = open_lth_home(work / "home", {"mnist": args.data_dir})
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    iterations = args.epochs * math.ceil(MNIST_TRAIN / BATCH)
    ours_out, logs = work / "ours", work / "logs"
    logs.mkdir()
    head = [
        f"OpenLTH {commit[:7]} (from {args.open_lth}) against this framework: mnist_lenet_300_100"
        f", levels 0..{args.levels}, {args.epochs} epochs a level ({iterations} SGD steps of "
        f"batch {BATCH}), MNIST from {args.data_dir.resolve() / 'MNIST' / 'raw'} for both",
        "threads: "
        + (
            f"{args.threads} for both (fixed)"
            if args.threads
            else "each tool's default (OpenLTH: torch's; ours: adaptive)"
        ),
        "OpenLTH: " + " ".join(open_lth_argv(0, args.epochs)[1:]).replace("=0 ", "=L "),
        "ours:    " + " ".join(ours_argv(ours_out, 0, iterations, args.data_dir, args.threads)[1:]),
        "         then: cli.py run --resume DIR --rounds L+1 --quiet, a level at a time",
        "OpenLTH compatibility fixes applied to its temporary copy:",
        *(f"  {line}" for line in fixes),
    ]
    print("\n".join(head), file=sys.stderr, flush=True)
    levels: list[tuple[LevelResult, LevelResult]] = []
    for level in range(args.levels + 1):
        order = ["openlth", "ours"] if level % 2 == 0 else ["ours", "openlth"]
        got: dict[str, LevelResult] = {}
        for tool in order:
            print(f"  level {level}: {tool} ...", file=sys.stderr, flush=True)
            if tool == "openlth":
                got[tool] = open_lth_level(tree, env, level, args.epochs, logs / "openlth.log")
            else:
                got[tool] = ours_level(
                    ours_out, level, iterations, args.data_dir, args.threads, logs / "ours.log"
                )
        levels.append((got["openlth"], got["ours"]))
        print(
            f"  level {level} done: {got['openlth'].wall_s:.0f} s and {got['ours'].wall_s:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    notes = [
        "OLTH test: OpenLTH's test accuracy at the end of the level (what it reports); ours "
        "final: ours at the end; ours test@ES: ours at the early-stopping iteration ES (best "
        "validation loss, 5,000 held-out training images); remain%: weights remaining of all "
        "266,200 fc weights (output layer included); ours out%: our output layer's remaining "
        "(OpenLTH never prunes it); wall_s: the tool's process, start to exit; train_s: its "
        "own training time of the level (OpenLTH: from its saved start to end weights, "
        "with its per-epoch test evaluations; ours: the round's time_s).",
    ]
    return "\n".join(
        [*head, format_table(table_rows(levels)), totals(levels), *notes, machine_line()]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        find_open_lth(args.open_lth)
        check_mnist(args.data_dir)
    except Missing as missing:
        print(f"Error: {missing}", file=sys.stderr)
        return 2
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        work = args.keep
        table = run(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="openlth-lenet-") as folder:
            table = run(args, Path(folder))
    print(table)
    if args.save is not None:
        args.save.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
