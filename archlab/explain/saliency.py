"""Saliency maps (Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional Networks", Sec. 3.1).

The first-order Taylor view of a score ``S_c`` around the input ``x``: ``S_c(x') ~ w^T x' + b`` with
``w = dS_c/dx |_x``. The magnitude ``|w_i|`` says how much a small change of feature ``i`` moves the
score, so the map is

    M_i = | dS_c / dx_i |                   (``abs=True``, the paper's and Captum's default)

The paper takes the maximum over colour channels for an RGB image; here the map keeps the input's
shape and a plot may reduce channels as it likes.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Target, gradient, register_method


@register_method("saliency")
def saliency(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, abs: bool = True) -> torch.Tensor:  # noqa: A002
    """``|dS_target/dx|`` (or the signed gradient with ``abs=False``), shape of ``inputs``."""
    grad = gradient(model, inputs, target)
    return grad.abs() if abs else grad
