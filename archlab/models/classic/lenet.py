"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition"), in the form it is usually trained today.

Layer by layer, for a 28x28 MNIST digit (the paper fed 32x32 images; the 28x28 input is padded by 2
so that every feature map has the paper's size):

    input   [B, 1, 28, 28]  --pad 2-->  [B, 1, 32, 32]
    C1      conv 6 @ 5x5          -> [B, 6, 28, 28]
    S2      2x2 pool, stride 2    -> [B, 6, 14, 14]
    C3      conv 16 @ 5x5         -> [B, 16, 10, 10]
    S4      2x2 pool, stride 2    -> [B, 16, 5, 5]
    C5      conv 120 @ 5x5        -> [B, 120, 1, 1]   (a 5x5 conv on a 5x5 map = a linear layer)
    F6      linear 120 -> 84
    output  linear 84 -> num_classes

61,706 parameters for one input channel and 10 classes. What the usual adaptation changes from
the paper: C3 connects to all 6 S2 maps (the paper used a sparse connection table); S2/S4 are
plain max or average pooling (the paper's had a trainable scale and bias followed by a squashing
function); the activation is ReLU or a plain tanh (the paper used ``1.7159 tanh(2x/3)``); the
output is a linear layer trained with cross-entropy (the paper used Euclidean RBF units).

Inputs smaller than 32x32 are zero-padded by ``ceil((32 - image_size) / 2)`` so that C1 maps are
at least 28x28; larger inputs are not padded, and C5 then yields more than one position, which is
flattened into F6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...nn import InitScheme, activation_layer, init_weights
from ...registry import register
from ..base import ArchModel


@dataclass
class LeNet5Config:
    in_channels: int = 1
    """input channels (1 for MNIST)"""
    image_size: int = 28
    """height = width of the input images (28 for MNIST, 32 as in the paper)"""
    num_classes: int = 10
    """number of classes (output logits)"""
    activation: Literal["tanh", "relu"] = "relu"
    """nonlinearity after C1, C3, C5 and F6 (the paper: a scaled tanh)"""
    pool: Literal["max", "avg"] = "max"
    """subsampling in S2 and S4 (the paper: a trainable average)"""
    dropout: float = 0.0
    """dropout probability on the inputs of F6 and of the output layer"""
    norm: Literal["none", "batch"] = "none"
    """BatchNorm after C1, C3, C5 and F6, before the activation (not in the paper)"""
    init: InitScheme = "default"
    """weight initialisation scheme (see archlab.nn.init)"""

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def padding(self) -> int:
        """Zero padding of C1: enough to bring the input up to the paper's 32x32 (2 for MNIST)."""
        return max(0, -(-(32 - self.image_size) // 2))

    def c5_side(self) -> int:
        """Height = width of the C5 output (1 for inputs up to 32x32)."""
        side = self.image_size + 2 * self.padding() - 4  # C1
        side = (side // 2 - 4) // 2  # S2, C3, S4
        return side - 4  # C5


@register("lenet5", family="classic")
class LeNet5(ArchModel):
    """LeNet-5: C1 conv 6@5x5, S2 pool, C3 conv 16@5x5, S4 pool, C5 conv 120@5x5, F6 84, output.

    Shapes:
        x: ``[B, C, S, S]`` -> C1 ``[B, 6, 28, 28]`` -> C5 ``[B, 120, 1, 1]`` (for S <= 32) -> F6 ``[B, 84]``
        -> logits ``[B, num_classes]``
    """

    config_class = LeNet5Config

    def __init__(self, config: LeNet5Config) -> None:
        super().__init__(config)
        pool = nn.MaxPool2d if config.pool == "max" else nn.AvgPool2d
        batch = config.norm == "batch"

        def norm(width: int, dims: int) -> nn.Module:
            if not batch:
                return nn.Identity()
            return nn.BatchNorm2d(width) if dims == 2 else nn.BatchNorm1d(width)

        act = config.activation
        # Layers feeding a BatchNorm drop their bias: BN's mean subtraction would cancel it.
        self.c1 = nn.Sequential(
            nn.Conv2d(config.in_channels, 6, 5, padding=config.padding(), bias=not batch),
            norm(6, 2),
            activation_layer(act),
        )
        self.s2 = pool(2)
        self.c3 = nn.Sequential(nn.Conv2d(6, 16, 5, bias=not batch), norm(16, 2), activation_layer(act))
        self.s4 = pool(2)
        self.c5 = nn.Sequential(nn.Conv2d(16, 120, 5, bias=not batch), norm(120, 2), activation_layer(act))
        self.f6 = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(120 * config.c5_side() ** 2, 84, bias=not batch),
            norm(84, 1),
            activation_layer(act),
        )
        self.output = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(84, config.num_classes))
        init_weights(self, config.init)

    @classmethod
    def example_input(cls, config: LeNet5Config, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, config.image_size, config.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.s4(self.c3(self.s2(self.c1(x))))
        return self.output(self.f6(self.c5(h)))
