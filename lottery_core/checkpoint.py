"""Round-boundary checkpoints: the state to continue an experiment exactly where it stopped.

A checkpoint holds the model's ``state_dict`` (``weight_orig`` and ``weight_mask`` included),
the rewind and initial weights, every table so far and the per-round masks. Random choices are
derived from (seed, round), so no generator state needs saving for the continuation to match an
uninterrupted run bit for bit.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import rundir
from .errors import LotteryError

if TYPE_CHECKING:
    from .experiment import Experiment, RunState

FORMAT = "lottery-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"


def pack_mask(mask: torch.Tensor) -> dict[str, Any]:
    """A boolean mask as bits (1/8 of a byte per weight) plus its shape."""
    bits = np.packbits(mask.bool().flatten().cpu().numpy())
    return {"shape": list(mask.shape), "bits": torch.from_numpy(bits)}


def unpack_mask(packed: dict[str, Any]) -> torch.Tensor:
    shape = packed["shape"]
    count = int(np.prod(shape)) if shape else 1
    flat = np.unpackbits(packed["bits"].numpy(), count=count).astype(bool)
    return torch.from_numpy(flat).reshape(shape)


def save(run_dir: Path, experiment: Experiment, state: RunState) -> None:
    assert experiment.model is not None
    rundir.write_torch(
        run_dir / FILENAME,
        {
            "format": FORMAT,
            "version": VERSION,
            "config": experiment.config.model_dump(mode="json"),
            "next_round": state.next_round,
            "model": {k: v.cpu() for k, v in experiment.model.state_dict().items()},
            "rewind_state": {k: v.cpu() for k, v in state.rewind_state.items()},
            "initial_state": {k: v.cpu() for k, v in state.initial_state.items()},
            "records": state.records,
            "history": state.history,
            "layers": state.layers,
            "masks": {
                r: {name: pack_mask(m) for name, m in layer_masks.items()}
                for r, layer_masks in state.masks.items()
            },
        },
    )


def read(run_dir: Path) -> dict[str, Any]:
    """The raw checkpoint of ``run_dir``, or a clear error if it is missing, corrupt or foreign."""
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        raise LotteryError(f"{str(run_dir)!r} has no {FILENAME}: not a lottery run folder")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise LotteryError(
            f"{str(path)!r} is corrupt or unreadable ({type(exc).__name__})"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise LotteryError(f"{str(path)!r} is not a lottery checkpoint")
    if raw.get("version") != VERSION:
        raise LotteryError(
            f"{str(path)!r} has checkpoint version {raw.get('version')}; "
            f"this lottery reads version {VERSION}"
        )
    return raw


def restore(experiment: Experiment, raw: dict[str, Any]) -> RunState:
    """Rebuild the model with its masks and the run state from a checkpoint."""
    from .experiment import RunState

    experiment.build_model()
    assert experiment.model is not None
    device = experiment.device
    try:
        experiment.model.load_state_dict({k: v.to(device) for k, v in raw["model"].items()})
    except RuntimeError as exc:
        raise LotteryError(
            f"checkpoint does not fit model {experiment.config.model!r}: {exc}"
        ) from None
    from . import masks

    for layer in experiment.layers:
        masks.refresh_weight(layer)
    return RunState(
        next_round=raw["next_round"],
        records=list(raw["records"]),
        history=list(raw["history"]),
        layers=list(raw["layers"]),
        masks={
            int(r): {name: unpack_mask(p) for name, p in layer_masks.items()}
            for r, layer_masks in raw["masks"].items()
        },
        rewind_state={k: v.to(device) for k, v in raw["rewind_state"].items()},
        initial_state={k: v.to(device) for k, v in raw["initial_state"].items()},
    )
