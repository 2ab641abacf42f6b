"""Denoising diffusion probabilistic model (Ho et al. 2020): a small U-Net that predicts the noise
eps added to an image at step t, with DDPM (ancestral) and DDIM (Song et al. 2021) sampling.

Training (Ho et al. Algorithm 1, the "simple" loss of their eq. 14):

    x_0 ~ data in [-1, 1],  t ~ U{0 .. T-1},  eps ~ N(0, I)
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps               (schedule.add_noise)
    loss = || eps - eps_theta(x_t, t) ||^2                        (mean over pixels)

Sampling walks the schedule backwards from x_T ~ N(0, I) (``schedule.ddpm_step`` / ``ddim_step``,
see :mod:`archlab.models.generative.schedule`).

The U-Net (:mod:`archlab.nn.unet`, shared with the score model) follows Ho et al.'s (Appendix B; a
PixelCNN++-like backbone) at MNIST size: per resolution ``num_res_blocks`` residual blocks (GroupNorm,
SiLU, 3x3 convolutions, the time embedding added after the first convolution), a strided 3x3 convolution
down and nearest upsampling + 3x3 convolution up, skip connections concatenated on the way up; 28 -> 14 -> 7
with ``channel_mult = [1, 2, 2]``, no self-attention.
The time embedding is the transformer's sinusoidal code of t followed by a two-layer MLP.

Shapes: ``forward(x, t)``: x (B, C, H, W), t (B,) integer steps -> eps (B, C, H, W);
``sample(n, steps, eta)`` -> (n, C, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.unet import UNetConfig, UNetMixin, timestep_embedding
from ...registry import register
from ..base import ArchModel
from .schedule import NoiseScheduleConfig


@dataclass
class DDPMConfig(UNetConfig, NoiseScheduleConfig):
    """The U-Net's settings (:class:`~archlab.nn.unet.UNetConfig`) and the noise schedule's
    (:class:`~.schedule.NoiseScheduleConfig`: num_steps, schedule, beta_start, beta_end, clip_sample)."""

    def __post_init__(self) -> None:
        UNetConfig.__post_init__(self)
        NoiseScheduleConfig.__post_init__(self)


@register("ddpm", family="generative")
class DDPM(UNetMixin, ArchModel):
    """Small U-Net noise predictor eps_theta(x_t, t) with its noise schedule and samplers."""

    config_class = DDPMConfig
    can_sample: ClassVar[bool] = True

    def __init__(self, config: DDPMConfig) -> None:
        super().__init__(config)
        c = config
        self.schedule = c.noise_schedule()
        t_dim = 4 * c.channels
        self.time_mlp = nn.Sequential(nn.Linear(c.channels, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.build_unet(c.image_shape[0], c.channels, c.channel_mult, c.num_res_blocks, c.groups, c.dropout, t_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x_t, t); ``cond`` (B, 4 channels), e.g. a class embedding, is added to the time embedding."""
        emb = self.time_mlp(timestep_embedding(t, self.config.channels))
        if cond is not None:
            emb = emb + cond
        return self.unet(x, emb)

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
