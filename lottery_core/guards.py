"""Every plugin output checked where it enters the core: one line naming the plugin, never a
silent wrong result.

Each check raises ``PluginError`` with ``who`` (e.g. ``pruning strategy 'snip' (plugin
'lottery_examples')``) and what was wrong. Plugins may raise ``LotteryError`` themselves for a
clean one-line message; anything else they raise is wrapped the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from .errors import LotteryError, PluginError
from .specs import DatasetSplits

T = TypeVar("T")


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@contextmanager
def blame(who: str, doing: str) -> Iterator[None]:
    """Run plugin code; an exception becomes one line naming the plugin and what it was doing."""
    try:
        yield
    except PluginError:
        raise
    except LotteryError as exc:
        if type(exc) is not LotteryError:  # RunFailed and the like keep their meaning
            raise
        raise PluginError(f"{who}: {exc}") from None
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a plugin's own bug: name it, no traceback
        raise PluginError(f"{who} failed {doing}: {describe_error(exc)}") from None


def call(who: str, doing: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with blame(who, doing):
        return function(*args, **kwargs)


def check_layer_tensors(
    who: str, what: str, got: Any, like: dict[str, torch.Tensor], real: bool = False
) -> dict[str, torch.Tensor]:
    """A dict with exactly ``like``'s layer names, each a finite real tensor of that layer's
    shape (with ``real``, not bool: scores); returned as float64 on the layer's device."""
    if not isinstance(got, dict):
        raise PluginError(f"{who} returned {type(got).__name__} {what}; expected a dict by layer")
    missing, extra = sorted(set(like) - set(got)), sorted(set(got) - set(like))
    if missing or extra:
        parts = [f"missing layers {missing}"] if missing else []
        parts += [f"unknown layers {extra}"] if extra else []
        raise PluginError(f"{who} returned {what} with {' and '.join(parts)}")
    checked = {}
    for name, reference in like.items():
        value = got[name]
        if not isinstance(value, torch.Tensor):
            raise PluginError(f"{who}: {what} of layer {name} is a {type(value).__name__}")
        if tuple(value.shape) != tuple(reference.shape):
            raise PluginError(
                f"{who}: {what} of layer {name} has shape {tuple(value.shape)}, the layer's "
                f"weight {tuple(reference.shape)}"
            )
        if value.is_complex():
            raise PluginError(f"{who}: {what} of layer {name} are complex")
        if real and value.dtype == torch.bool:
            raise PluginError(
                f"{who}: {what} of layer {name} are bool; scores rank weights and must be real "
                "numbers (float or integer); a strategy that picks the weights itself returns "
                "masks= instead"
            )
        value = value.detach().to(device=reference.device, dtype=torch.float64)
        if not bool(torch.isfinite(value).all()):
            raise PluginError(f"{who}: {what} of layer {name} are not all finite (NaN or inf)")
        checked[name] = value
    return checked


def check_masks(
    who: str, got: Any, current: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Returned masks: binary, the layers' shapes, and a subset of the current masks."""
    masks = check_layer_tensors(who, "masks", got, current)
    for name, mask in masks.items():
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise PluginError(f"{who}: the mask of layer {name} is not binary (0/1)")
        if bool((mask > current[name].to(mask.dtype)).any()):
            raise PluginError(
                f"{who}: the mask of layer {name} revives pruned weights; a mask may only lose ones"
            )
    return {name: mask.to(current[name].dtype) for name, mask in masks.items()}


Layout = tuple[torch.device, torch.dtype, tuple[int, ...]]


def layout(tensor: torch.Tensor) -> Layout:
    return tensor.device, tensor.dtype, tuple(tensor.shape)


def where(tensor: torch.Tensor) -> tuple[int, tuple[int, ...], Layout]:
    """What a tensor's ``.data`` points at: its memory, its strides and its layout."""
    return tensor.data_ptr(), tuple(tensor.stride()), layout(tensor)


def check_reinit(
    who: str,
    returned: Any,
    given: dict[str, torch.Tensor],
    handed: dict[str, tuple[int, tuple[int, ...], Layout]],
    after: dict[str, torch.Tensor],
    live: dict[str, torch.Tensor],
    survivors: dict[str, torch.Tensor],
) -> None:
    """A policy set ``ctx.parameters``: nothing returned, no key rebound, survivors finite.

    ``given`` are the tensors the policy was handed (sharing the live parameters' memory) and
    ``handed`` where each pointed then. A policy that rebinds a tensor's ``.data``
    (``p.data = theta``, the PyTorch idiom) detached it from the live parameter: a value of the
    parameter's device, dtype and shape is copied into the parameter, so the write takes effect
    as the policy meant; any other value is an error naming the policy."""
    if returned is not None:
        raise PluginError(
            f"{who} returned a {type(returned).__name__}; a reinit policy writes "
            "ctx.parameters in place (tensor.copy_(...)) and returns None"
        )
    for name, tensor in given.items():
        if after.get(name) is not tensor:
            raise PluginError(
                f"{who} rebound ctx.parameters[{name!r}]; write into it in place instead "
                "(ctx.parameters[name].copy_(...))"
            )
    for name, tensor in given.items():
        if where(tensor) == handed[name]:
            continue  # written in place, or not at all
        want = handed[name][2]
        if layout(tensor) != want:
            device, dtype, shape = layout(tensor)
            raise PluginError(
                f"{who} set ctx.parameters[{name!r}].data to {dtype} {shape} on {device}; "
                f"{name} is {want[1]} {want[2]} on {want[0]}: give it values of its own "
                "dtype and shape (ctx.parameters[name].copy_(...))"
            )
        with torch.no_grad():  # p.data = value: the value, never its memory (no aliasing)
            live[name].copy_(tensor.clone())
    for name, tensor in live.items():
        if layout(tensor) != handed[name][2]:
            device, dtype, shape = handed[name][2]
            raise PluginError(
                f"{who} changed {name} to {tensor.dtype} {tuple(tensor.shape)} on "
                f"{tensor.device}; it must stay {dtype} {shape} on {device}"
            )
        alive = survivors.get(name)
        values = tensor.detach() if alive is None else tensor.detach()[alive.bool()]
        if not bool(torch.isfinite(values).all()):
            raise PluginError(f"{who} wrote non-finite values into surviving entries of {name}")


def check_splits(who: str, data: Any, validation_size: int) -> DatasetSplits:
    """A dataset plugin's splits: float images N x C x H x W, int64 labels in range, sizes."""
    if not isinstance(data, DatasetSplits):
        raise PluginError(
            f"{who}: load() returned {type(data).__name__}; expected lottery_core.DatasetSplits"
        )
    if not isinstance(data.num_classes, int) or data.num_classes < 2:
        raise PluginError(f"{who}: num_classes must be an integer >= 2 (got {data.num_classes!r})")
    shape = None
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise PluginError(f"{who}: {split}_x and {split}_y must be torch tensors")
        if not x.is_floating_point() and data.transform is None:
            raise PluginError(
                f"{who}: {split}_x is {x.dtype}; images must be floating point (e.g. float32 "
                "scaled and normalised), or come with a transform that makes them so"
            )
        if x.dim() != 4:
            raise PluginError(
                f"{who}: {split}_x has shape {tuple(x.shape)}; expected N x C x H x W"
            )
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise PluginError(
                f"{who}: {split}_x has images of {tuple(x.shape[1:])}, train {shape}"
            )
        shape = tuple(x.shape[1:])
        if y.dtype != torch.int64 or y.dim() != 1:
            raise PluginError(
                f"{who}: {split}_y is {y.dtype} of shape {tuple(y.shape)}; labels must be a 1-d "
                "int64 tensor"
            )
        if len(x) != len(y) or len(x) == 0:
            raise PluginError(f"{who}: {split} has {len(x)} images and {len(y)} labels")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= data.num_classes:
            raise PluginError(
                f"{who}: {split}_y holds labels {low}..{high}, outside 0..{data.num_classes - 1}"
            )
        if data.transform is not None:
            _check_transform(who, split, data, x)
        elif not bool(torch.isfinite(x).all()):
            raise PluginError(f"{who}: {split}_x holds NaN or inf")
    if len(data.val_x) > validation_size:
        raise PluginError(
            f"{who}: returned {len(data.val_x)} validation examples, more than the "
            f"{validation_size} asked for"
        )
    return data


def _check_transform(who: str, split: str, data: DatasetSplits, x: torch.Tensor) -> None:
    """A split's images through the dataset's ``transform``, checked: float, same shape, finite.

    The whole split is transformed once here, chunk by chunk, so a transform that yields NaN for
    some stored value is caught before training rather than in the middle of a round."""
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096]
        with blame(who, f"transforming {split}_x"):
            got = data.transform(chunk)  # type: ignore[misc]
        if not isinstance(got, torch.Tensor) or not got.is_floating_point():
            kind = got.dtype if isinstance(got, torch.Tensor) else type(got).__name__
            raise PluginError(f"{who}: transform of {split}_x returned {kind}; expected float")
        if got.shape != chunk.shape:
            raise PluginError(
                f"{who}: transform of {split}_x changed a batch's shape {tuple(chunk.shape)} to "
                f"{tuple(got.shape)}"
            )
        if not bool(torch.isfinite(got).all()):
            raise PluginError(f"{who}: {split}_x holds NaN or inf after its transform")
