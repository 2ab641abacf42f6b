"""Common base for every archlab model: a dataclass config plus save/load in safetensors.

``save_pretrained(dir)`` writes ``config.json`` (registered name + config) and ``model.safetensors``;
``from_pretrained(dir)`` (or :func:`archlab.load`) reads them back. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file
from torch import nn

from .. import config as _config
from ..errors import ArchlabError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ArchModel(nn.Module):
    """Base class: subclasses set ``config_class`` and build themselves from ``self.config``."""

    config_class: ClassVar[type]
    registry_name: ClassVar[str]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def example_input(cls, config: Any, batch_size: int = 2) -> torch.Tensor:
        """A random input batch of the shape the model expects (used by contract tests and benches)."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if needed)."""
        from ..io import atomic_write_bytes, save_tensors_atomic

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"model": self.registry_name, "config": _config.to_dict(self.config)}
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_tensors_atomic(state, d / WEIGHTS_NAME)
        atomic_write_bytes(d / CONFIG_NAME, (json.dumps(meta, indent=2) + "\n").encode())
        return d

    def save_hf(self, directory: str | os.PathLike) -> Path:
        """Write the model in Hugging Face format (models with an HF counterpart; see models/transformers/hf.py)."""
        from .transformers.hf import save_hf

        return save_hf(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> ArchModel:
        model = load(directory, map_location)
        if not isinstance(model, cls):
            raise ArchlabError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def read_model_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ArchlabError(f"{directory} is not a saved model: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArchlabError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or "model" not in meta or "config" not in meta:
        raise ArchlabError(f"{path} does not describe an archlab model (keys 'model' and 'config' needed)")
    return meta


def load(directory: str | os.PathLike, map_location: str = "cpu") -> ArchModel:
    """Load a model saved with ``save_pretrained`` (or the final model of a run directory)."""
    from ..registry import create

    meta = read_model_config(directory)
    model = create(meta["model"], **meta["config"])
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise ArchlabError(f"{directory} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device=map_location)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ArchlabError(f"{weights} is damaged: {exc}") from None
    model.load_state_dict(state)
    return model.to(map_location)
