"""Model compression: pruning (unstructured masks, structured channel removal), lottery tickets, and the
``archlab compress`` methods (quantization and low-rank plug into the same command).

Everything here needs only torch and the registry; the training loop for iterative pruning lives in
``archlab/train/prune.py`` and the command in :mod:`archlab.compress.command`.
"""

from .lowrank import LowRankNet, factorize, factorize_model, lowrank_net
from .prune import (
    Group,
    Masks,
    PrunedNet,
    Sparsity,
    magnitude_masks,
    prunable_weights,
    prune_channels,
    prune_magnitude,
    sparsity_report,
    structured_plan,
)

__all__ = ["Group", "LowRankNet", "Masks", "PrunedNet", "Sparsity", "factorize", "factorize_model", "lowrank_net",
           "magnitude_masks", "prunable_weights", "prune_channels", "prune_magnitude", "sparsity_report",
           "structured_plan"]
