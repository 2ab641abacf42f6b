"""CIFAR ResNets (He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image Recognition", §4.2).

The network for 32x32 images is a 3x3 convolution followed by three stages of ``n`` basic
blocks (two 3x3 convolutions plus a shortcut each, see :class:`archlab.nn.BasicBlock`), global
average pooling and a linear classifier, ``6n + 2`` weighted layers in all:

    stem     conv3x3(16) -> BN -> ReLU          [B, C, 32, 32] -> [B, 16, 32, 32]
    stage 1  n blocks, 16 channels               -> [B, 16, 32, 32]
    stage 2  n blocks, 32 channels, stride 2     -> [B, 32, 16, 16]
    stage 3  n blocks, 64 channels, stride 2     -> [B, 64, 8, 8]
    head     global average pool -> linear       -> [B, num_classes]

(``width`` scales the 16/32/64 channels.) Where a stage halves the resolution and doubles the
channels, the paper's CIFAR models use shortcut option A: subsample and zero-pad, no parameters;
option B uses a 1x1 projection. Paper parameter counts (10 classes, option A): ResNet-20 0.27M,
ResNet-32 0.46M, ResNet-56 0.85M. Global pooling makes the network accept any input size, e.g.
28x28 MNIST (maps 28 -> 14 -> 7) with ``in_channels=1``.

Registered as ``resnet20``, ``resnet32`` and ``resnet56``; each is the same class with a
different default ``depth``, and any ``depth = 6n + 2`` can be asked of any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import BasicBlock, InitScheme, Shortcut, init_weights
from ...nn.checkpointing import ActivationCheckpointing
from ...registry import register
from ..base import ArchModel


@dataclass
class ResNetConfig:
    in_channels: int = 3
    """input channels (3 for CIFAR, 1 for MNIST)"""
    num_classes: int = 10
    """number of classes (output logits)"""
    depth: int = 20
    """weighted layers, 6n + 2 for n blocks per stage: 20, 32, 44, 56, 110, ..."""
    width: int = 16
    """channels of the stem and the first stage; stages 2 and 3 have 2x and 4x this"""
    shortcut: Shortcut = "A"
    """shortcut where the shape changes: "A" subsample + zero-pad (no parameters) or "B" 1x1 conv + BN"""
    init: InitScheme = "he"
    """weight initialisation scheme (see archlab.nn.init); the paper uses He et al. 2015"""

    def __post_init__(self) -> None:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 56, ...), got {self.depth}")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


class ResNet(ArchModel, ActivationCheckpointing):
    """CIFAR ResNet of depth 6n + 2: stem, three stages of n basic blocks, global average pool, linear.

    Shapes:
        x: ``[B, C, H, W]`` -> features ``[B, 4 * width, ceil(H / 4), ceil(W / 4)]``
        -> pooled ``[B, 4 * width]`` -> logits ``[B, num_classes]``
    """

    config_class = ResNetConfig

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__(config)
        w = config.width
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        stages: list[nn.Module] = []
        c_in = w
        for stage, c_out in enumerate((w, 2 * w, 4 * w)):
            # Only the first block of stages 2 and 3 downsamples; the rest keep the shape.
            strides = [1 if stage == 0 else 2] + [1] * (config.blocks_per_stage - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(c_in, c_out, stride=stride, shortcut=config.shortcut))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, config.num_classes)
        init_weights(self, config.init)

    @classmethod
    def example_input(cls, config: ResNetConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for stage in self.stages:
            for block in stage:  # each residual block recomputed in the backward with checkpointing
                h = self.checkpointed(block, h)
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


@dataclass
class ResNet20Config(ResNetConfig):
    depth: int = 20
    """weighted layers, 6n + 2 (ResNet-20: n = 3)"""


@dataclass
class ResNet32Config(ResNetConfig):
    depth: int = 32
    """weighted layers, 6n + 2 (ResNet-32: n = 5)"""


@dataclass
class ResNet56Config(ResNetConfig):
    depth: int = 56
    """weighted layers, 6n + 2 (ResNet-56: n = 9)"""


@register("resnet20", family="classic")
class ResNet20(ResNet):
    """ResNet-20 for CIFAR (He et al. 2016): 3 blocks per stage, 0.27M parameters."""

    config_class = ResNet20Config


@register("resnet32", family="classic")
class ResNet32(ResNet):
    """ResNet-32 for CIFAR (He et al. 2016): 5 blocks per stage, 0.46M parameters."""

    config_class = ResNet32Config


@register("resnet56", family="classic")
class ResNet56(ResNet):
    """ResNet-56 for CIFAR (He et al. 2016): 9 blocks per stage, 0.85M parameters."""

    config_class = ResNet56Config
