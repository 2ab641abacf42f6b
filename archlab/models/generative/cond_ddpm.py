"""Class-conditional DDPM with classifier-free guidance (Ho & Salimans 2021, "Classifier-Free Diffusion
Guidance"): the U-Net of :mod:`.ddpm` with a learned class embedding added to its time embedding, one of
whose K + 1 rows is the "null" label.

Training (their Algorithm 1): the simple loss of Ho et al. 2020 on (x_0, c), where the label is replaced
by the null label with probability ``cond_drop`` (p_uncond), so one network learns both eps(z, c) and eps(z):

    c' = null  with probability p_uncond, else c;      loss = || eps - eps_theta(x_t, t, c') ||^2

Sampling (their eq. 6 / Algorithm 2) mixes the two predictions with guidance weight w:

    eps~ = (1 + w) eps_theta(x_t, t, c) - w eps_theta(x_t, t, null)

w = 0 is the plain conditional model; larger w trades diversity for samples that look more like their class.
The mixed eps~ drives the same DDPM / DDIM steps as the unconditional model (``schedule.ddpm_step``,
``ddim_step``); both predictions come from one forward pass over the doubled batch.

Shapes: ``forward(x, t, labels)``: x (B, C, H, W), t (B,), labels (B,) in 0..K (K = null; None: null)
-> eps (B, C, H, W); ``sample(n, labels=y, guidance=w)`` -> (n, C, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import register
from .ddpm import DDPM, DDPMConfig


@dataclass
class ConditionalDDPMConfig(DDPMConfig):
    n_classes: int = 10
    """K, the classes (label K is the null label of unconditional predictions)."""
    cond_drop: float = 0.1
    """p_uncond: probability that a training label is replaced by the null label (0.1-0.2 in the paper)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.n_classes <= 100_000 or not 0 <= self.cond_drop <= 1:
            raise ValueError("need 1 <= n_classes <= 100000 and 0 <= cond_drop <= 1")


@register("cond_ddpm", family="generative")
class ConditionalDDPM(DDPM):
    """DDPM U-Net conditioned on a class label, trained with label dropout; classifier-free guided sampling."""

    config_class = ConditionalDDPMConfig

    def __init__(self, config: ConditionalDDPMConfig) -> None:
        super().__init__(config)
        self.class_emb = nn.Embedding(config.n_classes + 1, 4 * config.channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.full((len(x),), self.config.n_classes, dtype=torch.long, device=x.device)
        return super().forward(x, t, self.class_emb(labels))

    def default_labels(self, n: int) -> torch.Tensor:
        """0, 1, ..., K-1, 0, 1, ...: n labels covering the classes evenly."""
        return torch.arange(n) % self.config.n_classes

    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None,
             labels: torch.Tensor | None = None) -> torch.Tensor:
        """The simple loss on a batch x0 (B, C, H, W) in [-1, 1] with labels (B,), each dropped to the null
        label with probability ``cond_drop`` (t, eps and the drops come from ``generator``)."""
        b, c = len(x0), self.config
        t = torch.randint(c.num_steps, (b,), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        drop = (torch.rand(b, generator=generator) < c.cond_drop).to(x0.device)
        labels = torch.full((b,), c.n_classes, device=x0.device) if labels is None else labels.to(x0.device)
        labels = torch.where(drop, torch.full_like(labels, c.n_classes), labels)
        return F.mse_loss(self(self.schedule.to(x0.device).add_noise(x0, eps, t), t, labels).float(), eps)

    def guided_eps(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, guidance: float) -> torch.Tensor:
        """(1 + w) eps(x, t, c) - w eps(x, t, null), both from one forward pass over the doubled batch."""
        if guidance == 0:
            return self(x, t, labels).float()
        null = torch.full_like(labels, self.config.n_classes)
        cond, uncond = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).float().chunk(2)
        return (1 + guidance) * cond - guidance * uncond

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, steps: int | None = 50,
               sampler: Literal["ddim", "ddpm"] = "ddim", eta: float = 0.0, batch: int = 500,
               labels: torch.Tensor | None = None, guidance: float = 0.0) -> torch.Tensor:
        """``n`` images in [0, 1] of classes ``labels`` (n,) (default: every class in turn) with guidance
        weight ``guidance``; the samplers of :meth:`DDPM.sample`."""
        device = next(self.parameters()).device
        s = self.schedule.to(device)
        labels = (self.default_labels(n) if labels is None else labels).to(device)
        out = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            y = labels[start:start + m]
            x = torch.randn(m, *self.config.image_shape, generator=generator).to(device)
            for t in s.timesteps(steps):
                eps = self.guided_eps(x, torch.full((m,), t, device=device, dtype=torch.long), y, guidance)
                noise = torch.randn(x.shape, generator=generator).to(device) if (sampler == "ddpm" or eta > 0) else None
                if sampler == "ddpm":
                    x = s.ddpm_step(eps, t, x, noise, steps)
                else:
                    x = s.ddim_step(eps, t, x, steps or s.num_steps, eta, noise)
            out.append(((x + 1) / 2).clamp(0, 1))
        return torch.cat(out)
