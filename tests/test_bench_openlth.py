"""bench.openlth_lenet and bench.cifar_steps without OpenLTH: arguments, the copy's fixes,
the tables, the bare loop's augmentation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import cifar_steps, openlth_lenet
from bench.openlth_lenet import FIXES, LevelResult, Missing


def test_machine_slug() -> None:
    assert openlth_lenet.machine_slug("AMD EPYC") == "epyc"
    assert openlth_lenet.machine_slug("AMD EPYC 9B45 128-Core Processor") == "epyc"
    assert openlth_lenet.machine_slug("Intel(R) Xeon(R) Processor @ 2.60GHz") == "xeon"
    assert openlth_lenet.machine_slug("") == "cpu"


def fake_tree(root: Path, fixed: bool = False) -> Path:
    for name, before, after, _ in FIXES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"import abc\n{after if fixed else before}x)\n")
    (root / "open_lth.py").write_text("")
    return root


def test_fixes_apply_once_and_refuse_another_tree(tmp_path) -> None:
    tree = fake_tree(tmp_path / "a")
    done = openlth_lenet.apply_fixes(tree)
    assert len(done) == len(FIXES) and all("->" in line for line in done)
    for name, before, after, _ in FIXES:
        text = (tree / name).read_text()
        assert after in text and before not in text
    again = openlth_lenet.apply_fixes(tree)
    assert all("already" in line for line in again)
    (tree / FIXES[0][0]).write_text("something else\n")
    with pytest.raises(Missing, match="neither"):
        openlth_lenet.apply_fixes(tree)


def test_copy_never_writes_the_source(tmp_path) -> None:
    source = fake_tree(tmp_path / "src")
    before = {p: p.read_text() for p in source.rglob("*.py")}
    openlth_lenet.copy_open_lth(source, tmp_path / "copy")
    openlth_lenet.apply_fixes(tmp_path / "copy")
    assert {p: p.read_text() for p in source.rglob("*.py")} == before


def test_a_missing_checkout_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    assert openlth_lenet.main(["--open-lth", str(tmp_path / "none")]) == 2
    assert cifar_steps.main(["--open-lth", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("Error: OpenLTH's checkout") for line in err)


def test_missing_mnist_is_refused(tmp_path, capsys) -> None:
    tree = fake_tree(tmp_path / "olth")
    argv = ["--open-lth", str(tree), "--data-dir", str(tmp_path / "nodata")]
    assert openlth_lenet.main(argv) == 2
    assert "MNIST not found" in capsys.readouterr().err


def test_arguments() -> None:
    args = openlth_lenet.parse_args([])
    assert (args.levels, args.epochs, args.threads) == (3, 40, None)
    with pytest.raises(SystemExit):
        openlth_lenet.parse_args(["--epochs", "0"])
    assert cifar_steps.parse_args(["--steps", "3"]).steps == 3
    with pytest.raises(SystemExit):
        cifar_steps.parse_args(["--images", "300", "--steps", "10"])


def test_ours_argv_starts_then_extends(tmp_path) -> None:
    first = openlth_lenet.ours_argv(tmp_path / "o", 0, 18760, tmp_path, 1)
    flags = " ".join(first)
    for part in (
        "--optimizer sgd",
        "--lr 0.1",
        "--batch-size 128",
        "--iterations 18760",
        "--scope global",
        "--rate 0.2",
        "--threads 1 --thread-rule fixed",
    ):
        assert part in flags
    later = openlth_lenet.ours_argv(tmp_path / "o", 2, 18760, tmp_path, 1)
    assert later[later.index("--resume") + 1] == str(tmp_path / "o")
    assert later[later.index("--rounds") + 1] == "3"


def test_table() -> None:
    theirs = LevelResult(remaining=80.0, test_end=98.1, wall_s=300.0, train_s=290.0)
    ours = LevelResult(80.0, 98.0, 100.0, 90.0, test_es=98.2, es=9000, output_remaining=97.5)
    rows = openlth_lenet.table_rows([(theirs, ours)])
    assert rows[0][0] == "0" and "3.00x" in rows[0] and "98.20" in rows[0]
    text = openlth_lenet.format_table(rows)
    assert len(text.splitlines()) == 2
    assert "3.00x" in openlth_lenet.totals([(theirs, ours)])
    row = cifar_steps.Row("m", 21.0, 21.0, 100.0, 95.0, 150.0, 1.05, 0.67)
    assert "0.67x" in cifar_steps.format_rows([row])
    assert math.isnan(LevelResult(1.0, 1.0, 1.0, 1.0).test_es)


def test_crop_flip_keeps_pixels() -> None:
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = cifar_steps.crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    # a crop of the zero-padded image: no pixel value it did not have, plus zeros
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0}
