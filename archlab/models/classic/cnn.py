"""Plain convolutional classifiers: a stack of conv -> norm -> ReLU blocks, then a linear head.

A 1-d convolution with kernel ``k``, stride ``s`` and zero padding ``p`` computes, per output
channel ``o`` and position ``t``,

    y[o, t] = b[o] + sum_c sum_{j<k} W[o, c, j] * x_pad[c, s * t + j],     L_out = floor((L + 2p - k) / s) + 1

and the 2-d version does the same over both image axes. Weight sharing over positions makes the
features translation-equivariant; striding or pooling trades resolution for channels.

- ``cnn1d`` (sequences, e.g. MNIST-1D): strided convolutions, no pooling, flatten -> Linear. The
  defaults are the MNIST-1D paper's ``ConvBase`` (Greydanus 2020): Conv1d(1, 25, 5, s2, p1) ->
  Conv1d(25, 25, 3, s2, p1) -> Conv1d(25, 25, 3, s2, p1), ReLU after each, length 40 -> 19 -> 10 -> 5,
  flatten 125 -> Linear(125, 10); 5,210 parameters.
- ``cnn2d`` (images, e.g. MNIST/CIFAR): "same"-padded convolutions each followed by 2x2 max
  pooling, then flatten -> Linear(hidden) -> ReLU -> Linear(num_classes).

``norm="layer"`` is ``GroupNorm(1, C)``: each sample is normalised over all its channels *and*
positions, with a per-channel scale and shift. Unlike ``LayerNorm(C)`` over channels alone it needs
no transpose and, unlike BatchNorm, behaves the same in training and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ...nn import InitScheme, init_weights
from ...registry import register
from ..base import ArchModel

Norm = Literal["none", "batch", "layer"]


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def conv_output_length(length: int, kernel_size: int, stride: int, padding: int) -> int:
    """``floor((L + 2p - k) / s) + 1``: the output length of a convolution along one axis."""
    return (length + 2 * padding - kernel_size) // stride + 1


@dataclass
class CNN1DConfig:
    in_channels: int = 1
    """input channels C (1 for MNIST-1D)"""
    length: int = 40
    """input sequence length L; fixes the size of the flattened features"""
    num_classes: int = 10
    """number of classes (output logits)"""
    channels: list[int] = field(default_factory=lambda: [25, 25, 25])
    """output channels of each conv layer"""
    kernel_sizes: list[int] = field(default_factory=lambda: [5, 3, 3])
    """kernel size of each conv layer (same length as channels)"""
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    """stride of each conv layer (same length as channels)"""
    padding: int = 1
    """zero padding on each side, for every conv layer"""
    norm: Norm = "none"
    """normalisation after each conv: BatchNorm1d, or GroupNorm(1, C) for "layer"; none for the paper model"""
    dropout: float = 0.0
    """dropout probability after each conv block"""
    init: InitScheme = "default"
    """weight initialisation scheme (see archlab.nn.init)"""

    def __post_init__(self) -> None:
        if not len(self.channels) == len(self.kernel_sizes) == len(self.strides):
            raise ValueError("channels, kernel_sizes and strides must have the same length")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.feature_length() < 1:
            raise ValueError(f"the conv stack shrinks length {self.length} to nothing")

    def feature_length(self) -> int:
        """Length of the last conv layer's output (5 for the defaults)."""
        length = self.length
        for k, s in zip(self.kernel_sizes, self.strides, strict=True):
            length = conv_output_length(length, k, s, self.padding)
        return length


@register("cnn1d", family="classic")
class CNN1D(ArchModel):
    """1-d CNN: [Conv1d -> Norm -> ReLU -> Dropout] x n -> flatten -> Linear.

    Shapes:
        x: ``[B, L]`` (one channel) or ``[B, C, L]`` -> logits ``[B, num_classes]``
    """

    config_class = CNN1DConfig

    def __init__(self, config: CNN1DConfig) -> None:
        super().__init__(config)
        layers: list[nn.Module] = []
        c_in = config.in_channels
        for c_out, k, s in zip(config.channels, config.kernel_sizes, config.strides, strict=True):
            # A bias before BatchNorm is cancelled by its mean subtraction, so it is dropped there.
            layers += [
                nn.Conv1d(c_in, c_out, k, stride=s, padding=config.padding, bias=config.norm != "batch"),
                _norm(config.norm, c_out, dims=1),
                nn.ReLU(),
                nn.Dropout(config.dropout),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * config.feature_length(), config.num_classes)
        init_weights(self, config.init)

    @classmethod
    def example_input(cls, config: CNN1DConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, config.length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # [B, L]: a single-channel sequence, as MNIST-1D stores it
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))


@dataclass
class CNN2DConfig:
    in_channels: int = 1
    """input channels C (1 for MNIST, 3 for CIFAR)"""
    image_size: int = 28
    """height = width of the input images; fixes the size of the flattened features"""
    num_classes: int = 10
    """number of classes (output logits)"""
    channels: list[int] = field(default_factory=lambda: [32, 64])
    """output channels of each conv block; each block halves the resolution with 2x2 max pooling"""
    kernel_size: int = 3
    """odd kernel size of every conv, "same"-padded so only pooling changes the resolution"""
    hidden: int = 128
    """width of the fully connected layer before the classifier"""
    dropout: float = 0.0
    """dropout probability on the flattened features and on the hidden layer"""
    norm: Norm = "batch"
    """normalisation after each conv: BatchNorm2d, GroupNorm(1, C) for "layer", or none"""
    init: InitScheme = "default"
    """weight initialisation scheme (see archlab.nn.init)"""

    def __post_init__(self) -> None:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {self.kernel_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.image_size >> len(self.channels) < 1:
            raise ValueError(f"{len(self.channels)} poolings shrink a {self.image_size}px image to nothing")


@register("cnn2d", family="classic")
class CNN2D(ArchModel):
    """2-d CNN: [Conv2d -> Norm -> ReLU -> MaxPool 2] x n -> flatten -> Linear -> ReLU -> Linear.

    Shapes:
        x: ``[B, C, S, S]`` -> features ``[B, channels[-1], S / 2^n, S / 2^n]`` -> logits ``[B, num_classes]``
    """

    config_class = CNN2DConfig

    def __init__(self, config: CNN2DConfig) -> None:
        super().__init__(config)
        layers: list[nn.Module] = []
        c_in = config.in_channels
        k = config.kernel_size
        for c_out in config.channels:
            layers += [
                nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=config.norm != "batch"),
                _norm(config.norm, c_out, dims=2),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = config.image_size >> len(config.channels)  # each 2x2 pool floors the size by half
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(c_in * side * side, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )
        init_weights(self, config.init)

    @classmethod
    def example_input(cls, config: CNN2DConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, config.image_size, config.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
