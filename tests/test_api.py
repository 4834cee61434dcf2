"""The Python API: a validated config in, a DataFrame out; the seed project's runner."""

from __future__ import annotations

import pandas as pd
import pytest

from lottery_core import ExperimentRunner, LotteryError, make_config, run_experiment


def test_run_experiment_returns_the_tables(tmp_path, plugins):
    config = make_config(dataset="mnist-sample", rounds=2, iterations=100, eval_every=50, threads=1)
    result = run_experiment(config, out=tmp_path / "run", progress=False)
    assert isinstance(result.results, pd.DataFrame)
    assert list(result.results["round"]) == [0, 1]
    assert result.config.lr == 1.2e-3 and result.config.output_rate == pytest.approx(0.1)
    pd.testing.assert_frame_equal(result.results, pd.read_csv(tmp_path / "run" / "results.csv"),
                                  check_dtype=False)  # fmt: skip


def test_config_errors_name_the_field():
    with pytest.raises(LotteryError, match="rate"):
        make_config(rate=2.0)
    with pytest.raises(LotteryError, match="unknown config key 'pruning_rate'"):
        make_config(pruning_rate=0.2)


def test_experiment_runner_accepts_the_seed_projects_keywords(tmp_path):
    runner = ExperimentRunner(
        dataset="mnist-sample",
        model_name="lenet_fc",
        pruning_type="magnitude",
        pruning_scope="global",
        reinit_method="rewind",
        pruning_rate=0.5,
        num_rounds=2,
        iterations=100,
        learning_rate=2e-3,
        batch_size=50,
        device="cpu",
        results_dir=tmp_path,
        eval_every=50,
        threads=1,
    )
    frame = runner.run(progress=False)
    assert list(frame.columns[:5]) == ["round", "remaining", "ES", "val", "test"]
    assert list(frame["remaining"].round(1)) == [100.0, 50.0]  # one global rate of 0.5
    path = runner.save_results("seed.csv")
    assert path == tmp_path / "seed.csv"
    pd.testing.assert_frame_equal(pd.read_csv(path), frame, check_dtype=False)
    saved = runner.result.config
    assert (saved.scope, saved.lr, saved.batch_size) == ("global", 2e-3, 50)


def test_run_folder_names_are_stable(plugins):
    """Pinned: the same experiment must land in the same folder across versions."""
    from lottery_core.resolution import resolve

    names = [
        resolve(make_config(dataset="mnist-sample"), plugins).run_name(),
        resolve(make_config(model="conv2", seed=3, scope="global"), plugins).run_name(),
        # where and how it runs is not part of the name
        resolve(
            make_config(dataset="mnist-sample", device="cpu", data_dir="x"), plugins
        ).run_name(),
    ]
    assert names == [
        "lenet_fc-mnist-sample-magnitude-layerwise-rewind-s0-1015ea51",
        "conv2-cifar10-magnitude-global-rewind-s3-2e8b84d2",
        "lenet_fc-mnist-sample-magnitude-layerwise-rewind-s0-1015ea51",
    ]
    assert resolve(make_config(dataset="mnist-sample", lr=1e-3), plugins).run_name() != names[0]
