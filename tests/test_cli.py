"""The command line as a user runs it: real files, exit codes; in-process
(``lottery_core.cli.main``) but for one real subprocess run end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd
import pytest

from lottery_core.errors import command

from .conftest import ROOT

SMALL = ["--dataset", "mnist-sample", "--iterations", "100", "--eval-every", "50", "--quiet",
         "--threads", "1"]  # fmt: skip


def cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard
    )


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow
def test_run_end_to_end_on_the_sample(tmp_path, cli_env, invoke):
    result = cli("run", *SMALL, "--rounds", "3", "--prune", "magnitude", "--reinit", "rewind",
                 cwd=tmp_path, env=cli_env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "NOT full MNIST" in result.stdout
    runs = list((tmp_path / "results").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("lenet_fc-mnist-sample-magnitude-layerwise")
    run = runs[0]
    for name in ("results.csv", "history.csv", "layers.csv", "config.json", "ticket.pt"):
        assert (run / name).is_file()
    results = pd.read_csv(run / "results.csv")
    assert list(results.columns[:5]) == ["round", "remaining", "ES", "val", "test"]
    assert list(results["remaining"].round(1)) == [100.0, 80.0, 64.1]
    assert results["test"].between(50, 100).all()  # it really learned from real digits
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["iterations"] == 100 and config["config"]["lr"] == 1.2e-3
    assert "NOT full MNIST" in config["data_source"]
    assert set(config["seeds"]) == {"init", "data_order", "pruning", "reinit"}
    assert "64.1" in result.stdout and str(run.relative_to(tmp_path)) in result.stdout

    again = invoke("run", *SMALL, "--rounds", "3")  # the same command: reported, not rerun
    assert again.returncode == 0
    assert again.stdout.startswith(f"already done: results/{run.name} (3 rounds); its table:")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [run.name]


def test_a_missing_mnist_with_no_download_is_one_line_and_no_folder(tmp_path, invoke):
    result = invoke("run", "--dataset", "mnist", "--no-download", "--data-dir", "empty",
                    "--iterations", "50", "--eval-every", "50", "--rounds", "1",
                    "--threads", "1", "--quiet")  # fmt: skip
    assert result.returncode == 2, result.stderr
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("Error: ") and "downloading is off" in said[0]
    assert "mnist-sample" in said[0]
    assert not (tmp_path / "results").exists()


def test_config_file_then_flags_override(tmp_path, invoke):
    (tmp_path / "exp.toml").write_text(
        'dataset = "mnist-sample"\nrounds = 2\niterations = 100\neval-every = 50\nlr = 0.002\n'
        "threads = 1\n"
    )
    result = invoke("run", "--config", "exp.toml", "--rounds", "1", "--out", "run", "--quiet")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["rounds"] == 1 and config["lr"] == 0.002 and config["eval_every"] == 50
    settings = {"dataset": "mnist-sample", "rounds": 1, "iterations": 60, "eval_every": 30,
                "threads": 1}
    (tmp_path / "exp.json").write_text(json.dumps(settings))
    result = invoke("run", "--config", "exp.json", "--out", "run2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(tmp_path / "run2" / "history.csv")) == 2


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--prune", "nosuch"], ["nosuch", "magnitude", "random"]),
        (["--model", "resnet"], ["resnet", "lenet_fc", "conv2"]),
        (["--rate", "1.5"], ["rate"]),
        (["--rate", "0"], ["rate"]),
        (["--rounds", "0"], ["rounds"]),
        (["--device", "tpu"], ["device"]),
        (["--config", "missing.toml"], ["missing.toml", "does not exist"]),
        (["--rewind-iter", "100"], ["rewind_iter", "iterations"]),
        (["--lr", "inf"], ["lr", "finite"]),
        (["--lr", "nan"], ["lr", "nan"]),
        (["--threads", "0"], ["threads"]),
        (["--scope", "global", "--conv-rate", "0.1"], ["--conv-rate", "layerwise"]),
        (["--scope", "global", "--output-rate", "0.1"], ["--output-rate", "layerwise"]),
        (["--batch-size", "5000"], ["--batch-size", "5000", "3500 training examples"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, invoke, args, fragments):
    result = invoke("run", *SMALL, "--out", "new", *args)
    assert_usage_error(result, *fragments)
    assert not (tmp_path / "new").exists() and not (tmp_path / "results").exists()


def test_unknown_config_key_names_the_key(tmp_path, invoke):
    (tmp_path / "bad.toml").write_text('dataset = "mnist-sample"\nlearning_rate = 0.1\n')
    result = invoke("run", "--config", "bad.toml", "--out", "new")
    assert_usage_error(result, "learning_rate", "unknown config key")
    assert not (tmp_path / "new").exists()


def test_unreadable_data_files_are_a_clear_error(tmp_path, invoke):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    result = invoke("run", "--dataset", "mnist", "--data-dir", "data", "--out", "new",
                 "--iterations", "10")
    assert_usage_error(result, "unreadable")
    assert not (tmp_path / "new").exists()


def test_an_existing_run_is_never_overwritten(tmp_path, invoke):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "results.csv").write_text("precious\n")
    result = invoke("run", *SMALL, "--out", "taken")
    assert_usage_error(result, "already exists", "--resume")
    assert (out / "results.csv").read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]


def test_help_lists_the_plugin_names(tmp_path, invoke):
    result = invoke("run", "--help")
    assert result.returncode == 0
    for name in ("mnist-sample", "fashion", "cifar10", "lenet_fc", "lenet_conv", "conv6",
                 "magnitude", "random", "rewind", "none", "layerwise", "global"):
        assert name in result.stdout


def test_cuda_without_cuda_is_a_clear_error(tmp_path, invoke):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("run", *SMALL, "--device", "cuda", "--out", "new")
    assert_usage_error(result, "CUDA is not available")
    assert not (tmp_path / "new").exists()


def test_report_and_export_from_the_command_line(tmp_path, invoke):
    assert (
        invoke("run", *SMALL, "--rounds", "3", "--out", "run").returncode
        == 0
    )
    report = invoke("report", "run")
    assert report.returncode == 0, report.stderr
    for name in ("report.md", "accuracy.png", "early_stop.png", "validation.png"):
        assert (tmp_path / "run" / "report" / name).stat().st_size > 0
    assert "NOT full MNIST" in (tmp_path / "run" / "report" / "report.md").read_text()

    export = invoke("export", "run", "--round", "2")
    assert export.returncode == 0, export.stderr
    assert "170,538 of 266,200 weights nonzero" in export.stdout  # 64.1% remaining
    assert (tmp_path / "run" / "ticket_round2.pt").is_file()
    pruned = invoke("export", "run", "--round", "1", "--pruned", "--out", "plain.pt")
    assert pruned.returncode == 0, pruned.stderr
    assert "213,060 of 266,200" in pruned.stdout
    again = invoke("export", "run", "--round", "2")
    assert_usage_error(again, "already exists")
    missing = invoke("export", "run", "--round", "9", "--out", "x.pt")
    assert_usage_error(missing, "round 9", "0, 1, 2")
    config = tmp_path / "run" / "config.json"
    config.write_text(config.read_text().replace('"lr": ', '"lr": 1'))  # an edited config
    edited = invoke("export", "run", "--round", "1", "--out", "edited.pt")
    assert_usage_error(edited, "checkpoint.pt", "lr")
    assert not list(tmp_path.rglob("edited.pt"))
    nothing = invoke("report", "nowhere")
    assert_usage_error(nothing, "nowhere")


def test_every_config_field_is_a_flag_with_its_true_default(invoke):
    from lottery_core.config import ExperimentConfig

    help_text = " ".join(invoke("run", "--help").stdout.split())
    source = (ROOT / "cli.py").read_text()
    for name, field in ExperimentConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in help_text, flag
        if name != "out":  # report and export have an --out of their own
            assert f'"{flag}"' not in source, f"{flag} is restated by hand in cli.py"
        default = field.get_default(call_default_factory=True)
        shown = "none" if default == [] else default
        if default is not None:
            assert f"{flag}" in help_text and f"[default: {shown}]" in help_text, flag
    assert "[default: the model's; lenet_fc: 0.2]" in help_text  # --rate
    assert "[default: the model's; lenet_fc: 50000]" in help_text  # --iterations


@pytest.mark.parametrize(
    "text, fragments",
    [
        ('rounds = true\n', ["rounds", "integer", "True"]),
        ('lr = "0.001"\n', ["lr", "number"]),
        ('scope = "global"\nconv_rate = 0.1\n', ["--conv-rate", "layerwise"]),
    ],
)
def test_config_file_values_are_strictly_typed(tmp_path, invoke, text, fragments):
    (tmp_path / "exp.toml").write_text('dataset = "mnist-sample"\n' + text)
    result = invoke("run", "--config", "exp.toml", "--out", "new")
    assert_usage_error(result, *fragments)
    assert not (tmp_path / "new").exists()


def test_commands_to_paste_repeat_how_the_program_was_started(monkeypatch):
    """A resume line printed by the installed ``lottery`` must work outside the checkout."""
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/lottery", "run"])
    assert command("run", "--resume", "a b") == "lottery run --resume 'a b'"
    monkeypatch.setattr(sys, "argv", ["cli.py", "run"])
    assert command("run", "--resume", "a b") == "python cli.py run --resume 'a b'"


def test_the_installed_command_names_itself_in_its_help(cli_env):
    script = Path(sysconfig.get_path("scripts")) / "lottery"
    if not script.exists():
        pytest.skip("the lottery command is not installed (pip install -e .)")
    done = subprocess.run([str(script), "plugins", "--help"], cwd=ROOT, env=cli_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Usage: lottery plugins [OPTIONS]" in done.stdout, done.stdout


def test_report_refuses_a_nan_tolerance(invoke):
    assert_usage_error(invoke("report", "anything", "--tolerance", "nan"), "--tolerance")


def test_top_level_help_lists_every_command_without_loading_torch(cli_env):
    """``cli.py --help`` (and the commands that need no plugin) start without the plugins and
    torch; ``run`` is built with its plugin choices when it is used."""
    code = ("import sys\nfrom lottery_core import cli\n"
            "for argv in (['--help'], ['plugins', '--help']):\n"
            "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch loaded:', 'torch' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "torch loaded: False" in done.stdout, done.stdout + done.stderr
    for name in ("export", "plugins", "report", "run", "sweep"):
        assert re.search(rf"^  {name}\s+\S", done.stdout, re.M), done.stdout
    assert "Run an IMP experiment" in done.stdout
    assert "Usage: cli.py plugins [OPTIONS]" in done.stdout, done.stdout


# -- Ctrl-C, from the checkout's cli.py and from the installed command ---------------------------

ENTRY = "lottery_core.entry:main"


def installed_lottery() -> str:
    """The installed ``lottery`` script of this interpreter (else the one on the path), checked to
    start at ``lottery_core.entry``, as pyproject.toml declares."""
    script = Path(sysconfig.get_path("scripts")) / "lottery"
    found = str(script) if script.exists() else shutil.which("lottery")
    if found is None:
        pytest.skip("the lottery command is not installed (pip install -e .)")
    targets = [e.value for e in entry_points(group="console_scripts", name="lottery")]
    assert targets == [ENTRY], f"the installed lottery starts at {targets}: pip install -e . again"
    return found


def test_the_installed_command_starts_at_a_module_that_imports_nothing():
    """``[project.scripts]`` names ``lottery_core.entry:main``, whose import (the package's
    ``__init__`` included) loads nothing but itself and ``signal`` before the handler is on."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]\n", 1)[1].split("\n\n", 1)[0]
    assert scripts == f'lottery = "{ENTRY}"', scripts
    code = ("import sys; before = set(sys.modules); import lottery_core.entry; "
            "print(sorted(set(sys.modules) - before))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['lottery_core', 'lottery_core.entry', 'signal']", done.stdout


def mapped(process: subprocess.Popen, name: str) -> bool:
    try:
        return name in Path(f"/proc/{process.pid}/maps").read_text()
    except OSError:  # it already ended
        return True


def one_interrupted_line(process: subprocess.Popen, stderr: str) -> None:
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Interrupted"), stderr


@pytest.mark.slow
@pytest.mark.parametrize("start", ["installed", "cli.py"])
def test_ctrl_c_twice_while_loading_or_in_the_teardown_is_one_line(tmp_path, cli_env, start):
    """Real SIGINTs (as ``bench.ctrl_c`` sends them) to ``lottery`` and ``python cli.py``: two
    5 ms apart while the CLI's modules import (the installed command printed a traceback there:
    its script imported ``lottery_core.cli`` before any handler), and, on a run stopped by the
    first, one every 5 ms until it has exited (torch's teardown printed 11 lines)."""
    program = [installed_lottery()] if start == "installed" else [sys.executable,
                                                                 str(ROOT / "cli.py")]
    args = [*program, "run", "--dataset", "mnist-sample", "--iterations", "1000", "--eval-every",
            "500", "--rounds", "4", "--threads", "1", "--quiet"]  # fmt: skip

    for i in range(3):  # json's C part is mapped when the CLI's own imports have begun
        process = subprocess.Popen([*args, "--out", f"early{i}"], cwd=tmp_path, env=cli_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)  # fmt: skip
        deadline = time.monotonic() + 60  # a hang guard
        while not mapped(process, "_json") and time.monotonic() < deadline:
            pass  # no sleep: the window is a few milliseconds
        process.send_signal(signal.SIGINT)
        time.sleep(0.005)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        one_interrupted_line(process, process.communicate(timeout=60)[1])
        assert not (tmp_path / f"early{i}").exists()

    process = subprocess.Popen([*args, "--out", "late"], cwd=tmp_path, env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "late" / "results.csv").exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        first = os.read(process.stderr.fileno(), 65536)  # the first Ctrl-C is answered
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:  # through the teardown
            process.send_signal(signal.SIGINT)
            time.sleep(0.005)
        _, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    one_interrupted_line(process, (first + rest).decode())
    assert (tmp_path / "late" / "checkpoint.pt").exists()
