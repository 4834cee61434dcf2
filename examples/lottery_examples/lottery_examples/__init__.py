"""lottery-examples: the pruning strategies researchers compare IMP with, as a lottery plugin.

Installed, this package registers five strategies through the ``lottery`` entry-point group
(see ``pyproject.toml``), written only against lottery's public API:

- ``snip``: ``|w * dL/dw|`` on a few training batches (Lee et al. 2019);
- ``grasp``: gradient-signal preservation, ``θ ⊙ Hg`` pruned lowest (Wang et al. 2020);
- ``synflow``: data-free synaptic flow, iterate with ``--init-steps 100`` (Tanaka et al. 2020);
- ``movement``: ``θ_T · (θ_T - θ_k)``, needs trained weights (IMP only);
- ``neuron``: structured, removes whole hidden fc neurons by the L2 norm of their weights.

It also registers one branch kind, ``signed-constant`` (Zhou et al. 2019: the ticket's mask
with every survivor at ``sign(θ0) * σ``; ``lottery branch signed-constant RUN_DIR --scale 0.5``).

Each strategy works layerwise or globally, under IMP or at initialisation (``--prune-at
init``): the core supplies the context and prunes by the run's scope and rates.
"""

from __future__ import annotations

from lottery_core import BranchKind, PruningStrategy, hookimpl

from .branches import SignedConstantOptions, signed_constant
from .scores import grasp_scores, movement_scores, snip_scores, synflow_scores
from .structured import neuron_masks

__all__ = ["grasp_scores", "movement_scores", "neuron_masks", "snip_scores", "synflow_scores"]


@hookimpl
def register_pruning_strategies(register) -> None:
    register(
        PruningStrategy(
            "snip", scores=snip_scores, description="SNIP: prune the lowest |w * dL/dw|"
        )
    )
    register(
        PruningStrategy(
            "grasp",
            scores=grasp_scores,
            description="GraSP: prune the lowest θ⊙Hg (keep gradient flow)",
        )
    )
    register(
        PruningStrategy(
            "synflow",
            scores=synflow_scores,
            description="SynFlow: data-free |θ⊙dR/dθ|; use --prune-at init --init-steps 100",
        )
    )
    register(
        PruningStrategy(
            "movement",
            scores=movement_scores,
            description="prune weights that training moved towards zero (IMP only)",
        )
    )
    register(
        PruningStrategy(
            "neuron",
            masks=neuron_masks,
            description="structured: drop whole hidden fc neurons with the smallest L2 norm",
        )
    )


@hookimpl
def register_branches(register) -> None:
    register(
        BranchKind(
            "signed-constant",
            signed_constant,
            SignedConstantOptions,
            "m_r, every survivor sign(θ0) * σ of its layer (Zhou et al. 2019)",
        )
    )
