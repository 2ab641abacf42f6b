"""Activation functions by name, so configs can choose them with a string."""

from __future__ import annotations

from typing import Literal

from torch import nn

Activation = Literal["relu", "gelu", "tanh"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of ``relu``, ``gelu``, ``tanh``)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()
