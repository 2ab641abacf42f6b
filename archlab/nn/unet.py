"""The small image U-Net of the diffusion family (Ho et al. 2020, Appendix B, at MNIST size), shared by the
noise predictor (:mod:`archlab.models.generative.ddpm`) and the score network
(:mod:`archlab.models.generative.score`).

Per resolution ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 convolutions, a conditioning
embedding added after the first convolution), a strided 3x3 convolution down and nearest upsampling + 3x3
convolution up, skip connections concatenated on the way up; 28 -> 14 -> 7 with ``channel_mult = [1, 2, 2]``.
No self-attention (Ho et al. put one at 16x16; at 28x28 MNIST the convolutions suffice).

What the embedding encodes (a diffusion step t, a noise level sigma, a class) is the model's business: the
U-Net only adds a (B, emb_dim) vector inside every residual block.

:class:`UNetMixin` builds the layers as attributes of the model itself (``conv_in``, ``down``,
``downsample``, ``mid``, ``up``, ``upsample``, ``norm_out``, ``conv_out``), so the models keep flat
state_dict keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    """The U-Net's own settings, shared by the configs of the models built on it."""

    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); each downsampling halves H and W, rounding up (28 -> 14 -> 7)."""
    channels: int = 32
    """Channels of the first resolution."""
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    """Channel multiplier per resolution (one downsampling between consecutive ones)."""
    num_res_blocks: int = 1
    """Residual blocks per resolution on the way down (one more on the way up)."""
    groups: int = 8
    """GroupNorm groups (must divide every channel count)."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or not all(1 <= s <= 4096 for s in self.image_shape):
            raise ValueError(f"image_shape must be [C, H, W] with sizes in [1, 4096], got {self.image_shape}")
        if not 1 <= self.channels <= 4096 or not self.channel_mult or not all(1 <= m <= 64 for m in self.channel_mult):
            raise ValueError("need 1 <= channels <= 4096 and channel_mult a non-empty list of values in [1, 64]")
        if not 1 <= self.num_res_blocks <= 16 or not 1 <= self.groups <= 4096 or not 0 <= self.dropout < 1:
            raise ValueError("need 1 <= num_res_blocks <= 16, 1 <= groups <= 4096 and 0 <= dropout < 1")
        if any((self.channels * m) % self.groups for m in self.channel_mult):
            raise ValueError(f"groups={self.groups} must divide every channel count "
                             f"{self.channels} x {self.channel_mult}")
        size = min(self.image_shape[1:])
        if size < 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"images of {size} pixels cannot be halved {len(self.channel_mult) - 1} times")

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal code of (B,) positions (integer steps or real values) -> (B, dim):
    [sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W emb;  out = skip(x) + conv(dropout(SiLU(GN(h)))).

    Shapes: x (B, C_in, H, W), emb (B, emb_dim) -> (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(t_emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class UNetMixin:
    """Adds the U-Net's layers to an ``nn.Module`` (:meth:`build_unet`) and runs them (:meth:`unet`)."""

    def build_unet(self, in_channels: int, channels: int, channel_mult: list[int], num_res_blocks: int,
                   groups: int, dropout: float, emb_dim: int) -> None:
        """Create the layers; ``emb_dim`` is the width of the embedding every residual block receives."""
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in channel_mult]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, ch = [channels], channels
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, w, emb_dim, groups, dropout))
                ch = w
                skips.append(ch)
            self.down.append(blocks)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, groups, dropout) for _ in range(2)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), w, emb_dim, groups, dropout))
                ch = w
            self.up.append(blocks)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def unet(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), emb (B, emb_dim) -> (B, C, H, W)."""
        h = self.conv_in(x)
        hs = [h]
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if i < len(self.upsample):
                size = hs[-1].shape[-2:]  # 7 -> 14 -> 28: upsample to the skip's size (odd sizes round up)
                h = self.upsample[i](F.interpolate(h, size=size, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
