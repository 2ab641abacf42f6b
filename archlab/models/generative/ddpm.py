"""Denoising diffusion probabilistic model (Ho et al. 2020): a small U-Net that predicts the noise
eps added to an image at step t, with DDPM (ancestral) and DDIM (Song et al. 2021) sampling.

Training (Ho et al. Algorithm 1, the "simple" loss of their eq. 14):

    x_0 ~ data in [-1, 1],  t ~ U{0 .. T-1},  eps ~ N(0, I)
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps               (schedule.add_noise)
    loss = || eps - eps_theta(x_t, t) ||^2                        (mean over pixels)

Sampling walks the schedule backwards from x_T ~ N(0, I) (``schedule.ddpm_step`` / ``ddim_step``,
see :mod:`archlab.models.generative.schedule`).

The U-Net follows Ho et al.'s (Appendix B; a PixelCNN++-like backbone) at MNIST size: per resolution
``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 convolutions, the time embedding added after
the first convolution), a strided 3x3 convolution down and nearest upsampling + 3x3 convolution up,
skip connections concatenated on the way up; 28 -> 14 -> 7 with ``channel_mult = [1, 2, 2]``. It has
no self-attention layers (Ho et al. put one at 16x16; at 28x28 MNIST the convolutions suffice).
The time embedding is the transformer's sinusoidal code of t followed by a two-layer MLP.

Shapes: ``forward(x, t)``: x (B, C, H, W), t (B,) integer steps -> eps (B, C, H, W);
``sample(n, steps, eta)`` -> (n, C, H, W) in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import register
from ..base import ArchModel
from .schedule import NoiseSchedule


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal code of (B,) steps -> (B, dim): [sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W t_emb;  out = skip(x) + conv(dropout(SiLU(GN(h)))).

    Shapes: x (B, C_in, H, W), t_emb (B, t_dim) -> (B, C_out, H, W)."""

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


@dataclass
class DDPMConfig:
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
    num_steps: int = 1000
    """T, the diffusion steps of training."""
    schedule: Literal["linear", "cosine"] = "linear"
    """Noise schedule: Ho et al.'s linear betas or Nichol & Dhariwal's cosine."""
    beta_start: float = 1e-4
    beta_end: float = 0.02
    clip_sample: bool = True
    """Clip the predicted x_0 to [-1, 1] in every sampler step."""

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
        NoiseSchedule(self.num_steps, self.schedule, self.beta_start, self.beta_end)  # validates the schedule


@register("ddpm", family="generative")
class DDPM(ArchModel):
    """Small U-Net noise predictor eps_theta(x_t, t) with its noise schedule and samplers."""

    config_class = DDPMConfig
    can_sample: ClassVar[bool] = True

    def __init__(self, config: DDPMConfig) -> None:
        super().__init__(config)
        c = config
        self.schedule = NoiseSchedule(c.num_steps, c.schedule, c.beta_start, c.beta_end, c.clip_sample)
        t_dim = 4 * c.channels
        self.time_mlp = nn.Sequential(nn.Linear(c.channels, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.conv_in = nn.Conv2d(c.image_shape[0], c.channels, 3, padding=1)
        widths = [c.channels * m for m in c.channel_mult]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, ch = [c.channels], c.channels
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(ch, w, t_dim, c.groups, c.dropout))
                ch = w
                skips.append(ch)
            self.down.append(blocks)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, t_dim, c.groups, c.dropout) for _ in range(2)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), w, t_dim, c.groups, c.dropout))
                ch = w
            self.up.append(blocks)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(c.groups, ch)
        self.conv_out = nn.Conv2d(ch, c.image_shape[0], 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x_t, t); ``cond`` (B, 4 channels), e.g. a class embedding, is added to the time embedding."""
        emb = self.time_mlp(timestep_embedding(t, self.config.channels))
        if cond is not None:
            emb = emb + cond
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

    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ho et al.'s simple loss for a batch x0 (B, C, H, W) in [-1, 1]: mean of (eps - eps_theta)^2."""
        b = len(x0)
        t = torch.randint(self.config.num_steps, (b,), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        return F.mse_loss(self(self.schedule.to(x0.device).add_noise(x0, eps, t), t).float(), eps)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, steps: int | None = 50,
               sampler: Literal["ddim", "ddpm"] = "ddim", eta: float = 0.0, batch: int = 500) -> torch.Tensor:
        """``n`` images in [0, 1] (n, C, H, W): DDIM with ``steps`` steps and ``eta``, or DDPM ancestral
        sampling over ``steps`` (None: all T) steps; drawn ``batch`` at a time."""
        device = next(self.parameters()).device
        s = self.schedule.to(device)
        out = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            x = torch.randn(m, *self.config.image_shape, generator=generator).to(device)
            for t in s.timesteps(steps):
                eps = self(x, torch.full((m,), t, device=device, dtype=torch.long)).float()
                noise = torch.randn(x.shape, generator=generator).to(device) if (sampler == "ddpm" or eta > 0) else None
                if sampler == "ddpm":
                    x = s.ddpm_step(eps, t, x, noise, steps)
                else:
                    x = s.ddim_step(eps, t, x, steps or s.num_steps, eta, noise)
            out.append(((x + 1) / 2).clamp(0, 1))
        return torch.cat(out)

    @classmethod
    def example_input(cls, config: DDPMConfig, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, *config.image_shape), torch.randint(config.num_steps, (batch_size,))
