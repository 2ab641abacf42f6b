"""Activation functions by name, so configs can choose them with a string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import nn

Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "tanh"]


def _gelu_tanh() -> nn.Module:
    # GPT-2 / BERT-original "gelu_new": the tanh approximation of GELU
    return nn.GELU(approximate="tanh")


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": _gelu_tanh,
                                                    "silu": nn.SiLU, "tanh": nn.Tanh}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of ``relu``, ``gelu``, ``gelu_tanh``, ``silu``, ``tanh``)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()
