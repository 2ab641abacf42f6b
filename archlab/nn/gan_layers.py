"""Layers of the progressive GAN (Karras et al. 2018) that StyleGAN (Karras et al. 2019) kept: the
equalized learning rate, pixelwise feature normalisation and the minibatch standard deviation.

Equalized learning rate (Karras et al. 2018, Sec. 4.1): weights are stored as N(0, 1) and scaled at
every forward pass by He's constant, so Adam's per-parameter step sizes act alike on every layer

    y = (c * W) x + b,   c = lr_mul * gain / sqrt(fan_in),   W ~ N(0, 1 / lr_mul^2)

(``lr_mul`` < 1 slows a layer down: StyleGAN's mapping network uses 0.01; the bias is stored divided
by ``lr_mul`` as well). Pixel norm (Sec. 4.2): each pixel's feature vector to unit mean square,
b = a / sqrt(mean_j a_j^2 + 1e-8). Minibatch stddev (Sec. 3): the standard deviation of every feature
over groups of the batch, averaged to one number per group, appended as an extra constant channel so the
discriminator can see a batch's lack of variety.

Shapes: ``EqualLinear`` (B, in) -> (B, out); ``EqualConv2d`` (B, C_in, H, W) -> (B, C_out, H, W) (same
padding); ``PixelNorm`` any (B, C, ...) -> same; ``MinibatchStdDev`` (B, C, H, W) -> (B, C + 1, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class EqualLinear(nn.Module):
    """A linear layer with the equalized learning rate (weights scaled at run time, not at init)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_mul))
        self.scale = lr_mul * gain / math.sqrt(in_features)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """A k x k convolution (stride 1, same padding) with the equalized learning rate."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


class PixelNorm(nn.Module):
    """b_{x,y} = a_{x,y} / sqrt(mean_j (a^j_{x,y})^2 + eps) over the channel dimension (dim 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class MinibatchStdDev(nn.Module):
    """Append the mean (over features and pixels) of the per-feature standard deviation over each group
    of ``group_size`` examples as one extra channel (the batch must divide into groups; a smaller batch is
    one group)."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = min(self.group_size, b)
        if b % g:
            g = 1 if b % 2 else 2
        y = x.view(g, b // g, c, h, w)                                # groups interleaved as in Karras et al.
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()             # (B/g, C, H, W)
        stat = std.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)               # (B/g, 1, 1, 1)
        return torch.cat([x, stat.repeat(g, 1, h, w)], dim=1)
