"""Atomic, verified checkpoints in safetensors.

A checkpoint is one ``.safetensors`` file holding every tensor of an arbitrary nested state (model,
optimizer, scheduler, RNG states, step, ...). Non-tensor leaves travel as JSON in the safetensors
metadata, with a sha256 digest of all tensor bytes, so a truncated *or* bit-flipped file is
detected on load. Files are written to a temp name, fsync'd, then renamed: a crash mid-write never
leaves a half file under a checkpoint's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..io import save_tensors_atomic

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"
_DIGEST_KEY = "archlab.sha256"
_STATE_KEY = "archlab.state"


class CheckpointError(Exception):
    """A checkpoint file is missing, truncated or corrupted."""


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in ``obj`` by a reference, collecting tensors under path-like keys."""
    if isinstance(obj, torch.Tensor):
        key = base = prefix or "root"
        n = 0
        while key in tensors:  # a "/" inside a dict key can spell another tensor's path
            n += 1
            key = f"{base}#{n}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _flatten(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        # Optimizer state uses int keys; JSON cannot, so keep them as explicit pairs.
        return {_ITEMS: [[k, _flatten(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__} at {prefix or 'root'}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
        if _ITEMS in obj:
            return {k: _unflatten(v, tensors) for k, v in obj[_ITEMS]}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _digest(tensors: dict[str, torch.Tensor], skeleton_json: str) -> str:
    """sha256 over the JSON part (step, hyperparameters ...) and every tensor's name, dtype, shape, bytes."""
    h = hashlib.sha256(skeleton_json.encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Save a nested state (tensors + JSON-able leaves) to one verified safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    skeleton_json = json.dumps(skeleton)
    metadata = {_STATE_KEY: skeleton_json, _DIGEST_KEY: _digest(tensors, skeleton_json)}
    save_tensors_atomic(tensors, path, metadata)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a state written by :func:`save_state`; raise CheckpointError if damaged in any way."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # truncated header, bad JSON, short data: all mean "damaged"
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if _STATE_KEY not in metadata or _DIGEST_KEY not in metadata:
        raise CheckpointError(f"{path}: not an archlab checkpoint")
    if _digest(tensors, metadata[_STATE_KEY]) != metadata[_DIGEST_KEY]:
        raise CheckpointError(f"{path}: checksum mismatch (corrupted)")
    return _unflatten(json.loads(metadata[_STATE_KEY]), tensors)


_NAME = re.compile(r"^step-(\d+)\.safetensors$")


class CheckpointManager:
    """Numbered checkpoints ``step-00000100.safetensors`` in one folder, keeping the newest ``keep``."""

    def __init__(self, folder: str | os.PathLike, keep: int = 3) -> None:
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def path_for(self, step: int) -> Path:
        return self.folder / f"step-{step:08d}.safetensors"

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def save(self, step: int, state: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path_for(step)
        save_state(state, path)
        for old in self.steps()[: -self.keep]:
            self.path_for(old).unlink(missing_ok=True)
        # Temp files of writes killed mid-way (SIGKILL, power loss) are never loaded; reclaim the space.
        for stale in self.folder.glob(".step-*.tmp"):
            stale.unlink(missing_ok=True)
        return path

    def load_latest(self, warn: Any = None) -> tuple[int, dict[str, Any]] | None:
        """Newest checkpoint that loads and verifies; damaged ones are skipped (and reported via ``warn``)."""
        for step in reversed(self.steps()):
            try:
                return step, load_state(self.path_for(step))
            except CheckpointError as exc:
                if warn is not None:
                    warn(f"skipping damaged checkpoint: {exc}")
        return None
