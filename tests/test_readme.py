"""The README's Layout table names every module, and every path it names exists.

The table's first column holds backticked paths. A path with a folder (``lottery_core/x.py``)
sets the folder for the bare names after it in the same cell, so a row
``| `lottery_core/checkpoint.py`, `files.py` | ... |`` names ``lottery_core/files.py`` too; a
bare name with no folder before it (``cli.py``) is at the repository root.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PACKAGES = ("lottery_core", "plugins")
BACKTICKED = re.compile(r"`([^`]+)`")


def layout_section(text: str) -> list[str]:
    """The lines under the ``## Layout`` heading, up to the next ``## `` heading."""
    lines = text.splitlines()
    start = lines.index("## Layout") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def listed_paths(text: str) -> set[str]:
    """Every path the Layout tables' first column names, relative to the repository root."""
    paths: set[str] = set()
    for line in layout_section(text):
        if not line.lstrip().startswith("|"):
            continue
        cells = line.strip().strip("|").split("|")
        folder = ""
        for name in BACKTICKED.findall(cells[0]):
            if "/" in name.rstrip("/"):
                folder = name.rsplit("/", 1)[0] + "/"
                paths.add(name)
            else:
                paths.add(name if name.endswith("/") else folder + name)
    return paths


def modules() -> set[str]:
    """Every module file of the core and the built-in plugins (not ``plugins/__init__.py``)."""
    found = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).glob("*.py")
    }
    return found - {"plugins/__init__.py"}


def test_listed_paths_parse_a_grouped_row():
    text = "\n".join(
        [
            "## Layout",
            "| path | one job |",
            "|---|---|",
            "| `cli.py` | the shim |",
            "| `lottery_core/checkpoint.py`, `files.py` | checkpoints; atomic files |",
            "| `examples/` | a `plugins/x.py` in the second column is not a path |",
            "## Next",
            "| `not/listed.py` | below the section |",
        ]
    )
    assert listed_paths(text) == {
        "cli.py",
        "lottery_core/checkpoint.py",
        "lottery_core/files.py",
        "examples/",
    }


def test_every_module_is_in_the_layout_table():
    missing = sorted(modules() - listed_paths(README.read_text(encoding="utf-8")))
    assert not missing, f"README.md's Layout table does not name {missing}"


def test_every_path_in_the_layout_table_exists():
    listed = listed_paths(README.read_text(encoding="utf-8"))
    absent = sorted(path for path in listed if not (ROOT / path).exists())
    assert not absent, f"README.md's Layout table names {absent}, which do not exist"
