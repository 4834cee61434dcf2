"""The value types plugins register and the core consumes.

Plugins hand the core one of these objects through a registration hook; the core never imports a
plugin module by path. Each type is a small frozen dataclass so a plugin is just data plus a
function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from .errors import LotteryError

if TYPE_CHECKING:
    from .config import ExperimentConfig, ResolvedConfig


@dataclass(frozen=True)
class DataRequest:
    """What the core asks of a dataset plugin."""

    data_dir: Path
    seed: int
    validation_size: int = 5000
    download: bool = True


@dataclass
class DatasetSplits:
    """A dataset held in memory as tensors, ready to be indexed by batch.

    ``train_x``, ``val_x`` and ``test_x`` are images ``N x C x H x W`` *as the dataset stores
    them*, which is not always model input: either float and already normalised (``transform``
    ``None``), or stored compactly with a ``transform`` that turns any batch of them into the
    normalised float32 the model takes. Every built-in dataset (``mnist``, ``fashion``,
    ``cifar10``, ``mnist-sample``) stores **uint8 pixels 0-255** (a quarter of float32's memory)
    with such a transform, so ``model(data.test_x)`` is wrong; ``model(data.images(x))`` is
    right. :meth:`images` applies the transform to any batch or slice (the identity when there
    is none); the core passes every batch and evaluation chunk through it, so a model never sees
    the stored form. ``lottery_core.tickets.TicketData`` (what ``ticket_data`` returns) adds
    ``normalised(split)`` and ``batches(split)``, which only ever hand out the float form.

    ``train_y``, ``val_y`` and ``test_y`` are int64 labels in ``0..num_classes-1``. ``source``
    says where the data came from (written to ``config.json``) so a sample is never mistaken for
    the full dataset; ``name`` is the dataset's registered name.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str
    name: str = ""
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of stored images as the model takes them (``transform`` applied, if any)."""
        return x if self.transform is None else self.transform(x)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> DatasetSplits:
        """Move every tensor to ``device`` once, so the training loop never copies per step."""
        moved = {
            k: getattr(self, k).to(device)
            for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return DatasetSplits(
            **moved,
            num_classes=self.num_classes,
            source=self.source,
            name=self.name,
            transform=self.transform,
        )


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset. ``load`` reads (or downloads) it and returns in-memory splits.

    ``augment(x, generator)``, where the dataset has a training-time augmentation (CIFAR-10's
    random crop and flip): a batch of *stored* training images (``N x C x H x W``, as the
    splits hold them: uint8 for the built-ins) to a batch of the same shape and dtype, every
    random choice drawn from ``generator`` (seeded from the run's data order and the iteration,
    ``seeds.augment_generator``, so the same run draws the same batches on any thread count).
    It runs on training batches only, before ``DatasetSplits.images``; validation and test are
    never augmented. A dataset that declares one augments by default (the config's ``augment``
    turns it off); one without (MNIST) cannot be asked to.
    """

    name: str
    load: Callable[[DataRequest], DatasetSplits]
    description: str = ""
    augment: Augment | None = None


@dataclass(frozen=True)
class ModelDefaults:
    """Hyperparameters a model brings with it (the paper's, where the paper has them).

    ``fc_rate`` and ``conv_rate`` are the fractions of surviving weights pruned each round in
    fully connected and convolutional layers; the output layer is pruned at ``fc_rate *
    output_rate_factor`` (0 keeps it dense, as OpenLTH's ignored output layer).
    ``iterations`` may be given in OpenLTH's steps (``"160ep"``).

    The training recipe beyond ``lr``, each ``None`` for the config's own default (Adam at a
    constant rate): ``optimizer``, ``momentum``, ``nesterov``, ``weight_decay``, ``schedule``,
    ``milestones`` (iterations or steps, ``("80ep", "120ep")``), ``gamma``, ``warmup``. A run
    takes each one the user did not set; the optimizer's settings only with the model's
    optimizer, the schedule's only with the model's schedule (``resolution.resolve``).

    ``augment``: whether the model trains with the dataset's augmentation when the config does
    not say (``None``: the dataset's default, on where it declares one). The paper's models say
    ``False``: they train as every earlier run of them did, under the same folder names.
    """

    dataset: str | None = None  # the dataset a run uses when none is given
    iterations: int | str = 50_000
    batch_size: int = 60
    lr: float = 1.2e-3
    fc_rate: float = 0.2
    conv_rate: float = 0.1
    output_rate_factor: float = 0.5
    rounds: int = 19
    optimizer: str | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    milestones: tuple[int | str, ...] | None = None
    gamma: float | None = None
    warmup: int | str | None = None
    augment: bool | None = None


def glorot_init(model: nn.Module, generator: torch.Generator) -> None:
    """Gaussian Glorot (Xavier normal) weights and zero biases, drawn from ``generator``."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_normal_(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class ModelSpec:
    """A named architecture.

    ``build(input_shape, num_classes)`` returns an untrained module; ``init(model, generator)``
    draws its initial weights. Every ``nn.Linear`` and ``nn.Conv2d`` weight is prunable; the last
    ``nn.Linear`` is the output layer; nothing else is (BatchNorm never). Buffers other than the
    masks (BatchNorm's running statistics) are part of θ0 and θk: rewinding restores them.
    """

    name: str
    build: Callable[[tuple[int, int, int], int], nn.Module]
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    init: Callable[[nn.Module, torch.Generator], None] = glorot_init
    description: str = ""


@dataclass(frozen=True)
class RunInfo:
    """Which run a lifecycle hook call belongs to (the ``run`` argument of every lifecycle hook).

    - ``run_dir``: the run's folder (``None`` for an ``Experiment.run`` without one);
    - ``experiment``: under ``--trials``/``--controls``, the run's experiment (``"imp"``, the
      main run); in a branch's folder, the branch kind (``"reinit"``, ``"random-prune"``...);
      else ``None``;
    - ``trial``: under ``--trials``/``--controls``, the trial index; in a branch's folder, the
      branch's trial; else ``None``.
    """

    run_dir: Path | None = None
    experiment: str | None = None
    trial: int | None = None


LayerKind = Literal["conv", "fc", "output"]
Tensors = dict[str, torch.Tensor]


@dataclass
class PruningContext:
    """Everything a pruning strategy may read, all of it rebuilt from the checkpoint on resume.

    Keys of ``masks``, ``weights``, ``initial`` and ``rewind`` (and of the scores or masks a
    strategy returns) are prunable layer names, e.g. ``"1"`` for ``model[1]``; each tensor has
    that layer's weight shape and lives on ``device``.

    - ``model``: the live network (``torch.nn.utils.prune`` re-parametrisation attached). A
      strategy may run forwards and backwards through it (SNIP, GraSP, SynFlow); the core
      restores its parameters, masks and mode afterwards. It must not change the masks itself.
    - ``masks``: the current masks (1 = alive), float, read-only copies.
    - ``weights``: the effective weights ``weight_orig * weight_mask`` the strategy ranks
      (trained ones under IMP, θ0's under ``prune_at = "init"``).
    - ``initial``: θ0, the weights at initialisation; ``rewind``: θk, where ``reinit`` rewinds
      to (θ0 unless ``rewind_iter`` > 0).
    - ``round_index``: the round about to train; ``step``/``steps``: the pruning step within
      it (``steps`` > 1 only for iterative pruning at init, ``init_steps``).
    - ``config``: the resolved experiment config; ``scope`` and ``rates`` (layer -> fraction
      of survivors this step removes; the whole network's fraction under ``"global"`` scope,
      keyed ``"*"``), ``kinds`` (layer -> ``"conv"``, ``"fc"`` or ``"output"``).
    - ``generator``: a seeded generator for this round and step; ``batches(n)`` yields ``n``
      training batches ``(x, y)`` on ``device``, the same ones on every resume; ``loss(logits,
      y)`` is the training loss (cross-entropy).
    """

    model: nn.Module
    masks: Tensors
    weights: Tensors
    initial: Tensors
    rewind: Tensors
    round_index: int
    step: int
    steps: int
    config: ExperimentConfig
    scope: str
    rates: dict[str, float]
    kinds: dict[str, LayerKind]
    generator: torch.Generator
    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device


@dataclass(frozen=True)
class PruningStrategy:
    """A named way to decide which weights go.

    Give exactly one of:

    - ``scores(ctx) -> {layer: tensor}``: an importance score of the weight's shape per layer;
      the core prunes the lowest-scoring survivors by the scope and rates (so every scoring
      strategy gets layerwise and global pruning, IMP and pruning at init, for free). Scores
      of pruned entries are ignored; they must be finite.
    - ``masks(ctx) -> {layer: tensor}``: the new masks themselves, for strategies that set
      their own sparsity or structure (neurons, channels). Each must be binary, of the layer's
      shape, and a subset of ``ctx.masks``.

    Giving both, or neither, is an error naming the strategy when it is made (so a plugin
    that registers one is skipped as broken, with that line).

    Scores are real numbers: any floating or integer dtype (integers rank by their value,
    ties as between equal floats); bool scores are refused, since a bool tensor is a mask
    (return it from ``masks`` instead).

    ``scores`` functions written for the first contract, ``scores(weights, generator)``, are
    still called that way (weights = ``ctx.weights``).
    """

    name: str
    scores: Callable[..., Tensors] | None = None
    description: str = ""
    masks: Callable[[PruningContext], Tensors] | None = None

    def __post_init__(self) -> None:
        if (self.scores is None) == (self.masks is None):
            both = self.scores is not None
            given = "both scores= and masks=" if both else "neither scores= nor masks="
            raise LotteryError(
                f"pruning strategy {self.name!r} gives {given}; give exactly one: scores= to "
                "rank weights (the core prunes the lowest), or masks= to set the masks itself"
            )


@dataclass
class ReinitContext:
    """What a reinitialisation policy may read and write between rounds.

    ``parameters`` are keyed by ``named_parameters()`` names (pruned weights appear as
    ``<layer>.weight_orig``); each is a plain tensor (no grad) that shares its memory with that
    live parameter, so an in-place write (``tensor.copy_(...)``, ``tensor.mul_(...)``) is a
    write to the model. ``tensor.data = value`` (the usual PyTorch idiom) is taken too: after the
    policy returns, a value of the parameter's device, dtype and shape is copied into the
    parameter (the value, not its memory, so ``tensor.data = ctx.rewind_state[name]`` never
    aliases the rewind state); a value of another dtype, shape or device is an error naming
    the policy. Rebinding a key (``ctx.parameters[name] = ...``) or returning tensors is an
    error too. ``initial_state`` is θ0 and ``rewind_state`` θk
    (the same unless ``rewind_iter`` > 0), keyed the same way; ``masks`` and ``kinds`` are keyed
    by layer name (``"<layer>.weight_orig"`` = ``masks["<layer>"]``); ``fresh_parameters(
    generator)`` draws a new initialisation of the model's distribution, keyed like
    ``parameters``. What is written into pruned entries does not count (the mask zeroes it).

    ``buffers`` are the model's buffers other than the masks (BatchNorm's ``running_mean``,
    ``running_var``, ``num_batches_tracked``; none for a model without BatchNorm), keyed by
    ``named_buffers()`` names, live: write them in place. ``rewind_buffers`` and
    ``initial_buffers`` are their values at the rewind point and at θ0. Before a policy that
    declares ``rewinds`` runs, the core has already set ``buffers`` to ``rewind_buffers``;
    any other policy finds them as training left them (``random`` sets them to θ0's, a fresh
    model's; ``none`` keeps them).
    """

    parameters: Tensors
    rewind_state: Tensors
    fresh_parameters: Callable[[torch.Generator], Tensors]
    generator: torch.Generator
    round_index: int
    initial_state: Tensors = field(default_factory=dict)
    masks: Tensors = field(default_factory=dict)
    kinds: dict[str, LayerKind] = field(default_factory=dict)
    buffers: Tensors = field(default_factory=dict)
    rewind_buffers: Tensors = field(default_factory=dict)
    initial_buffers: Tensors = field(default_factory=dict)


@dataclass(frozen=True)
class ReinitPolicy:
    """A named way to set the surviving weights before the next round trains."""

    name: str
    apply: Callable[[ReinitContext], None]
    description: str = ""
    rewinds: bool = False
    """True if the policy sets every survivor and bias to its rewind value exactly: the core then
    checks that invariant after every reinitialisation, and exported tickets need no caveat.
    The core sets the buffers (BatchNorm's running statistics) to the rewind point's before such
    a policy runs, and checks them too."""


@dataclass
class BranchContext:
    """Round r of a finished run (the trunk), as a branch kind reads it to choose where one
    network starts. Everything is rebuilt from the trunk's verified checkpoint.

    - ``round_index``: r; ``trial``: the branch's trial (``--trials``), 0 for the first;
    - ``masks``: m_r, the masks round r trained with, by layer name (float 0/1, read-only);
    - ``initial``: θ0 and ``rewind``: θk (θ0 unless ``rewind_iter`` > 0), keyed like the
      model's ``named_parameters()`` (pruned weights as ``<layer>.weight_orig``);
    - ``trained``: round r's final trained weights, keyed the same way, when the trunk kept
      them (``keep_trained``), else ``None``;
    - ``config``: the trunk's resolved config; ``options``: the branch's validated options
      (an instance of its ``options`` model); ``kinds``: layer -> ``"conv"``, ``"fc"`` or
      ``"output"``;
    - ``generator``: seeded from the branch's own stream (trunk seed, branch seed, kind,
      round, trial), so the same command draws the same branch; ``fresh_parameters(
      generator)``: a new draw of the model's own initialiser, keyed like ``initial``;
    - ``repruned(transform)``: for a trunk that prunes at initialisation, round r's masks
      computed again by the trunk's strategy with every step's scores passed through
      ``transform`` (``{layer: scores} -> {layer: scores}``); one line for any other trunk.
    - ``round_generator``: seeded like ``generator`` but without the trial, so every trial of
      round r draws the same (copies that must differ only in their data order);
    - ``iterations_of(steps)``: a step count (``500``, ``"500it"``, ``"2ep"``) in iterations
      of the trunk's training split at its batch size;
    - ``weights_at(k, start=None)``: the dense network's parameters at iteration k, replayed
      from ``start`` (θ0 when ``None``; unpruned, keyed like ``initial``) with the trunk's data
      order and recipe: the trunk's own θk bit for bit when k is its rewind point.
    """

    round_index: int
    trial: int
    masks: Tensors
    initial: Tensors
    rewind: Tensors
    trained: Tensors | None
    config: ExperimentConfig
    options: Any
    kinds: dict[str, LayerKind]
    generator: torch.Generator
    fresh_parameters: Callable[[torch.Generator], Tensors]
    repruned: Callable[[Callable[[Tensors], Tensors]], Tensors]
    round_generator: torch.Generator
    iterations_of: Callable[[int | str], int]
    weights_at: Callable[[int, Tensors | None], Tensors]


@dataclass
class BranchStart:
    """Where a branch's one network starts: ``masks`` (by layer name, binary, each layer's
    weight shape), ``parameters`` (keyed like ``BranchContext.initial``: every parameter, of
    its shape and dtype, finite where it survives) and ``changes``, config fields the network
    trains with instead of the trunk's (training fields only: ``branches.TRAINING_FIELDS``).
    ``start_iteration``: where in the schedule the network's training starts (it trains from
    there to the last iteration, the schedule replayed from there: weights from iteration k);
    ``None``, the trunk's round r's (its rewind point, 0 for round 0)."""

    masks: Tensors
    parameters: Tensors
    changes: dict[str, Any] = field(default_factory=dict)
    start_iteration: int | None = None


@dataclass
class AnalysisContext:
    """Round r of a branch set once all its networks (trials) are trained, for a kind that
    analyses them together (``BranchKind.analyse``). Networks are given as *functions*: a
    state of the unpruned model (``model.state_dict()``'s keys: ``<layer>.weight`` with its
    pruned entries zero, biases, BatchNorm's buffers), so two networks with different masks
    can be compared or interpolated directly.

    - ``round_index``: r; ``options``: the branch's validated options; ``config``: the trunk's;
    - ``states``: each trial's trained network, in trial order; ``rows``: each trial's row of
      ``results.csv`` (``test``, ``final_test``, ``ES``, ...); ``trunk_rows``: the trunk's rows
      (round 0 is the dense network);
    - ``evaluate(states, split)``: ``(mean loss, accuracy %)`` of each state on ``"test"`` or on
      ``"train"`` (a fixed subset of the training split, the same for every round), computed
      in batched forwards (``lottery_core.batched_eval``).
    """

    round_index: int
    options: Any
    config: ResolvedConfig
    states: list[Tensors]
    rows: list[dict[str, Any]]
    trunk_rows: list[dict[str, Any]]
    evaluate: Callable[[list[Tensors], str], list[tuple[float, float]]]


class NoOptions(BaseModel):
    """A branch kind without options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class BranchKind:
    """A named experiment on round r of a finished run (OpenLTH's branches).

    ``start(ctx: BranchContext) -> BranchStart`` picks the masks, the starting weights and any
    changed training settings; the core trains that network for one round with the trunk's
    protocol and records it as a run folder inside the trunk's. ``options`` is a pydantic model
    of the kind's settings: its fields become the flags of ``lottery branch KIND`` and are
    recorded (and hashed into the branch's folder name). ``analyse(ctx: AnalysisContext)``,
    optional, is called for each round once all its trials are trained and returns tables by
    name (``{"stability": [row, ...]}``); each is written as ``<name>.csv`` in the round's
    folder, the set's and (every set's rows together) the trunk's.
    ``min_trials``: the fewest trials the kind needs (2 for one that compares them).
    """

    name: str
    start: Callable[[BranchContext], BranchStart]
    options: type[BaseModel] = NoOptions
    description: str = ""
    analyse: Callable[[AnalysisContext], dict[str, list[dict[str, Any]]]] | None = None
    min_trials: int = 1


@dataclass(frozen=True)
class OptimizerSpec:
    """A named optimizer, over a flat list of parameters (``model.parameters()``: pruned
    weights as ``weight_orig``, whose pruned entries get zero gradient through the mask).

    - ``make_state(params, config) -> state``: called as every round starts (a round never
      inherits moments from before its pruning), with the resolved config (``momentum``,
      ``weight_decay``, ...); the state is whatever ``step`` needs.
    - ``step(params, state, lr, closure)``: one update, in place, from each parameter's
      ``grad`` (``None`` for one without a gradient), at learning rate ``lr`` (the round loop
      computes it from the iteration: warmup x schedule). ``closure()`` clears the gradients,
      computes the loss and the gradients again on this step's batch at the current parameters
      and returns the loss, for optimizers that need a second pass (SAM); most ignore it.
    - ``settings``: the config fields it reads among ``momentum``, ``nesterov`` and
      ``weight_decay``; setting another of them away from its default is an error naming it.
    - ``check(config)``: optional, called once the config is resolved; raise ``LotteryError``
      with a one-line reason for a combination it refuses (SGD: ``nesterov`` without
      ``momentum``).

    ``lottery_core.optim`` has torch's Adam and SGD updates, bit for bit, to build on.
    """

    name: str
    make_state: Callable[[list[torch.Tensor], ResolvedConfig], Any]
    step: Callable[[list[torch.Tensor], Any, float, Callable[[], torch.Tensor]], None]
    description: str = ""
    settings: tuple[str, ...] = ()
    check: Callable[[ResolvedConfig], None] | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    """A named learning-rate schedule: ``factor(iteration, total, config) -> float``, the
    multiple of ``lr`` for the step from ``iteration`` (steps done so far in the round, counted
    from 0 of the dense round, so a rewound round replays the schedule from its rewind point)
    to ``iteration + 1``, of ``total`` (``config.iterations``). A pure function of the
    iteration: nothing is carried across rounds or a resume. It must return a finite number
    of at least 0. Linear ``warmup`` multiplies it, whatever the schedule.

    ``settings`` and ``check`` as for ``OptimizerSpec``, among ``milestones`` and ``gamma``.
    """

    name: str
    factor: Callable[[int, int, ResolvedConfig], float]
    description: str = ""
    settings: tuple[str, ...] = ()
    check: Callable[[ResolvedConfig], None] | None = None
