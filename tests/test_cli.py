"""The command line as a user runs it: real subprocesses, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from .conftest import ROOT

SMALL = ["--dataset", "mnist-sample", "--iterations", "100", "--eval-every", "50", "--quiet"]


def cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_run_end_to_end_on_the_sample(tmp_path, cli_env):
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

    again = cli("run", *SMALL, "--rounds", "3", cwd=tmp_path, env=cli_env)
    assert again.returncode == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [run.name, run.name + "-2"]


def test_config_file_then_flags_override(tmp_path, cli_env):
    (tmp_path / "exp.toml").write_text(
        'dataset = "mnist-sample"\nrounds = 2\niterations = 100\neval-every = 50\nlr = 0.002\n'
    )
    result = cli("run", "--config", "exp.toml", "--rounds", "1", "--out", "run", "--quiet",
                 cwd=tmp_path, env=cli_env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["rounds"] == 1 and config["lr"] == 0.002 and config["eval_every"] == 50
    settings = {"dataset": "mnist-sample", "rounds": 1, "iterations": 60, "eval_every": 30}
    (tmp_path / "exp.json").write_text(json.dumps(settings))
    result = cli("run", "--config", "exp.json", "--out", "run2", "--quiet", cwd=tmp_path,
                 env=cli_env)  # fmt: skip
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
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, cli_env, args, fragments):
    result = cli("run", *SMALL, "--out", "new", *args, cwd=tmp_path, env=cli_env)
    assert_usage_error(result, *fragments)
    assert not (tmp_path / "new").exists() and not (tmp_path / "results").exists()


def test_unknown_config_key_names_the_key(tmp_path, cli_env):
    (tmp_path / "bad.toml").write_text('dataset = "mnist-sample"\nlearning_rate = 0.1\n')
    result = cli("run", "--config", "bad.toml", "--out", "new", cwd=tmp_path, env=cli_env)
    assert_usage_error(result, "learning_rate", "unknown config key")
    assert not (tmp_path / "new").exists()


def test_unreadable_data_files_are_a_clear_error(tmp_path, cli_env):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # fmt: skip
        (raw / name).write_bytes(b"\x00\x00\x08\x03garbage")
    result = cli("run", "--dataset", "mnist", "--data-dir", "data", "--out", "new",
                 "--iterations", "10", cwd=tmp_path, env=cli_env)  # fmt: skip
    assert_usage_error(result, "unreadable")
    assert not (tmp_path / "new").exists()


def test_an_existing_run_is_never_overwritten(tmp_path, cli_env):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "results.csv").write_text("precious\n")
    result = cli("run", *SMALL, "--out", "taken", cwd=tmp_path, env=cli_env)
    assert_usage_error(result, "already exists", "--resume")
    assert (out / "results.csv").read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]


def test_help_lists_the_plugin_names(tmp_path, cli_env):
    result = cli("run", "--help", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0
    for name in ("mnist-sample", "fashion", "cifar10", "lenet_fc", "lenet_conv", "conv6",
                 "magnitude", "random", "rewind", "none", "layerwise", "global"):  # fmt: skip
        assert name in result.stdout


def test_cuda_without_cuda_is_a_clear_error(tmp_path, cli_env):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("run", *SMALL, "--device", "cuda", "--out", "new", cwd=tmp_path, env=cli_env)
    assert_usage_error(result, "CUDA is not available")
    assert not (tmp_path / "new").exists()


def test_report_and_export_from_the_command_line(tmp_path, cli_env):
    assert (
        cli("run", *SMALL, "--rounds", "3", "--out", "run", cwd=tmp_path, env=cli_env).returncode
        == 0
    )
    report = cli("report", "run", cwd=tmp_path, env=cli_env)
    assert report.returncode == 0, report.stderr
    for name in ("report.md", "accuracy.png", "early_stop.png", "validation.png"):
        assert (tmp_path / "run" / "report" / name).stat().st_size > 0
    assert "NOT full MNIST" in (tmp_path / "run" / "report" / "report.md").read_text()

    export = cli("export", "run", "--round", "2", cwd=tmp_path, env=cli_env)
    assert export.returncode == 0, export.stderr
    assert "170,538 of 266,200 weights nonzero" in export.stdout  # 64.1% remaining
    assert (tmp_path / "run" / "ticket_round2.pt").is_file()
    pruned = cli("export", "run", "--round", "1", "--pruned", "--out", "plain.pt", cwd=tmp_path,
                 env=cli_env)  # fmt: skip
    assert pruned.returncode == 0, pruned.stderr
    assert "213,060 of 266,200" in pruned.stdout
    again = cli("export", "run", "--round", "2", cwd=tmp_path, env=cli_env)
    assert_usage_error(again, "already exists")
    missing = cli("export", "run", "--round", "9", "--out", "x.pt", cwd=tmp_path, env=cli_env)
    assert_usage_error(missing, "round 9", "0, 1, 2")
    nothing = cli("report", "nowhere", cwd=tmp_path, env=cli_env)
    assert_usage_error(nothing, "nowhere")
