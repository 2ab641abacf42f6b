"""archlab: verified, reproduced and benchmarked implementations of modern ML architectures.

Python entry points::

    import archlab
    model = archlab.create("mlp", in_features=40, num_classes=10)
    archlab.list("classic")            # registered models of a family
    model = archlab.load("runs/mlp")   # the final model (or RL agent) of a run directory, or a saved one
    gpt2 = archlab.from_hf("path/to/gpt2")   # a Hugging Face model directory; model.save_hf(dir) writes one
"""

from __future__ import annotations

from .errors import ArchlabError
from .models.base import ArchModel
from .registry import create, load, register
from .registry import entries as _entries

__version__ = "0.1.0"


def from_hf(path: str, **overrides: object) -> ArchModel:
    """Load a Hugging Face model directory (config.json + model.safetensors) or hub id into archlab."""
    from .models.transformers.hf import from_hf as _from_hf

    return _from_hf(path, **overrides)


def list(family: str | None = None) -> list[str]:  # noqa: A001 - mirrors the CLI verb
    """Names of registered models and RL algorithms, optionally of one family."""
    return [e.name for e in _entries(family)]


__all__ = ["ArchModel", "ArchlabError", "__version__", "create", "from_hf", "list", "load", "register"]
