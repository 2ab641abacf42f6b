"""Hugging Face format in and out: ``from_hf(path)`` and ``save_hf(model, dir)``.

A Hugging Face model directory holds ``config.json`` (with ``model_type``) and the weights in
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``). Pickled weights
(``pytorch_model.bin``) are refused: unpickling runs arbitrary code.

Each model class that speaks the format declares:

* ``hf_model_types``: the ``model_type`` values it reads (``("gpt2",)``);
* ``config_from_hf(hf_config: dict) -> Config`` (classmethod) and ``config_to_hf(self) -> dict``;
* ``state_from_hf(config, hf_state) -> dict`` (classmethod; HF names -> archlab names) and
  ``state_to_hf(self) -> dict`` (archlab names -> HF names, tied weights written once).

The weights are converted by name (and split / fused / transposed where the layouts differ), then
loaded with ``strict=True``: a missing or unexpected tensor is an error, never silently random.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ...errors import ArchlabError
from ..base import ArchModel

# Hugging Face activation names <-> ours. "gelu" is the exact (erf) GELU; the tanh approximation has
# several HF names that compute the same function (the first one is what we write).
ACT_FROM_HF: dict[str, str] = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                               "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu",
                               "tanh": "tanh"}
ACT_TO_HF: dict[str, str] = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu", "tanh": "tanh"}


class HFModel(ArchModel):
    """A model with a Hugging Face counterpart: ``model.save_hf(dir)`` writes a directory that
    ``transformers``' ``from_pretrained`` reads. Subclasses provide the four conversions above."""

    def save_hf(self, directory: str | os.PathLike) -> Path:
        return save_hf(self, directory)


def hf_classes() -> dict[str, type[ArchModel]]:
    """``model_type`` -> archlab model class, over every registered model that reads HF weights."""
    from ...registry import MODELS  # noqa: PLC0415

    out: dict[str, type[ArchModel]] = {}
    for entry in MODELS.entries():
        for t in getattr(entry.cls, "hf_model_types", ()):
            out[t] = entry.cls
    return out


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists():
        raise ArchlabError(f"{p} is a file; from_hf wants a model directory (config.json + model.safetensors)")
    if str(path).startswith((".", "/", "~")) or os.sep in str(path).strip("/").split("/", 1)[-1]:
        raise ArchlabError(f"{path}: no such directory")
    # a hub id such as "gpt2" or "google-bert/bert-base-uncased"
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415
    except ImportError:
        raise ArchlabError(f"{path!r} is not a local directory, and resolving hub ids needs huggingface_hub "
                           "(pip install 'archlab[hub]')") from None
    try:
        local = snapshot_download(str(path), allow_patterns=["config.json", "*.safetensors",
                                                             "model.safetensors.index.json"])
    except Exception as exc:  # network errors, unknown repo, offline mode ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchlabError(f"cannot fetch {path!r} from the Hugging Face hub: {first}") from None
    return Path(local)


def read_hf_state(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF directory (single file or shards), refusing pickled weights."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(directory / shard))
        return state
    if any((directory / n).exists() for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")):
        raise ArchlabError(f"{directory} has pickled/framework weights only; archlab reads safetensors only "
                           "(convert with transformers: model.save_pretrained(dir, safe_serialization=True))")
    raise ArchlabError(f"{directory}: no model.safetensors")


def from_hf(path: str | os.PathLike, **overrides: Any) -> ArchModel:
    """Load a Hugging Face model directory (or hub id) into the matching archlab model.

    ``overrides`` replace config fields after conversion (for example ``dropout=0.0``)."""
    directory = _resolve(path)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ArchlabError(f"{directory}: config.json is missing")
    hf_config = json.loads(cfg_path.read_text())
    model_type = hf_config.get("model_type")
    classes = hf_classes()
    if model_type not in classes:
        raise ArchlabError(f"{directory}: model_type {model_type!r} is not supported; "
                           f"supported: {', '.join(sorted(classes))}")
    cls = classes[model_type]
    config = cls.config_from_hf(hf_config)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ArchlabError(f"{cls.registry_name} has no config field {key!r}")
        setattr(config, key, value)
    model = cls(config)
    state = cls.state_from_hf(config, read_hf_state(directory))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArchlabError(f"{directory}: weights do not match {cls.registry_name}: "
                           f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model.eval()


def save_hf(model: ArchModel, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers`` loads with ``from_pretrained``."""
    from ...io import atomic_write_bytes, save_tensors_atomic  # noqa: PLC0415

    if not hasattr(model, "state_to_hf"):
        raise ArchlabError(f"{type(model).__name__} has no Hugging Face format")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_to_hf().items()}
    save_tensors_atomic(state, d / "model.safetensors", metadata={"format": "pt"})
    atomic_write_bytes(d / "config.json", (json.dumps(model.config_to_hf(), indent=2) + "\n").encode())
    return d
