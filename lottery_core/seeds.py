"""Every random stream of a run, derived here from its seeds and listed in one place.

A run's randomness comes from two config fields, ``seed`` and ``split_seed``. Each stream is a
pure function of them and of where it is used (round, step, epoch), so nothing random is carried
across a resume, a branch or a worker, and a resumed or parallel run draws what an uninterrupted
one draws. The streams:

=================  ==========================================  ==================================
stream             derived from                                draws
=================  ==========================================  ==================================
trial seed         ``seed + i``                                trial ``i`` of a group (trial 0 is
                                                               the single run)
init               ``derive_seeds(seed)["init"]``              θ0, through the model's init
data_order         ``derive_seeds(seed)["data_order"]``,       one epoch's example order
                   epoch
augmentation       ``derive_seeds(seed)["data_order"]``,       one training batch's augmentation
                   iteration                                   (crop offsets, flips)
pruning            ``derive_seeds(seed)["pruning"]``, round    a strategy's generator (one step)
pruning step       pruning seed, round, step, stream 0 / 1     a strategy's generator and its
                                                               batches (``init_steps`` > 1; the
                                                               batches at any step count)
reinit             ``derive_seeds(seed)["reinit"]``, round     a reinit policy's generator
fresh init         the reinit generator's next draw            ``fresh_parameters`` (random
                                                               reinit)
branch             trunk seed, branch seed, kind, round, trial  a branch's generator (its fresh
                                                               init, random mask, shuffle)
branch data order  the same, another stream                    the ``seed`` a branch trial t > 0
                                                               trains with (trial 0: the trunk's,
                                                               so its data order is the trunk's)
validation split   ``split_seed``                              the hold-out (the dataset plugin
                                                               draws it with ``split_generator``)
=================  ==========================================  ==================================
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

STREAMS = ("init", "data_order", "pruning", "reinit")


def trial_seed(seed: int, trial: int) -> int:
    """The seed of trial ``trial`` of a group whose config says ``seed``."""
    return seed + trial


def derive_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for initialisation, data order, pruning and reinitialisation."""
    values = np.random.SeedSequence(seed).generate_state(len(STREAMS), dtype=np.uint32)
    return dict(zip(STREAMS, map(int, values), strict=True))


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (θ0, a fresh init, the validation split)."""
    return torch.Generator().manual_seed(seed)


def round_generator(seed: int, round_index: int) -> torch.Generator:
    """A generator for one round's random choice: no state to carry across rounds or resumes."""
    return torch.Generator().manual_seed(seed * 10_007 + round_index)


def step_generator(seed: int, round_index: int, step: int, stream: int) -> torch.Generator:
    """A generator for (seed, round, step, stream) with no two tuples sharing a seed."""
    value = np.random.SeedSequence([seed, round_index, step, stream]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(value))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's example order: a function of (seed, epoch) alone, so any
    iteration can be resumed or rewound to without replaying earlier epochs."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


AUGMENT_STREAM = 0xA06


def augment_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator of the augmentation of the batch that trains from ``iteration`` (counted
    from 0 of the dense round): a function of the data-order seed and the iteration alone, so
    a resumed or rewound round draws the same crops and flips, on any thread count."""
    value = np.random.SeedSequence([seed, iteration, AUGMENT_STREAM]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(value))


def fresh_seed(source: torch.Generator) -> int:
    """The seed of a fresh initialisation, drawn from a round's reinit generator."""
    return int(torch.randint(0, 2**62, (1,), generator=source).item())


def split_generator(split_seed: int) -> torch.Generator:
    """The generator a dataset plugin deals its validation hold-out with."""
    return generator(split_seed)


def _branch_entropy(
    trunk_seed: int, branch_seed: int, kind: str, round_index: int, trial: int, stream: int
) -> int:
    tag = int(hashlib.sha256(kind.encode()).hexdigest()[:8], 16)
    entropy = [trunk_seed, branch_seed, tag, round_index, trial, stream]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def subset_generator(trunk_seed: int) -> torch.Generator:
    """The generator of the fixed training subset a branch analysis evaluates on: the trunk's
    alone, so every round, set and copy of a run is evaluated on the same examples."""
    return torch.Generator().manual_seed(_branch_entropy(trunk_seed, 0, "subset", 0, 0, 0x5B5E7))


def branch_data_seed(
    trunk_seed: int, branch_seed: int, kind: str, round_index: int, trial: int
) -> int:
    """The ``seed`` branch trial ``trial`` > 0 trains with, so its data order (SGD noise) is its
    own; trial 0 trains with the trunk's seed, so its data order is the trunk's."""
    if trial == 0:
        return trunk_seed
    return _branch_entropy(trunk_seed, branch_seed, kind, round_index, trial, 0xDA7A)


def branch_generator(
    trunk_seed: int, branch_seed: int, kind: str, round_index: int, trial: int
) -> torch.Generator:
    """The generator of one branch network: a function of the trunk's seed, the branch's own
    seed, its kind, the trunk round and the branch trial, so no two of them share a draw and
    none shares one with the trunk's streams."""
    value = _branch_entropy(trunk_seed, branch_seed, kind, round_index, trial, 0xB4A7C4)
    return torch.Generator().manual_seed(value)
