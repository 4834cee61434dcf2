"""Round-boundary checkpoints: the state to continue an experiment exactly where it stopped.

A checkpoint holds the trained model's ``state_dict`` (``weight_orig`` and ``weight_mask``
included), θ0 and the rewind weights (and, for a model with BatchNorm, the running statistics
at both points: ``initial_buffers``, ``rewind_buffers``, absent for a model without, as in
checkpoints written before they existed), every table so far and the per-round masks. Random choices
are derived from (seed, round), so no generator state needs saving for the continuation to match
an uninterrupted run bit for bit.

The file proves what it is: its body is stored as bytes beside their SHA-256, so one flipped
byte is caught, and it carries the run's identity (a hash of the resolved config, seeds and
plugin sources, see :func:`run_identity`) and the whole ``config.json`` it was written beside,
so another run's checkpoint, or an edited ``config.json``, is refused.

The previous round's checkpoint is kept as ``checkpoint.prev.pt``: a new checkpoint is written
to a temporary file and read back before the current one becomes the previous one and the new
one takes its place, so a damaged ``checkpoint.pt`` always has an older, verified fallback.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import files
from .errors import LotteryError
from .paths import CHECKPOINT, PREVIOUS
from .state import RunState

FORMAT = "lottery-checkpoint"
VERSION = 2


def run_identity(meta: dict[str, Any]) -> str:
    """A hash of what makes a run that run: its config (identity fields), seeds and plugins."""
    from .config import hashed_config

    config = hashed_config(meta.get("config", {}))
    blob = json.dumps(
        {"config": config, "seeds": meta.get("seeds"), "plugins": meta.get("plugins")},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def canonical(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` as ``config.json`` holds it once written and read back (paths as strings)."""
    return json.loads(json.dumps(meta, default=str))


def pack_mask(mask: torch.Tensor) -> dict[str, Any]:
    """A boolean mask as bits (1/8 of a byte per weight) plus its shape."""
    bits = np.packbits(mask.bool().flatten().cpu().numpy())
    return {"shape": list(mask.shape), "bits": torch.from_numpy(bits)}


def unpack_mask(packed: dict[str, Any]) -> torch.Tensor:
    shape = packed["shape"]
    count = int(np.prod(shape)) if shape else 1
    flat = np.unpackbits(packed["bits"].numpy(), count=count).astype(bool)
    return torch.from_numpy(flat).reshape(shape)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in tensors.items()}


def save(
    path: Path, meta: dict[str, Any], model_state: dict[str, torch.Tensor], state: RunState
) -> None:
    """Write the checkpoint of ``state`` (``meta`` is what ``config.json`` records); the one it
    replaces becomes ``checkpoint.prev.pt`` once the new one is written and read back whole."""
    path = Path(path)
    body = {
        "config": meta["config"],
        "identity": run_identity(meta),
        "meta": canonical(meta),
        "next_round": state.next_round,
        "model": _cpu(model_state),
        "rewind_state": _cpu(state.rewind_state),
        "initial_state": _cpu(state.initial_state),
        "records": state.records,
        "history": state.history,
        "layers": state.layers,
        "masks": {
            r: {name: pack_mask(m) for name, m in layer_masks.items()}
            for r, layer_masks in state.masks.items()
        },
    }
    for name in ("rewind_buffers", "initial_buffers"):  # BatchNorm's; absent without it
        if getattr(state, name):
            body[name] = _cpu(getattr(state, name))
    data = files.torch_bytes(body)
    envelope = files.torch_bytes(
        {
            "format": FORMAT,
            "version": VERSION,
            "sha256": hashlib.sha256(data).hexdigest(),
            "body": torch.frombuffer(bytearray(data), dtype=torch.uint8),
        }
    )

    def write(tmp: str) -> None:
        files.write_all(tmp, envelope)
        if Path(tmp).read_bytes() != envelope:
            raise OSError(errno.EIO, "the file read back differs from what was written")
        if path.exists():
            files.keep_copy(path, path.with_name(PREVIOUS))

    files.atomic_write(path, write)


def read(run_dir: Path, name: str = CHECKPOINT) -> dict[str, Any]:
    """The checkpoint body ``name`` of ``run_dir``, or one line saying why it cannot be
    trusted."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise LotteryError(f"{str(run_dir)!r} has no {name}: not a lottery run folder")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LotteryError(f"{str(path)!r} cannot be read: {files.reason(exc)}") from None
    if not raw:
        raise LotteryError(f"{str(path)!r} is empty: it is damaged")
    envelope = _load(path, raw)
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise LotteryError(f"{str(path)!r} is not a lottery checkpoint")
    if envelope.get("version") != VERSION:
        raise LotteryError(
            f"{str(path)!r} has checkpoint version {envelope.get('version')}; "
            f"this lottery reads version {VERSION}"
        )
    blob = envelope.get("body")
    if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8:
        raise LotteryError(f"{str(path)!r} is not a lottery checkpoint")
    data = blob.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != envelope.get("sha256"):
        raise LotteryError(f"{str(path)!r} is damaged: its contents fail their checksum")
    body = _load(path, data)
    if not isinstance(body, dict) or not {"next_round", "records", "masks"} <= set(body):
        raise LotteryError(f"{str(path)!r} is not a lottery checkpoint")
    return body


def _load(path: Path, data: bytes) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged bytes can fail in any way the unpickler can
        raise LotteryError(
            f"{str(path)!r} is damaged: it is not a whole torch file ({type(exc).__name__})"
        ) from None


def state_of(body: dict[str, Any]) -> tuple[dict[str, torch.Tensor], RunState]:
    """The trained model's ``state_dict`` and the run state held in a checkpoint body."""
    return body["model"], RunState(
        next_round=body["next_round"],
        records=list(body["records"]),
        history=list(body["history"]),
        layers=list(body["layers"]),
        masks={
            int(r): {name: unpack_mask(p) for name, p in layer_masks.items()}
            for r, layer_masks in body["masks"].items()
        },
        rewind_state=dict(body["rewind_state"]),
        initial_state=dict(body["initial_state"]),
        rewind_buffers=dict(body.get("rewind_buffers", {})),
        initial_buffers=dict(body.get("initial_buffers", {})),
    )
