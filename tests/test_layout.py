"""Imports follow the README's Layout: down the table, plugins only on the contracts, no cycles.

Every ``import`` and ``from ... import`` statement counts, at module level or inside a function,
relative or absolute (``from . import x``, ``from .x import y``, ``from lottery_core.x import y``,
``import lottery_core.x``, ``from lottery_core import x`` where ``x`` is a module). Exempt:

- the body of an ``if TYPE_CHECKING:`` block (its ``else:`` still counts), which never runs;
- imports by a computed name (``importlib.import_module(name)``, a Ray task's ``"module:name"``
  target): the plugin manager loads the built-in plugins by name, which the README allows;
- the package's ``__init__.py`` that Python runs before any submodule: importing
  ``lottery_core.x`` counts as importing ``lottery_core/x.py`` only. Importing a public name
  (``from lottery_core import LotteryError``) counts as importing ``lottery_core/__init__.py``.

``lottery_core/__init__.py`` imports its public names on first use: every module its
``_EXPORTS`` table names counts as imported by it, at the line naming it. A module the table does
not list is left to tests/test_readme.py, which fails for it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.test_readme import BACKTICKED, README, ROOT, layout_section

CORE = "lottery_core"
# The import name of each top-level folder: plugins/ installs as lottery_plugins; a bare
# ``import plugins`` (the checkout's folder) is the same code.
PACKAGE_DIRS = {"lottery_core": "lottery_core", "lottery_plugins": "plugins", "plugins": "plugins"}
PLUGIN_CONTRACTS = (
    "lottery_core/hookspecs.py",
    "lottery_core/specs.py",
    "lottery_core/errors.py",
    "lottery_core/seeds.py",
    "lottery_core/optim.py",
    "lottery_core/connectivity.py",
)
LAZY_EXPORTS = "_EXPORTS"


# --- the README's table ---------------------------------------------------------------------


def layout_tables(text: str) -> list[list[list[str]]]:
    """The Layout section's tables, each a list of rows, each row the paths its first cell names
    (``lottery_core/a.py``, ``b.py`` in one cell: ``b.py`` is in ``lottery_core/`` too)."""
    tables: list[list[list[str]]] = []
    table: list[list[str]] | None = None
    for line in layout_section(text):
        if not line.lstrip().startswith("|"):
            table = None
            continue
        if table is None:
            table = []
            tables.append(table)
        cell = line.strip().strip("|").split("|")[0]
        folder, row = "", []
        for name in BACKTICKED.findall(cell):
            if "/" in name.rstrip("/"):
                folder = name.rsplit("/", 1)[0] + "/"
                row.append(name)
            else:
                row.append(name if name.endswith("/") else folder + name)
        if row:
            table.append(row)
    return tables


def layout_rank(text: str) -> dict[str, int]:
    """Each path of the first Layout table and its row, counted from the top."""
    return {path: rank for rank, row in enumerate(layout_tables(text)[0]) for path in row}


# --- what a file imports ----------------------------------------------------------------------


def dotted_name(path: str) -> str:
    """The import name of a repository file: ``plugins/x.py`` is ``lottery_plugins.x``."""
    parts = path.removesuffix(".py").split("/")
    if parts[0] == "plugins":
        parts[0] = "lottery_plugins"
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(root: Path, dotted: str) -> str | None:
    """The repository file of a module of ours with exactly this name, or None."""
    first, *rest = dotted.split(".")
    if first not in PACKAGE_DIRS:
        return None
    base = "/".join([PACKAGE_DIRS[first], *rest])
    for candidate in (base + ".py", base + "/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def nearest_file(root: Path, dotted: str) -> str | None:
    """The file of the longest prefix of ``dotted`` that is a module of ours, or None."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        found = module_file(root, ".".join(parts[:end]))
        if found:
            return found
    return None


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them but those under ``if TYPE_CHECKING:``."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return found


def lazy_exports(tree: ast.Module) -> list[tuple[int, str]]:
    """The lines and module names of a module-level ``_EXPORTS = {"Name": "module", ...}``."""
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        named = isinstance(target, ast.Name) and target.id == LAZY_EXPORTS
        if named and isinstance(value, ast.Dict):
            return [
                (item.lineno, item.value)
                for item in value.values
                if isinstance(item, ast.Constant) and isinstance(item.value, str)
            ]
    return []


def imports(root: Path, path: str) -> list[tuple[int, str]]:
    """``(line, file)`` for each module of ours that the file ``path`` imports when it runs."""
    tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=path)
    own = dotted_name(path)
    package = own if path.endswith("__init__.py") else own.rpartition(".")[0]
    found: list[tuple[int, str | None]] = []
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, nearest_file(root, alias.name)) for alias in node.names]
            continue
        if node.level:
            parts = package.split(".") if package else []
            base_parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = module_file(root, f"{base}.{alias.name}") if alias.name != "*" else None
            found.append((node.lineno, submodule or nearest_file(root, base)))
    if path.endswith("__init__.py"):
        found += [(n, module_file(root, f"{package}.{name}")) for n, name in lazy_exports(tree)]
    return sorted((line, file) for line, file in found if file is not None)


# --- the three rules ----------------------------------------------------------------------------


def upward_imports(root: Path, text: str) -> list[str]:
    """One line per import of a module that is not below its importer in the Layout table."""
    rank = layout_rank(text)
    problems = []
    for path in sorted(rank, key=rank.__getitem__):
        if not path.endswith(".py") or not (root / path).is_file():
            continue
        for line, target in imports(root, path):
            if target not in rank:
                continue
            if target == path:
                where = "itself"
            elif rank[target] < rank[path]:
                where = f"{target}, which is above it in the README's Layout"
            elif rank[target] == rank[path]:
                where = f"{target}, which is in its own row of the README's Layout, not below it"
            else:
                continue
            problems.append(f"{path}:{line} imports {where}")
    return problems


def plugin_imports(root: Path) -> list[str]:
    """One line per import by a built-in plugin of core that is not a plugin's contract."""
    problems = []
    for file in sorted((root / "plugins").glob("*.py")):
        path = file.relative_to(root).as_posix()
        for line, target in imports(root, path):
            if target.startswith(f"{CORE}/") and target not in PLUGIN_CONTRACTS:
                problems.append(
                    f"{path}:{line} imports {target}; a built-in plugin imports only "
                    f"lottery_core's hookspecs, specs, errors, seeds, optim and connectivity"
                )
    return problems


def core_imports_of_plugins(root: Path) -> list[str]:
    """One line per import by a core module of the built-in plugins."""
    problems = []
    for file in sorted((root / CORE).glob("*.py")):
        path = file.relative_to(root).as_posix()
        for line, target in imports(root, path):
            if target.startswith("plugins/"):
                problems.append(f"{path}:{line} imports {target}; nothing in the core imports them")
    return problems


def import_cycles(root: Path) -> list[str]:
    """One line per cycle among the core's modules, each step its importer's file and line."""
    files = sorted(file.relative_to(root).as_posix() for file in (root / CORE).glob("*.py"))
    edges: dict[str, dict[str, int]] = {path: {} for path in files}
    for path in files:
        for line, target in imports(root, path):
            if target in edges:
                edges[path].setdefault(target, line)
    problems, seen = [], set()
    for start in files:
        if start in seen:
            continue
        # The shortest way back to ``start``, breadth first.
        previous: dict[str, str] = {}
        queue = [start]
        while queue and start not in previous:
            node = queue.pop(0)
            for target in edges[node]:
                if target not in previous:
                    previous[target] = node
                    queue.append(target)
        if start not in previous:
            continue
        cycle = [start]
        while (before := previous[cycle[0]]) != start:
            cycle.insert(0, before)
        cycle.insert(0, start)
        seen.update(cycle)
        steps = [f"{a}:{edges[a][b]}" for a, b in zip(cycle, cycle[1:], strict=False)]
        problems.append("import cycle: " + " -> ".join([*steps, start]))
    return problems


def fail_listing(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# --- the checks on this repository --------------------------------------------------------------


def test_imports_point_down_the_layout_table():
    fail_listing(upward_imports(ROOT, README.read_text(encoding="utf-8")))


def test_built_in_plugins_import_only_the_contracts():
    fail_listing(plugin_imports(ROOT))


def test_the_core_never_imports_the_built_in_plugins():
    fail_listing(core_imports_of_plugins(ROOT))


def test_the_core_has_no_import_cycles():
    fail_listing(import_cycles(ROOT))


def test_the_table_ranks_the_core():
    """The checks above see every core module: the first table lists them all, in one order."""
    rank = layout_rank(README.read_text(encoding="utf-8"))
    assert rank["cli.py"] == 0
    core = {file.relative_to(ROOT).as_posix() for file in (ROOT / CORE).glob("*.py")}
    assert not sorted(core - set(rank)), "README.md's first Layout table misses core modules"


# --- the checker itself, on a made-up package -----------------------------------------------------

SYNTHETIC_README = """\
## Layout

| path | one job |
|---|---|
| `lottery_core/__init__.py` | public names |
| `lottery_core/top.py` | high |
| `lottery_core/low.py`, `lower.py` | low, and its neighbour |
| `lottery_core/errors.py` | errors |

| path | one job |
|---|---|
| `plugins/pruning.py` | a plugin |
## Next
"""


def write(root: Path, files: dict[str, str]) -> None:
    for path, source in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(source, encoding="utf-8")


def test_the_checker_names_each_upward_import(tmp_path):
    write(
        tmp_path,
        {
            "lottery_core/__init__.py": '_EXPORTS = {\n  "Low": "low",\n  "Error": "errors",\n}\n',
            "lottery_core/top.py": "from . import low, errors\nfrom .lower import thing\n",
            "lottery_core/low.py": (
                "from typing import TYPE_CHECKING\n"
                "from . import errors\n"
                "from . import top\n"  # line 3: up
                "if TYPE_CHECKING:\n"
                "    from lottery_core.top import Top\n"  # never runs: exempt
                "else:\n"
                "    import lottery_core.top\n"  # line 7: up
                "def later():\n"
                "    from lottery_core import Low\n"  # line 9: a public name, __init__.py: up
                "    from .lower import x\n"  # line 10: the same row
            ),
            "lottery_core/lower.py": "",
            "lottery_core/errors.py": "import os\nimport lottery_core.errors\n",
        },
    )
    problems = upward_imports(tmp_path, SYNTHETIC_README)
    above = "which is above it in the README's Layout"
    assert problems == [
        f"lottery_core/low.py:3 imports lottery_core/top.py, {above}",
        f"lottery_core/low.py:7 imports lottery_core/top.py, {above}",
        f"lottery_core/low.py:9 imports lottery_core/__init__.py, {above}",
        "lottery_core/low.py:10 imports lottery_core/lower.py, which is in its own row of the "
        "README's Layout, not below it",
        "lottery_core/errors.py:2 imports itself",
    ]
    with pytest.raises(pytest.fail.Exception) as failed:
        fail_listing(problems)
    assert str(failed.value).splitlines()[0] == problems[0]
    assert import_cycles(tmp_path) == [
        "import cycle: lottery_core/__init__.py:2 -> lottery_core/low.py:9 -> "
        "lottery_core/__init__.py",
        "import cycle: lottery_core/errors.py:2 -> lottery_core/errors.py",
        "import cycle: lottery_core/top.py:1 -> lottery_core/low.py:3 -> lottery_core/top.py",
    ]


def test_the_checker_names_plugin_imports_past_the_contracts(tmp_path):
    write(
        tmp_path,
        {
            "lottery_core/__init__.py": "",
            "lottery_core/specs.py": "",
            "lottery_core/masks.py": "from lottery_plugins import pruning\n",
            "plugins/__init__.py": "",
            "plugins/pruning.py": (
                "from lottery_core.specs import Spec\n"
                "from lottery_core import masks\n"  # line 2: past the contracts
                "from . import helpers\n"
            ),
            "plugins/helpers.py": "import plugins.pruning\n",
        },
    )
    assert plugin_imports(tmp_path) == [
        "plugins/pruning.py:2 imports lottery_core/masks.py; a built-in plugin imports only "
        "lottery_core's hookspecs, specs, errors, seeds, optim and connectivity"
    ]
    assert core_imports_of_plugins(tmp_path) == [
        "lottery_core/masks.py:1 imports plugins/pruning.py; nothing in the core imports them"
    ]
