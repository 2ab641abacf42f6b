"""Common base for every archlab model: a dataclass config plus save/load in safetensors.

``save_pretrained(dir)`` writes ``config.json`` (registered name + config) and ``model.safetensors``;
``from_pretrained(dir)`` (or :func:`archlab.load`, whatever the kind) reads them back. Nothing is ever unpickled.
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
from ..registry import CONFIG_FILE, WEIGHTS_FILE, get, read_saved


class ArchModel(nn.Module):
    """Base class: subclasses set ``config_class`` and build themselves from ``self.config``."""

    config_class: ClassVar[type]
    registry_name: ClassVar[str]
    export_blocker: ClassVar[str | None] = None
    """Why ``archlab export`` cannot make an ONNX graph of this model (one line), or None when it can."""
    sharding_blocker: ClassVar[str | None] = None
    """Why ``train.parallel = "fsdp"`` / ``"tensor"`` cannot shard this model (one line), or None when they can."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def example_input(cls, config: Any, batch_size: int = 2) -> torch.Tensor:
        """A random input batch of the shape the model expects (used by contract tests and benches)."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def create(cls, **overrides: Any) -> ArchModel:
        """Build from config keys, validated against ``config_class`` (``archlab.create`` calls this)."""
        return cls(_config.build(cls.config_class, overrides, "model"))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (kind, registered name, config) + ``model.safetensors`` into ``directory``."""
        from ..io import atomic_write_bytes, save_tensors_atomic

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "model", "name": self.registry_name, "config": _config.to_dict(self.config)}
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_tensors_atomic(state, d / WEIGHTS_FILE)
        atomic_write_bytes(d / CONFIG_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        return d

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> ArchModel:
        """A model written by :meth:`save_pretrained`; the weights are loaded strictly."""
        meta = read_saved(directory)
        model_cls = get(meta["name"]).cls
        if not issubclass(model_cls, cls):
            raise ArchlabError(f"{directory} holds a {model_cls.__name__}, not a {cls.__name__}")
        if not isinstance(meta["config"], dict):
            raise ArchlabError(f"{Path(directory) / CONFIG_FILE}: 'config' must be a table of config keys")
        model = model_cls.create(**meta["config"])
        weights = Path(directory) / WEIGHTS_FILE
        if not weights.is_file():
            raise ArchlabError(f"{directory} has no {WEIGHTS_FILE}")
        try:
            state = load_file(str(weights), device=map_location)
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ArchlabError(f"{weights} is damaged: {exc}") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ArchlabError(f"{weights}: weights do not match the config ({str(exc).splitlines()[0]})") from None
        return model.to(map_location)
