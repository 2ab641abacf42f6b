"""Plain helpers shared by several test modules (fixtures live in ``conftest.py``).

Imported as ``from helpers import ...``: pytest puts this folder on ``sys.path`` because ``conftest.py`` is in it.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable
from typing import Any

import pytest
import tomli_w
import torch


def updated(raw: dict[str, Any], **tables: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the raw recipe ``raw`` whose tables are updated key by key by ``tables`` (a table ``raw``
    lacks is added)."""
    raw = copy.deepcopy(raw)
    for key, values in tables.items():
        raw[key] = {**raw.get(key, {}), **copy.deepcopy(values)}
    return raw


# The ensemble / cross-validation tests' small recipe (lr 3e-3, no wall-clock checkpoints); the ``tiny_digits``
# fixture in conftest.py is another one (lr 1e-2, one CPU thread, an [expect] table).
_TOOLBOX_TINY: dict[str, Any] = {
    "name": "tiny",
    "model": {"name": "mlp", "in_features": 64, "hidden": [16]},
    "data": {"name": "digits", "batch_size": 32},
    "optim": {"name": "adam", "lr": 3e-3},
}


def toolbox_tiny(steps: int, log_every: int) -> dict[str, Any]:
    """A raw recipe: an MLP (16 hidden units) on the 8x8 ``digits`` set, Adam (lr 3e-3) on batches of 32,
    ``steps`` steps logged every ``log_every``, ``checkpoint_minutes = 0``. A fresh copy each call."""
    raw = copy.deepcopy(_TOOLBOX_TINY)
    raw["train"] = {"steps": steps, "log_every": log_every, "checkpoint_minutes": 0}
    return raw


def toolbox_tiny_toml(steps: int, log_every: int) -> str:
    """:func:`toolbox_tiny` as the text of a recipe file."""
    return tomli_w.dumps(toolbox_tiny(steps, log_every))


_DPSGD_TINY: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "mlp", "in_features": 64, "hidden": [16]},
    "data": {"name": "digits", "val_fraction": 0.1},
    "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
    "train": {"loop": "dpsgd", "steps": 30, "eval_every": 10, "log_every": 5, "checkpoint_every": 10},
    "loop": {"sample_rate": 0.05, "noise_multiplier": 1.0, "max_grad_norm": 1.0},
}


def dpsgd_tiny(name: str, **tables: dict[str, Any]) -> dict[str, Any]:
    """The privacy tests' raw recipe ``name``: 30 DP-SGD steps (Poisson sample rate 0.05, noise multiplier 1,
    clip norm 1, SGD lr 0.5) of an MLP (16 hidden units) on the 8x8 ``digits`` set, seed 0; ``tables`` as in
    :func:`updated`."""
    return updated({"name": name, **_DPSGD_TINY}, **tables)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def assert_fast_tracks_reference(fast: Any, ref: Any, fresh: Callable[[], Any], iterations: int,
                                 params: Callable[[Any], torch.Tensor], *, same_keys: bool) -> None:
    """An RL agent's fast path against its reference path from the same initial weights: after each of
    ``iterations`` iterations the fast path's logged stats (the same keys, or a subset of the reference's when
    not ``same_keys``) and weights (``params(agent)``, a flat vector) match; both made the same number of
    updates and saw the same episode returns; and the reference moved away from ``fresh()``, an untrained one."""
    for _ in range(iterations):
        s_fast, s_ref = fast.iteration(), ref.iteration()
        assert s_fast.keys() == s_ref.keys() if same_keys else s_fast.keys() <= s_ref.keys()
        for k, v in s_fast.items():
            assert v == pytest.approx(s_ref[k], rel=1e-4, abs=1e-5), k
        assert torch.allclose(params(fast), params(ref), atol=1e-5)
    assert fast.num_updates == ref.num_updates > 0
    assert [r for _, r, _ in fast.episodes] == [r for _, r, _ in ref.episodes]
    assert not torch.equal(params(ref), params(fresh()))  # it did learn something
