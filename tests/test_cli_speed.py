"""Quick feedback: ``run``'s flags are made from the config's fields without the plugins (whose
import loads torch), so a mistyped flag or a value of the wrong type is refused at once, in one
line with click's suggestion; the plugins load only to check a plugin-named value or for
``--help``, which read the same as when the flags were made from the loaded plugins."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from lottery_core.options import PluginChoice, config_options
from lottery_core.plugins import get_plugins

from .conftest import ROOT

HEAVY = ("torch", "numpy", "lottery_core.plugins", "lottery_plugins")  # none of them is needed


def test_a_mistyped_flag_is_one_line_before_torch_loads(tmp_path, cli_env):
    """The real program, as a user starts it: ``python cli.py run --iteratons 5``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "cli.py"), "run", "--iteratons", "5"],
        cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    timings = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[1].strip() for line in timings[1:]}  # [0]: the header
    said = [line for line in done.stderr.splitlines() if line.strip() and line not in timings]
    assert done.returncode == 2, done.stderr
    assert len(said) == 1, said
    assert said[0].startswith("Error: No such option '--iteratons'."), said
    assert "Did you mean" in said[0] and "'--iterations'" in said[0], said
    assert imported and not [m for m in imported if m.split(".")[0] in HEAVY or m in HEAVY]
    assert done.stdout == "" and not list(tmp_path.iterdir())


# Each refused without the plugins: argv, then what its one line says.
REFUSED_AT_ONCE = [
    (["run", "--iteratons", "5"], ["No such option '--iteratons'", "'--iterations'"]),
    (["run", "--rate", "abc"], ["Invalid value for '--rate'", "'abc' is not a valid float"]),
    (["run", "--rounds", "2.5"], ["Invalid value for '--rounds'", "'2.5'"]),
    (["run", "--scope", "nowhere"], ["'--scope'", "'nowhere' is not one of 'layerwise', 'global'"]),
    (["run", "--iterations", "5", "--out"], ["Option '--out' requires an argument"]),
    (["run", "--quiet", "leftover"], ["unexpected extra argument", "leftover"]),
    (["run", "--no-downlod"], ["No such option '--no-downlod'", "'--no-download'"]),
]


def test_flag_mistakes_are_refused_without_the_plugins(tmp_path, cli_env):
    """``main`` in a fresh process, one mistake after another: none loads torch or a plugin."""
    code = f"""
import contextlib, io, json, sys
from lottery_core import cli

said = []
for argv in {[argv for argv, _ in REFUSED_AT_ONCE]!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    said.append([code, err.getvalue()])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m in {HEAVY!r})
print(json.dumps({{"said": said, "heavy": heavy}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["heavy"] == [], report["heavy"]
    for (argv, fragments), (code, stderr) in zip(REFUSED_AT_ONCE, report["said"], strict=True):
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), (argv, stderr)
        for fragment in fragments:
            assert fragment in lines[0], (argv, lines[0])
    assert not list(tmp_path.iterdir())


def test_plugin_names_load_only_to_check_a_value_or_for_help(plugins):
    """The flags of a plugin-named field say what ``click.Choice`` over the loaded names said;
    the plugins are asked for only when such a value is given, or ``--help`` is shown."""
    calls = []

    def loader():
        calls.append(1)
        return plugins

    def command() -> click.Command:
        return click.Command("run", params=config_options(loader), callback=lambda **kw: kw)

    ctx = command().make_context("run", ["--rounds", "3", "--scope", "global", "--no-download"])
    assert ctx.params["rounds"] == 3 and calls == []
    with pytest.raises(click.NoSuchOption) as typo:
        command().make_context("run", ["--iteratons", "5"])
    assert "'--iterations'" in typo.value.format_message() and calls == []

    ctx = command().make_context("run", ["--prune", "random", "--model", "conv2"])
    assert (ctx.params["prune"], ctx.params["model"]) == ("random", "conv2") and calls
    with pytest.raises(click.BadParameter) as lazy:
        command().make_context("run", ["--prune", "nosuch"])
    eager = click.Command("run", params=[click.Option(["--prune"], type=click.Choice(
        plugins.strategies.names(), case_sensitive=True))])  # fmt: skip
    with pytest.raises(click.BadParameter) as expected:
        eager.make_context("run", ["--prune", "nosuch"])
    assert lazy.value.format_message() == expected.value.format_message()

    calls.clear()
    help_options = command()
    assert calls == []
    text = " ".join(help_options.get_help(click.Context(help_options)).split())
    assert calls
    assert "--prune [magnitude|random]" in text and "[default: the model's; lenet_fc: 0.2]" in text
    assert "(one or more of: " in text and "random-prune" in text  # --branches


def test_a_plugin_choice_reads_the_names_once_when_first_asked():
    calls = []
    names = {"strategies": type("R", (), {"names": staticmethod(lambda: ["b", "a"])})()}

    def loader():
        calls.append(1)
        return type("P", (), names)()

    choice = PluginChoice(loader, "strategies")
    assert calls == [] and "strategies" in repr(choice)
    assert choice.convert("a", None, None) == "a" and choice.choices == ("b", "a")
    assert calls == [1]
    with pytest.raises(click.BadParameter, match="'c' is not one of 'b', 'a'"):
        choice.convert("c", None, None)
    assert calls == [1]


def test_a_local_plugin_named_with_plugins_is_a_choice_of_run(tmp_path, invoke, monkeypatch):
    """The global ``--plugins`` is in effect when ``run`` first asks for the names."""
    (tmp_path / "local_speed.py").write_text(
        "from lottery_core import PruningStrategy, hookimpl\n\n\n"
        "@hookimpl\ndef register_pruning_strategies(register):\n"
        "    register(PruningStrategy('fastest', lambda ctx: {}, 'a local strategy'))\n"
    )
    monkeypatch.setenv("LOTTERY_PLUGINS", "")
    get_plugins.cache_clear()
    try:
        result = invoke("--plugins", "local_speed.py", "run", "--prune", "nosuch")
        assert result.returncode == 2, result.stderr
        assert "'nosuch' is not one of 'fastest', 'magnitude', 'random'" in result.stderr
    finally:
        sys.modules.pop("local_speed", None)
        get_plugins.cache_clear()
