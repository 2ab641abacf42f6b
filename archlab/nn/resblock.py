"""The ResNet basic block (He et al. 2016, "Deep Residual Learning for Image Recognition").

A block learns a residual ``F`` on top of a shortcut instead of a full mapping:

    y = ReLU( F(x) + S(x) ),   F(x) = BN(conv3x3(ReLU(BN(conv3x3_stride(x)))))

``S`` is the identity when input and output shapes agree. When the block changes the shape (a
stride > 1 or more channels) the paper offers two shortcuts:

- option **A**: parameter-free. Subsample by taking every ``stride``-th pixel (the same grid the
  strided 3x3 convolution samples) and append zero-valued channels. Used for the CIFAR ResNets.
- option **B**: a projection ``BN(conv1x1_stride(x))``; only where the shape changes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Shortcut = Literal["A", "B"]


class SubsamplePad(nn.Module):
    """Option-A shortcut: ``x[:, :, ::s, ::s]`` followed by zero channels up to ``out_channels``.

    Shapes:
        x: ``[B, C_in, H, W]`` -> ``[B, C_out, ceil(H / s), ceil(W / s)]``
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcut cannot drop channels ({in_channels} -> {out_channels})")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad lists pads from the last dim backwards: (W_left, W_right, H_top, H_bottom, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual shortcut; ReLU after the sum.

    Args:
        in_channels: channels of the input ``x``.
        out_channels: channels of the output.
        stride: stride of the first convolution (2 halves the resolution).
        shortcut: ``"A"`` (subsample + zero-pad) or ``"B"`` (1x1 conv + BN) when the shape changes.

    Shapes:
        x: ``[B, in_channels, H, W]`` -> ``[B, out_channels, ceil(H / stride), ceil(W / stride)]``
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, shortcut: Shortcut = "A"
    ) -> None:
        super().__init__()
        # Convolutions feeding a BatchNorm need no bias: BN subtracts the per-channel mean anyway.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = SubsamplePad(in_channels, out_channels, stride)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            raise ValueError(f"unknown shortcut {shortcut!r}; choose 'A' or 'B'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))
