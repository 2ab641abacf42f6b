"""Input x gradient (Shrikumar et al. 2016, "Not Just a Black Box"; Ancona et al. 2018, Sec. 2.1).

    A_i = x_i * dS_c / dx_i

For a linear model ``S = w^T x + b`` this is exactly each feature's contribution ``w_i x_i``; for a
ReLU network with zero biases it sums to the score, because such a network is piecewise linear and
positively homogeneous (``S(x) = x^T dS/dx``).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Target, gradient, register_method


@register_method("input_x_gradient")
def input_x_gradient(model: nn.Module, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
    """``x * dS_target/dx``, shape of ``inputs``."""
    return inputs.detach() * gradient(model, inputs, target)
