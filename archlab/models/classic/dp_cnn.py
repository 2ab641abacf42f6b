"""The small CNN DP-SGD is usually demonstrated with on MNIST (Opacus' MNIST example, ``SampleConvNet``).

Differentially private training clips every example's gradient, so small models with few, large
strides are preferred (the noise added per step grows with the number of parameters' worth of
signal it must hide). Layer by layer, for a 28x28 MNIST digit:

    input   [B, 1, 28, 28]
    conv    16 @ 8x8, stride 2, padding 3  -> [B, 16, 14, 14],  ReLU
    pool    2x2 max, stride 1              -> [B, 16, 13, 13]
    conv    32 @ 4x4, stride 2             -> [B, 32, 5, 5],    ReLU
    pool    2x2 max, stride 1              -> [B, 32, 4, 4]
    linear  512 -> 32, ReLU
    linear  32 -> num_classes

26,010 parameters. No normalisation layer: BatchNorm mixes the examples of a batch, which per-example
clipping (and its privacy analysis) cannot allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...registry import register
from ..base import ArchModel


@dataclass
class DPCNNConfig:
    in_channels: int = 1
    """input channels (1 for MNIST)"""
    image_size: int = 28
    """height = width of the input images; fixes the size of the flattened features"""
    num_classes: int = 10
    """number of classes (output logits)"""

    def __post_init__(self) -> None:
        if self.feature_side() < 1:
            raise ValueError(f"image_size {self.image_size} is too small for two strided convolutions")

    def feature_side(self) -> int:
        """Height = width of the second pooling's output (4 for 28x28 inputs)."""
        side = (self.image_size + 2 * 3 - 8) // 2 + 1 - 1  # conv 8x8 s2 p3, pool 2x2 s1
        return (side - 4) // 2 + 1 - 1  # conv 4x4 s2, pool 2x2 s1


@register("dp_cnn", family="classic")
class DPCNN(ArchModel):
    """Two strided convolutions with stride-1 max pooling, then a 32-unit hidden layer.

    Shapes:
        x: ``[B, C, S, S]`` -> ``[B, 16, 14, 14]`` -> ``[B, 32, 4, 4]`` (S = 28) -> ``[B, 32]`` -> ``[B, num_classes]``
    """

    config_class = DPCNNConfig

    def __init__(self, config: DPCNNConfig) -> None:
        super().__init__(config)
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, 16, 8, stride=2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(), nn.MaxPool2d(2, 1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * config.feature_side() ** 2, 32), nn.ReLU(),
                                  nn.Linear(32, config.num_classes))

    @classmethod
    def example_input(cls, config: DPCNNConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, config.image_size, config.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
