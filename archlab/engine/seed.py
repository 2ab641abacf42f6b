"""Seeding, deterministic mode, and capture/restore of every RNG a run touches."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from ..errors import ArchlabError

MAX_SEED = 2**32 - 1
"""The largest seed: NumPy's legacy ``np.random.seed`` takes no more, and every library takes this range."""


def check_seed(seed: Any) -> int:
    """``seed`` as an int, or a one-line :class:`ArchlabError` when it is not one in [0, 2**32 - 1].

    Negative seeds crash NumPy's and gymnasium's seeding; from 2**64 on they overflow
    ``torch.manual_seed``; and folding large seeds into NumPy's range would silently give different
    seeds the same NumPy stream. Call it before any work starts, so a bad seed is a one-line error."""
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED:
        return int(seed)
    raise ArchlabError(f"seed must be an integer in [0, {MAX_SEED}] (2**32 - 1), got {seed!r}")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); optionally force deterministic kernels."""
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """All global RNG states, as checkpointable values (tensors and JSON-able leaves)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
