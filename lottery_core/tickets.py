"""Using a ticket in your own code: the run's exact data, evaluation, training, the thread rule.

A ticket file (``lottery export``, or a run's ``ticket.pt``) holds masks and weights; this
module gives the rest of what a run used, so a researcher's own code works on the same terms:

- :func:`ticket_data`: the data the run trained on (its dataset plugin, ``data_dir``,
  ``split_seed`` and ``validation_size``), as a :class:`TicketData`; its ``normalised(split)``
  and ``batches(split)`` hand out the float images a model takes, never the compact stored form;
- :func:`evaluate`: a model's accuracy and loss on a split, computed as a run computes them;
- :func:`train_ticket`: the run's training (``training.train_round``: the optimizer rebuilt,
  masks kept, early stopping found after the fact) applied to a loaded ticket;
- :func:`use_tool_threads` and :func:`thread_rule`: the tool's thread rule for your own loop.

The thread rule matters more than it looks. The models are small, and torch's default (one
intra-op thread per core) makes every step wait for all its threads at each parallel region:
on a machine whose cores other work keeps busy that is several times slower, not faster (a
user's own training loop on a ticket, reported in issue 27: 414 s at torch's default thread
count, 17 s on one thread). Every function here runs under the rule and gives torch's thread
count back as it found it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from . import divergence, masks, paths, rundir, seeds
from .config import ExperimentConfig, ResolvedConfig, config_of
from .errors import LotteryError
from .export import read_ticket_file
from .loading import load_data
from .plugins import Plugins, get_plugins
from .resolution import default_threads
from .specs import DatasetSplits, ModelDefaults
from .threads import ThreadRule, check_threads, use_threads
from .training import NonFiniteLoss, Recipe, TrainSettings, recipe_of, train_round

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "val", "test")
NORMALISE_CHUNK = 10_000  # rows transformed at a time by ``normalised`` (bounds temporaries)


# --- the thread rule --------------------------------------------------------------------------


def thread_rule(threads: int | None = None, adaptive: bool = True) -> ThreadRule:
    """The tool's thread rule (``lottery_core.threads.ThreadRule``) for your own loop.

    ``threads``: the most intra-op threads it may use (default: one per core this process may
    run on, as a run's ``threads``). ``adaptive`` (a run's default ``thread_rule``): it starts on
    one thread and, if told of each step (``rule.step_done()``), times one thread against
    ``threads`` and keeps the faster; ``adaptive=False`` always uses ``threads``. Call
    ``rule.begin()`` before the steps (or use :func:`use_tool_threads`, which also gives the
    thread count back)."""
    most = default_threads() if threads is None else threads
    if isinstance(most, bool) or not isinstance(most, int) or most < 1:
        raise LotteryError(f"threads must be a positive integer (got {threads!r})")
    check_threads(most)
    return ThreadRule(most, adaptive=adaptive)


@contextmanager
def use_tool_threads(
    threads: int | ThreadRule | None = None, adaptive: bool = True
) -> Iterator[ThreadRule]:
    """Run a block under the tool's thread rule; torch's thread count is restored on exit.

    ``threads``: a count (see :func:`thread_rule`) or a ``ThreadRule`` to reuse. The block
    starts on the rule's current count (one thread for a new adaptive rule: on small models and
    a busy machine, often many times faster than torch's default of one per core). Call
    ``rule.step_done()`` after each training step and the rule measures whether ``threads``
    threads are faster and switches if so; ``rule.pause()`` after other work between steps
    (an evaluation) keeps its time out of the step timings. Results do not depend on the
    count: ``lottery_core`` sets MKL's strict reproducibility mode on import::

        with use_tool_threads() as rule:
            for x, y in data.batches("train", batch_size=60, seed=0):
                ...  # forward, backward, step
                rule.step_done()
    """
    before = torch.get_num_threads()
    rule = threads if isinstance(threads, ThreadRule) else thread_rule(threads, adaptive)
    try:
        rule.begin()
        yield rule
    finally:
        use_threads(before)


def _rule(threads: int | ThreadRule | None, device: torch.device) -> ThreadRule:
    """What a helper runs under: as a run does, adaptive on the CPU only."""
    if isinstance(threads, ThreadRule):
        return threads
    return thread_rule(threads, adaptive=device.type == "cpu")


# --- the data ---------------------------------------------------------------------------------


@dataclass
class TicketData(DatasetSplits):
    """The data a run trained on (:func:`ticket_data`): a ``DatasetSplits`` plus where it came
    from.

    What you get, exactly: ``train_x``, ``val_x``, ``test_x`` are the images *as the dataset
    stores them*, ``N x C x H x W``; for the built-in datasets that is **uint8 pixels 0-255**
    (a quarter of float32's memory), not model input. ``transform`` turns any batch of them into
    the normalised float32 the model takes, and ``images(x)`` applies it (the identity for a
    dataset that stores floats). ``train_y``, ``val_y``, ``test_y`` are int64 labels in
    ``0..num_classes-1``. To avoid handling the stored form at all, use :meth:`normalised`
    (a whole split as floats) or :meth:`batches` (float batches). ``config`` is the run's
    resolved config; ``origin`` the run folder or ticket file it was read from.
    """

    config: ResolvedConfig | None = None
    origin: str = ""

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``, ``x`` in the stored form."""
        return _split(self, split)

    def normalised(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of a split with ``x`` as the model takes it: ``transform`` applied to every
        image (float32, normalised), labels int64. Bit for bit what a run feeds the model."""
        x, y = _split(self, split)
        if self.transform is None:
            return x, y
        parts = [self.images(x[i : i + NORMALISE_CHUNK]) for i in range(0, len(x), NORMALISE_CHUNK)]
        return torch.cat(parts), y

    def batches(
        self, split: str, batch_size: int = 1000, seed: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``(x, y)`` of a split, ``x`` normalised float (``images`` applied), in the
        split's order, or shuffled by a generator seeded with ``seed``; the last batch may be
        smaller."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise LotteryError(f"batch_size must be a positive integer (got {batch_size!r})")
        x, y = _split(self, split)  # checked now, not at the first batch
        return self._batches(x, y, batch_size, seed)

    def _batches(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if seed is None:
            for start in range(0, len(x), batch_size):
                yield self.images(x[start : start + batch_size]), y[start : start + batch_size]
            return
        order = torch.randperm(len(x), generator=seeds.generator(seed)).to(x.device)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            yield self.images(x[index]), y[index]

    def to(self, device: torch.device | str) -> TicketData:
        """Every tensor on ``device`` (``DatasetSplits.to``), still a ``TicketData``."""
        return _ticket_data(super().to(device), self.config, self.origin)


def _ticket_data(data: DatasetSplits, config: ResolvedConfig | None, origin: str) -> TicketData:
    values = {f.name: getattr(data, f.name) for f in fields(DatasetSplits)}
    return TicketData(**values, config=config, origin=origin)


def _split(data: DatasetSplits, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in SPLITS:
        raise LotteryError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
    return getattr(data, f"{split}_x"), getattr(data, f"{split}_y")


def _source_config(source: Path) -> tuple[ResolvedConfig, dict[str, Any]]:
    """The resolved config a run folder or ticket file trained with, and what its run recorded
    about the data (``data_sizes``, ``data_source``; empty where unrecorded)."""
    if source.is_dir():
        rundir.not_a_group(source, "give")
        kind = rundir.kind(source)
        if kind != "run":
            raise LotteryError(f"{str(source)!r} is not a run folder or a ticket file")
        meta = rundir.read_meta(source)
        return config_of(meta, str(source / paths.CONFIG)), meta
    ticket = read_ticket_file(source)
    if not isinstance(ticket, dict) or not {"masks", "weights", "model"} <= set(ticket):
        raise LotteryError(f"{str(source)!r} is not a lottery ticket")
    if isinstance(ticket.get("config"), dict):  # an exported ticket carries its run's config
        recorded = {"data_source": ticket.get("data_source")}
        return config_of({"config": ticket["config"]}, str(source)), recorded
    if rundir.kind(source.parent) == "run":  # a run's own ticket.pt, beside its config.json
        return _source_config(source.parent)
    raise LotteryError(
        f"{str(source)!r} records no config (a run's own ticket.pt moved out of its folder); "
        "give the run folder, or a ticket written by `lottery export`"
    )


def ticket_data(
    source: Path | str,
    data_dir: Path | str | None = None,
    plugins: Plugins | None = None,
) -> TicketData:
    """The exact data the run behind ``source`` trained, validated and tested on.

    ``source``: a run folder, an exported ticket file (``lottery export``; its run's config is
    inside it) or a run's own ``ticket.pt`` in its folder. The data is loaded as the run loaded
    it (``loading.load_data`` with the run's config): the same dataset plugin, ``split_seed``
    and ``validation_size``, so the same examples in the same order in every split. The
    dataset is read from the run's recorded ``data_dir`` (relative to where it ran) unless
    ``data_dir`` says where it is now. Where the run recorded its split sizes or its data
    source, they are compared: data that differs is one ``LotteryError`` line, not a silent
    other split.

    Returns a :class:`TicketData`, on the CPU. Its ``*_x`` tensors are the dataset's *stored*
    images (uint8 pixels for the built-in datasets); ``normalised(split)`` and
    ``batches(split)`` give the float images a model takes (``images(x)`` for your own
    slices).
    """
    origin = Path(source)
    config, recorded = _source_config(origin)
    if data_dir is not None:
        config = config.model_copy(update={"data_dir": Path(data_dir)})
    plugins = plugins if plugins is not None else get_plugins()  # default: the installed set
    data = _ticket_data(load_data(config, plugins), config, str(origin))
    _check_recorded(data, recorded, origin, same_dir=data_dir is None)
    return data


def _check_recorded(
    data: TicketData, recorded: dict[str, Any], origin: Path, same_dir: bool
) -> None:
    """The loaded data against what the run recorded of its own: the split sizes (run folders)
    or, read from the same folder, the data source line (ticket files)."""
    sizes = recorded.get("data_sizes")
    got = {split: int(getattr(data, f"{split}_x").shape[0]) for split in SPLITS}
    if isinstance(sizes, dict) and {k: sizes.get(k) for k in SPLITS} != got:
        raise LotteryError(
            f"the data loaded for {str(origin)!r} is not what its run trained on: the run had "
            f"{_sizes(sizes)}, this data {_sizes(got)} (another copy of {data.name!r}?)"
        )
    source = recorded.get("data_source")
    if same_dir and isinstance(source, str) and source and source != data.source:
        raise LotteryError(
            f"the data loaded for {str(origin)!r} is not what its run trained on: the run had "
            f"{source!r}, this is {data.source!r}"
        )


def _sizes(sizes: dict[str, Any]) -> str:
    return ", ".join(f"{sizes.get(split)} {split}" for split in SPLITS)


# --- evaluation -------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def evaluate(
    model: nn.Module,
    data: DatasetSplits,
    split: str = "test",
    batch_size: int = 1000,
    threads: int | ThreadRule | None = None,
) -> dict[str, float]:
    """A model's ``accuracy`` (percent, as ``results.csv`` gives it), mean cross-entropy
    ``loss`` and ``examples`` on one split of ``data``.

    The model is put in eval mode (its mode is restored after) and runs without gradients;
    every batch goes through ``data.images`` (so stored uint8 pixels are normalised) on the
    model's device; the whole runs under the tool's thread rule (``threads``: see
    :func:`use_tool_threads`). Losses are summed per batch in float32 and across batches in
    float64 as a run sums them, so with the default ``batch_size`` of 1000 the numbers are a
    run's own to the bit (a trained ticket of round K gives that round's ``final_test``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LotteryError(f"batch_size must be a positive integer (got {batch_size!r})")
    x, y = _split(data, split)
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        with use_tool_threads(_rule(threads, device)) as rule, torch.no_grad():
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            for start in range(0, len(x), batch_size):
                images = data.images(x[start : start + batch_size].to(device))
                target = y[start : start + batch_size].to(device)
                logits = model(images)
                loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
                correct += (logits.argmax(dim=1) == target).sum()
                rule.step_done()
            n = len(x)
            return {
                "accuracy": 100.0 * correct.item() / n,
                "loss": loss_sum.item() / n,
                "examples": n,
            }
    finally:
        model.train(was_training)


# --- training ---------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train_ticket` did. The model is left at its *final* weights.

    ``history``: one row per evaluation (``iteration``, ``train_loss``, ``val_loss``,
    ``val_acc``, and ``test_loss``/``test_acc`` with ``test_every_eval``), as a run's
    ``history.csv``. Early stopping is found after the fact, as a run finds it: the iteration
    of the lowest validation loss (``es_iteration``), its ``es_val_loss`` and ``es_val_acc``,
    and the test accuracy of the weights at that iteration (``es_test_acc``); ``final_test_acc``
    is the test accuracy at the end. In ``results.csv`` terms: ``ES``, ``val_loss``, ``val``,
    ``test``, ``final_test``. ``flag``: ``"diverged"``, ``"chance"`` or ``""`` (as a run's
    ``flag``). ``settings``: what it trained with (iterations, start_iteration, lr,
    batch_size, eval_every, seed). ``remaining``: percent of prunable weights the masks keep.
    """

    history: pd.DataFrame
    es_iteration: int
    es_val_loss: float
    es_val_acc: float
    es_test_acc: float
    final_test_acc: float
    flag: str
    remaining: float
    settings: dict[str, Any]
    time_s: float


def _default(data: DatasetSplits, name: str, given: Any, fallback: Any) -> Any:
    """``given``, else the run's own value (``TicketData.config``), else ``fallback``."""
    if given is not None:
        return given
    config = getattr(data, "config", None)
    return getattr(config, name) if config is not None else fallback


def _recipe(data: DatasetSplits, iterations: int, lr: float | None) -> Recipe | None:
    """The run's optimizer and schedule (over ``iterations``) when the data came from
    :func:`ticket_data`, so a ticket of an SGD run trains with SGD; else ``None`` (Adam at a
    constant rate, a run's default)."""
    config = getattr(data, "config", None)
    if config is None:
        return None
    update: dict[str, Any] = {"iterations": iterations}
    if lr is not None:
        update["lr"] = lr
    return recipe_of(config.model_copy(update=update), get_plugins())


def _augment(data: DatasetSplits) -> Any:
    """The dataset's augmentation when the run behind ``data`` (:func:`ticket_data`) trained
    with it, so its ticket trains on the batches the run drew; else ``None``."""
    config = getattr(data, "config", None)
    if config is None or not getattr(config, "augment", False):
        return None
    return get_plugins().datasets.get(config.dataset).augment


def train_ticket(
    model: nn.Module,
    data: DatasetSplits,
    iterations: int,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    eval_every: int | None = None,
    start_iteration: int = 0,
    test_every_eval: bool = False,
    threads: int | ThreadRule | None = None,
) -> TrainResult:
    """Train a loaded ticket in place, as a run trains a round, masks kept.

    ``model``: a network whose prunable layers carry their masks as
    ``torch.nn.utils.prune``'s re-parametrisation (``load_ticket`` returns one), so pruned
    weights get no gradient and stay exactly zero; a plain module (``--pruned`` export) is
    refused, since training it would regrow the pruned weights. This is the run's own loop
    (``training.train_round``): a fresh optimizer (the run's recipe: its optimizer and
    schedule; its data augmentation, where it had one), minibatches of ``batch_size`` in an
    order fixed by ``seed`` and the epoch,
    validation every ``eval_every`` iterations, training from ``start_iteration`` (a
    late-rewound ticket's ``start_iteration``) to ``iterations``, on the model's device and
    under the tool's thread rule (``threads``: see :func:`use_tool_threads`).

    ``lr``, ``batch_size``, ``eval_every`` and ``seed`` left out are the run's own when ``data``
    comes from :func:`ticket_data` (its config), else the defaults of a run (lr 1.2e-3, batch
    60, eval every 100, seed 0). With the run's values, a round-0 ticket trains to the run's
    round-0 numbers exactly. The masks are checked unchanged afterwards; a loss that becomes
    NaN or infinite is one ``LotteryError`` line.
    """
    layers = masks.prunable_layers(model)
    bare = [layer.name or "(the model)" for layer in layers if not prune.is_pruned(layer.module)]
    if bare:
        raise LotteryError(
            f"layer(s) {', '.join(bare)} carry no mask (no torch.nn.utils.prune "
            "re-parametrisation): training would regrow pruned weights; load the ticket with "
            "load_ticket"
        )
    model_defaults, config_defaults = ModelDefaults(), ExperimentConfig.model_fields
    settings = TrainSettings(
        iterations=iterations,
        batch_size=_default(data, "batch_size", batch_size, model_defaults.batch_size),
        lr=_default(data, "lr", lr, model_defaults.lr),
        eval_every=_default(data, "eval_every", eval_every, config_defaults["eval_every"].default),
        start_iteration=start_iteration,
        test_every_eval=test_every_eval,
        recipe=_recipe(data, iterations, lr),
        augment=_augment(data),
    )
    data_seed = _default(data, "seed", seed, 0)
    if not 0 <= settings.start_iteration < settings.iterations:
        raise LotteryError(
            f"start_iteration ({start_iteration}) must be at least 0 and below iterations "
            f"({iterations})"
        )
    device = _device(model)
    if data.train_x.device != device:
        data = data.to(device)
    trained_with = masks.current_masks(layers)
    started = time.perf_counter()
    with use_tool_threads(_rule(threads, device)) as rule:
        try:
            outcome = train_round(
                model, data, settings, seeds.derive_seeds(data_seed)["data_order"], threads=rule
            )
        except NonFiniteLoss as exc:
            raise LotteryError(
                f"the loss became {exc.value} at iteration {exc.iteration}; try a lower lr"
            ) from None
    for layer in layers:  # nothing in the loop writes a mask: say so loudly if one changed
        if not torch.equal(layer.mask, trained_with[layer.name]):
            raise LotteryError(f"the mask of layer {layer.name} changed while the ticket trained")
    import pandas as pd

    return TrainResult(
        history=pd.DataFrame(outcome.history),
        es_iteration=outcome.es_iteration,
        es_val_loss=outcome.es_val_loss,
        es_val_acc=outcome.es_val_acc,
        es_test_acc=outcome.es_test_acc,
        final_test_acc=outcome.final_test_acc,
        flag=divergence.check(outcome.history, outcome.es_val_acc, data.num_classes),
        remaining=masks.remaining_percent(layers),
        settings={
            "iterations": settings.iterations,
            "start_iteration": settings.start_iteration,
            "lr": settings.lr,
            "batch_size": settings.batch_size,
            "eval_every": settings.eval_every,
            "seed": data_seed,
        },
        time_s=time.perf_counter() - started,
    )
