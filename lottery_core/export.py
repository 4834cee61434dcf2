"""Export a round's winning ticket, or a plain pruned model, from a run folder.

A *ticket* is what the hypothesis is about: a sparse mask plus the weights to train it from.
``export_ticket`` writes round K's masks (the ones the network trained with in round K) and the
starting weights from the checkpoint, with the model name, its input shape and class count, so
:func:`load_ticket` can rebuild a ready-to-train network from the file alone.

With ``pruned=True`` the export is instead an ordinary ``nn.Module`` whose pruned weights are
zero and whose pruning re-parametrisation is removed, for people who want to use it with plain
PyTorch (``torch.load(path, weights_only=False)``, no lottery import needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from . import checkpoint, files, masks, rundir
from .errors import LotteryError
from .plugins import Plugins

FORMAT = "lottery-ticket"
VERSION = 1


def _round_masks(raw: dict[str, Any], round_index: int, run_dir: Path) -> dict[str, torch.Tensor]:
    available = sorted(int(r) for r in raw["masks"])
    packed = {int(r): layer_masks for r, layer_masks in raw["masks"].items()}
    if round_index not in packed:
        listed = ", ".join(map(str, available)) or "no round yet"
        raise LotteryError(
            f"{str(run_dir)!r} has no round {round_index}; finished rounds: {listed}"
        )
    return {name: checkpoint.unpack_mask(p) for name, p in packed[round_index].items()}


def _data_info(meta: dict[str, Any]) -> dict[str, Any]:
    """Input shape, class count and data source from ``config.json`` (``None`` if unrecorded)."""
    shape = meta.get("input_shape")
    return {
        "input_shape": list(shape) if shape is not None else None,
        "num_classes": meta.get("num_classes"),
        "data_source": meta.get("data_source", ""),
    }


def ticket_from_run(
    run_dir: Path, round_index: int, plugins: Plugins | None = None, trained: bool = False
) -> dict[str, Any]:
    """The ticket of round ``round_index`` as the dict that ``export_ticket`` saves.

    The starting weights are those round K trained from under rewinding: the initial weights
    for round 0, the rewind state (iteration 0, or k with late rewinding) for later rounds.
    Runs whose policy does not rewind (``ReinitPolicy.rewinds``) trained round K from other
    weights, which the checkpoint does not keep; their ticket still starts from the rewind
    state, i.e. it tests their mask as a winning ticket, and says so in ``note``.

    ``trained``: the *trained* ticket instead, round K's weights at the end of its training
    (kept by ``keep_trained``; the checkpoint holds the last round's), ``start_iteration`` the
    round's last iteration.
    """
    run_dir = Path(run_dir)
    rundir.not_a_group(run_dir, "export")
    meta = rundir.read_meta(run_dir)
    raw = rundir.verified(run_dir, meta)  # another run's checkpoint or an edited config: refused
    round_masks = _round_masks(raw, round_index, run_dir)
    config = raw["config"]
    start = raw["initial_state"] if round_index == 0 else raw["rewind_state"]
    note = ""
    if trained:
        kept_weights = rundir.trained_weights(run_dir, raw, round_index)
        if kept_weights is None:
            raise LotteryError(
                f"{str(run_dir)!r} did not keep round {round_index}'s trained weights (its "
                f"checkpoint holds round {int(raw['next_round']) - 1}'s); run it with "
                "--keep-trained to keep every round's"
            )
        start = kept_weights
    elif not _rewinds(config.get("reinit"), _plugins(plugins)) and round_index > 0:
        note = (
            f"this run reinitialised survivors with {config.get('reinit')!r}; the ticket starts "
            "from the rewind state (the original initialisation), not from the weights round "
            f"{round_index} trained from"
        )
    kept = sum(int(m.sum()) for m in round_masks.values())
    total = sum(m.numel() for m in round_masks.values())
    return {
        "format": FORMAT,
        "version": VERSION,
        "round": round_index,
        "model": config["model"],
        **_data_info(meta),
        "masks": round_masks,
        "weights": {k: v.clone() for k, v in start.items()},
        "start_iteration": (
            config["iterations"] if trained
            else config.get("rewind_iter", 0) if round_index > 0 else 0
        ),  # fmt: skip
        "trained": trained,
        "remaining": 100.0 * kept / total,
        "config": config,
        "note": note,
    }


def _plugins(plugins: Plugins | None) -> Plugins:
    """The plugin set given by the caller, or (the Python API's default) the installed one."""
    if plugins is not None:
        return plugins
    from .plugins import get_plugins

    return get_plugins()


def _rewinds(policy: Any, plugins: Plugins) -> bool:
    """Whether the run's reinit policy declares that it rewinds exactly (unknown: no)."""
    reinits = plugins.reinits
    return isinstance(policy, str) and policy in reinits.items and reinits.items[policy].rewinds


def _build(ticket: dict[str, Any], source: str, plugins: Plugins) -> nn.Module:
    """A fresh model of the ticket's architecture, built by its registered ModelSpec."""
    if ticket.get("input_shape") is None or ticket.get("num_classes") is None:
        raise LotteryError(
            f"{source} records no input_shape/num_classes (its run predates them), so the model "
            "cannot be built; pass model= an unpruned module of the same architecture"
        )
    spec = plugins.models.get(ticket["model"])
    return spec.build(tuple(ticket["input_shape"]), int(ticket["num_classes"]))


def _tensors(ticket: dict[str, Any], key: str, source: str) -> dict[str, torch.Tensor]:
    """``ticket[key]`` as a non-empty table of tensors by name, or one line saying why not."""
    table = ticket[key]
    if not isinstance(table, dict) or not table:
        got = type(table).__name__ if table else f"an empty {type(table).__name__}"
        raise _unusable(source, f"{key} must be a table of tensors by layer name (got {got})")
    for name, value in table.items():
        if not isinstance(name, str):
            raise _unusable(source, f"{key} has a name {name!r} that is not a string")
        if not isinstance(value, torch.Tensor):
            raise _unusable(source, f"{key}[{name!r}] is a {type(value).__name__}, not a tensor")
    return table


def _unusable(source: str, reason: str) -> LotteryError:
    return LotteryError(f"{source} is not a usable ticket: {reason}")


def check_ticket(ticket: Any, source: str = "the ticket") -> None:
    """A ticket's structure, whatever model it goes into: ``model`` a name; ``input_shape`` and
    ``num_classes`` positive integers when recorded; ``masks`` tensors of 0 and 1 (or bools);
    ``weights`` floating-point tensors with no NaN or infinity (a pruned weight is
    ``weight_orig * mask``, and NaN times 0 is NaN, so none may hide under the mask either).
    One ``LotteryError`` line naming ``source`` and what is wrong."""
    if not isinstance(ticket, dict) or not {"masks", "weights", "model"} <= set(ticket):
        raise LotteryError(f"{source} is not a lottery ticket")
    if not isinstance(ticket["model"], str):
        raise _unusable(source, f"model must be a model name (got {ticket['model']!r})")
    shape, classes = ticket.get("input_shape"), ticket.get("num_classes")
    if shape is not None and (
        not isinstance(shape, (list, tuple))
        or not shape
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise _unusable(source, f"input_shape must be a list of positive sizes (got {shape!r})")
    if classes is not None and (
        isinstance(classes, bool) or not isinstance(classes, int) or classes < 1
    ):
        raise _unusable(source, f"num_classes must be a positive integer (got {classes!r})")
    for name, mask in _tensors(ticket, "masks", source).items():
        if mask.dtype == torch.bool:
            continue
        if mask.is_complex():
            raise _unusable(source, f"masks[{name!r}] is {mask.dtype}; a mask holds 0 and 1")
        other = mask[(mask != 0) & (mask != 1)]
        if other.numel():
            raise _unusable(
                source,
                f"masks[{name!r}] holds {other.numel():,} value(s) other than 0 and 1 "
                f"(e.g. {other.flatten()[0].item()!r}); a mask holds 0 and 1",
            )
    for name, weight in _tensors(ticket, "weights", source).items():
        if not weight.is_floating_point():
            raise _unusable(
                source, f"weights[{name!r}] is {weight.dtype}, not a floating-point tensor"
            )
        bad = int((~torch.isfinite(weight)).sum())
        if bad:
            raise _unusable(source, f"weights[{name!r}] holds {bad:,} NaN or infinite value(s)")


def _parameter_shapes(model: nn.Module, layers: list[masks.PrunableLayer]) -> dict[str, Any]:
    """The model's parameter shapes by the names they have once pruning is attached (a
    prunable ``weight`` becomes ``weight_orig``), without attaching it."""
    renamed = {
        f"{layer.name}.weight" if layer.name else "weight": (
            f"{layer.name}.weight_orig" if layer.name else "weight_orig"
        )
        for layer in layers
        if not prune.is_pruned(layer.module)
    }
    return {renamed.get(n, n): tuple(p.shape) for n, p in model.named_parameters()}


def _check_fit(
    model: nn.Module, layers: list[masks.PrunableLayer], ticket: dict[str, Any], source: str
) -> None:
    """The ticket's masks and weights have the model's layer and parameter names and shapes."""
    ticket_masks: dict[str, torch.Tensor] = ticket["masks"]
    names = [layer.name for layer in layers]
    if sorted(names) != sorted(ticket_masks):
        raise LotteryError(
            f"{source} does not fit this model: its masks are for layers "
            f"{sorted(ticket_masks)}, the model's prunable layers are {sorted(names)}"
        )
    for layer in layers:
        mask = ticket_masks[layer.name]
        if mask.shape != layer.weight.shape:
            raise LotteryError(
                f"{source} does not fit this model: layer {layer.name} has shape "
                f"{tuple(layer.weight.shape)}, the mask {tuple(mask.shape)}"
            )
    weights: dict[str, torch.Tensor] = ticket["weights"]
    shapes = _parameter_shapes(model, layers)
    if set(shapes) != set(weights):
        raise LotteryError(
            f"{source} does not fit this model: parameters {sorted(set(shapes) ^ set(weights))}"
            " are in one but not the other"
        )
    for name, shape in shapes.items():
        if tuple(weights[name].shape) != shape:
            raise LotteryError(
                f"{source} does not fit this model: {name} has shape {shape}, the ticket's "
                f"{tuple(weights[name].shape)}"
            )


@torch.no_grad()
def apply_ticket(model: nn.Module, ticket: dict[str, Any], source: str = "the ticket") -> nn.Module:
    """Put the ticket's masks (``prune.custom_from_mask``) and starting weights into ``model``.

    The ticket is checked (:func:`check_ticket`, then its names and shapes against the model's)
    before the model is touched: a ticket that does not fit leaves ``model`` as it was."""
    check_ticket(ticket, source)
    layers = masks.prunable_layers(model)
    _check_fit(model, layers, ticket, source)
    ticket_masks: dict[str, torch.Tensor] = ticket["masks"]
    for layer in layers:
        mask = ticket_masks[layer.name].to(layer.weight.device)
        if prune.is_pruned(layer.module):
            layer.mask.copy_(mask)
        else:
            prune.custom_from_mask(layer.module, "weight", mask)
    weights: dict[str, torch.Tensor] = ticket["weights"]
    for name, parameter in model.named_parameters():
        parameter.copy_(weights[name])
    for layer in layers:
        masks.refresh_weight(layer)
    return model


def load_ticket(
    path: Path, model: nn.Module | None = None, plugins: Plugins | None = None
) -> nn.Module:
    """A network ready to train as the ticket in ``path``: masks applied, starting weights loaded.

    Without ``model``, a fresh one is built with the model plugin named in the ticket. Pruning
    stays a ``torch.nn.utils.prune`` re-parametrisation (``weight_orig`` * ``weight_mask``), so
    training keeps pruned weights at zero. Also reads a run's own ``ticket.pt`` (its last
    round's ticket; one written before tickets recorded ``input_shape`` and ``num_classes``
    needs ``model``). The file is checked first (:func:`check_ticket`: its structure, masks of
    0 and 1, finite floating-point weights; then its layers and shapes against the model's):
    what is wrong is one ``LotteryError`` line naming the file.
    """
    path = Path(path)
    ticket = read_ticket_file(path)
    source = repr(str(path))
    check_ticket(ticket, source)
    if model is None:
        model = _build(ticket, source, _plugins(plugins))
    return apply_ticket(model, ticket, source)


def read_ticket_file(path: Path) -> Any:
    """What a ticket file holds (not yet checked: ``check_ticket``); one line if it is missing
    or not a torch file."""
    path = Path(path)
    if not path.is_file():
        raise LotteryError(f"{str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or corrupt file
        raise LotteryError(
            f"{str(path)!r} is not a readable ticket ({type(exc).__name__})"
        ) from None


def pruned_model(ticket: dict[str, Any], source: str, plugins: Plugins | None = None) -> nn.Module:
    """A plain module: ticket weights times mask, with ``prune.remove`` baking the zeros in."""
    model = apply_ticket(_build(ticket, source, _plugins(plugins)), ticket, source)
    for layer in masks.prunable_layers(model):
        prune.remove(layer.module, "weight")
    return model.eval()


def export_ticket(
    run_dir: Path,
    round_index: int,
    out: Path,
    pruned: bool = False,
    plugins: Plugins | None = None,
    trained: bool = False,
) -> dict[str, Any]:
    """Write round ``round_index`` of ``run_dir`` to ``out`` as a ticket or a pruned model.

    Ticket (default): a ``torch.save`` dict with ``masks`` {layer: bool tensor}, ``weights``
    {parameter name as in the pruned model, e.g. ``1.weight_orig``, ``1.bias``: tensor},
    ``model``, ``input_shape``, ``num_classes``, ``start_iteration``, ``remaining``, ``config``
    and ``data_source``; read it with :func:`load_ticket` (a fresh model with the masks and
    weights in, ready to train from ``start_iteration``). ``weights`` are θ0 for round 0 and
    the rewind state for later rounds (θ0, or θk with ``rewind_iter``) *whatever the run's
    reinit policy did*: a run that reinitialised otherwise (``random``, ``none``, a plugin's)
    trained round K from weights the checkpoint does not keep, and ``note`` says so.

    ``pruned=True``: the whole ``nn.Module`` (``torch.save(model)``) with the re-parametrisation
    removed and pruned weights zero. Its weights are the ticket's *starting* weights times the
    mask (the checkpoint keeps only the latest trained weights, not round K's), so it is the
    untrained ticket in plain PyTorch: ``torch.load(out, weights_only=False)``.

    Returns ``path``, ``bytes`` (size on disk), ``nonzero`` (nonzero prunable weights),
    ``total`` (prunable weights), ``remaining`` (percent kept by the mask), ``round``, ``kind``
    and ``note`` (non-empty when the run did not rewind).
    """
    out = Path(out)
    if out.is_dir():
        raise LotteryError(f"{str(out)!r} is a folder; give a file name such as ticket_r3.pt")
    plugins = _plugins(plugins)
    ticket = ticket_from_run(Path(run_dir), round_index, plugins, trained=trained)
    source = f"run {str(run_dir)!r}"
    if pruned:
        model = pruned_model(ticket, source, plugins)
        weights = [layer.weight for layer in masks.prunable_layers(model)]
        files.write_torch(out, model)
    else:
        weights = [
            ticket["weights"][f"{name}.weight_orig"] * mask
            for name, mask in ticket["masks"].items()
        ]
        files.write_torch(out, ticket)
    return {
        "path": str(out),
        "kind": ("trained " if trained else "") + ("pruned model" if pruned else "ticket"),
        "round": round_index,
        "bytes": out.stat().st_size,
        "nonzero": sum(int(torch.count_nonzero(w)) for w in weights),
        "total": sum(m.numel() for m in ticket["masks"].values()),
        "remaining": ticket["remaining"],
        "note": ticket["note"],
    }
