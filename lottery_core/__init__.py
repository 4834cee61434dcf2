"""lottery: iterative magnitude pruning and lottery-ticket experiments, extensible by plugins."""

import os

# MKL's GEMMs give the same bits on any thread count only in its strict conditional numerical
# reproducibility mode, which MKL reads at its first call: set before anything runs one, so a
# run's numbers do not depend on the ``threads`` setting (tests/test_training.py checks it).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

# Public names, imported on first use (PEP 562): ``import lottery_core.errors`` (as the CLI's
# start-up does) must not pay for torch, pandas and pydantic.
_EXPORTS = {
    "resume_experiment": "api",
    "run_branch": "api",
    "run_experiment": "api",
    "run_trials": "api",
    "BranchResult": "branch_runs",
    "ExperimentConfig": "config",
    "make_config": "config",
    "LotteryError": "errors",
    "PluginError": "errors",
    "Experiment": "experiment",
    "ExperimentResult": "experiment",
    "export_ticket": "export",
    "load_ticket": "export",
    "hookimpl": "hookspecs",
    "get_plugins": "plugins",
    "ExperimentRunner": "runner",
    "BranchContext": "specs",
    "BranchKind": "specs",
    "BranchStart": "specs",
    "DataRequest": "specs",
    "DatasetSpec": "specs",
    "DatasetSplits": "specs",
    "ModelDefaults": "specs",
    "ModelSpec": "specs",
    "NoOptions": "specs",
    "PruningContext": "specs",
    "PruningStrategy": "specs",
    "ReinitContext": "specs",
    "ReinitPolicy": "specs",
    "RunInfo": "specs",
    "ThreadRule": "threads",
    "TicketData": "tickets",
    "TrainResult": "tickets",
    "evaluate": "tickets",
    "thread_rule": "tickets",
    "ticket_data": "tickets",
    "train_ticket": "tickets",
    "use_tool_threads": "tickets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
