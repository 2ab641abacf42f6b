"""Multilayer perceptron: a stack of fully connected layers on the flattened input.

With widths ``d_0 = in_features, d_1..d_L = hidden`` each hidden layer ``l`` computes

    h_l = Dropout(act(Norm(W_l h_{l-1} + b_l)))                      (plain layer)
    h_l = h_{l-1} + Dropout(act(W_l Norm(h_{l-1}) + b_l))            (residual layer)

and the head gives ``logits = W_out h_L + b_out``. A layer is residual only when ``residual=True``
and its input and output widths are equal (the first layer, which changes width, never is); its
normalisation then moves in front of the linear map (*pre-norm*) so that the skip path
``h_{l-1}`` stays an untouched identity, which is what lets gradients flow through deep stacks.

The defaults (``hidden=[100, 100]``, ReLU, no norm, no dropout) give the MNIST-1D baseline MLP
shape, Linear(40, 100) -> ReLU -> Linear(100, 100) -> ReLU -> Linear(100, 10), 15,210 parameters.
Note that the MNIST-1D repository's ``MLPBase`` (``notebooks/models.py``) adds a skip around its
middle layer, ``h = h + relu(linear2(h))``: that model is exactly ``residual=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ...nn import Activation, InitScheme, activation_layer, init_weights
from ...registry import register
from ..base import ArchModel

Norm = Literal["none", "batch", "layer"]


@dataclass
class MLPConfig:
    in_features: int = 40
    """number of input features after flattening (40 = one MNIST-1D sequence, 784 = a 28x28 image)"""
    num_classes: int = 10
    """number of classes (output logits)"""
    hidden: list[int] = field(default_factory=lambda: [100, 100])
    """widths of the hidden layers, input side first; [] gives logistic regression"""
    activation: Activation = "relu"
    """nonlinearity after each hidden layer"""
    dropout: float = 0.0
    """dropout probability on each hidden layer's output"""
    norm: Norm = "none"
    """normalisation in each hidden layer: BatchNorm1d or LayerNorm over the features"""
    residual: bool = False
    """add a skip connection h + f(h) around every hidden layer whose input and output widths match"""
    init: InitScheme = "default"
    """weight initialisation scheme (see archlab.nn.init)"""

    def __post_init__(self) -> None:
        if self.in_features < 1 or self.num_classes < 2 or any(w < 1 for w in self.hidden):
            raise ValueError("in_features and hidden widths must be >= 1, num_classes >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


class MLPLayer(nn.Module):
    """One hidden layer, plain or pre-norm residual (equations in the module docstring).

    Shapes:
        h: ``[B, d_in]`` -> ``[B, d_out]``
    """

    def __init__(self, d_in: int, d_out: int, config: MLPConfig) -> None:
        super().__init__()
        self.residual = config.residual and d_in == d_out
        # A bias right before BatchNorm is cancelled by its mean subtraction, so it is dropped there.
        self.linear = nn.Linear(d_in, d_out, bias=self.residual or config.norm != "batch")
        self.norm = _norm(config.norm, d_in if self.residual else d_out)
        self.act = activation_layer(config.activation)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return h + self.dropout(self.act(self.linear(self.norm(h))))
        return self.dropout(self.act(self.norm(self.linear(h))))


@register("mlp", family="classic")
class MLP(ArchModel):
    """Multilayer perceptron with optional normalisation, dropout and residual layers.

    Shapes:
        x: ``[B, *]`` with ``prod(*) == in_features`` -> logits ``[B, num_classes]``
    """

    config_class = MLPConfig

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        widths = [config.in_features, *config.hidden]
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.layers = nn.ModuleList(MLPLayer(d_in, d_out, config) for d_in, d_out in pairs)
        self.head = nn.Linear(widths[-1], config.num_classes)
        init_weights(self, config.init)

    @classmethod
    def example_input(cls, config: MLPConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)
