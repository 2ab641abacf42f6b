"""Model compression: pruning (unstructured masks, structured channel removal), lottery tickets, and the
``archlab compress`` methods (quantization and low-rank plug into the same command); int8 quantization in
:mod:`.quantize` (its onnxruntime deployment in :mod:`.int8_runtime`).

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
from .quantize import (
    FakeQuantize,
    Observer,
    QuantConfig,
    calibrate,
    fake_quantize,
    post_training_quantize,
    quantize_model,
    to_float_model,
)

__all__ = ["Group", "LowRankNet", "Masks", "PrunedNet", "Sparsity", "factorize", "factorize_model", "lowrank_net",
           "magnitude_masks", "prunable_weights", "prune_channels", "prune_magnitude", "sparsity_report",
           "structured_plan",
           "FakeQuantize", "Observer", "QuantConfig", "calibrate", "fake_quantize", "post_training_quantize",
           "quantize_model", "to_float_model"]
