"""Conditional GAN (Mirza & Osindero 2014) at DCGAN size: the class label y enters the generator with the
noise and the discriminator judges (image, label) pairs, so G(z, y) learns p(x | y).

    G: [z ; e_G(y)] (B, latent + label_dim) -> Linear -> (4w, H/4, W/4) -> BN, ReLU
       -> ConvT 4x4 /2 -> (2w, H/2, W/2) -> BN, ReLU -> ConvT 4x4 /2 -> (C, H, W) -> tanh
    D: phi(x) = Conv 4x4 /2 -> LeakyReLU -> Conv 4x4 /2 -> norm -> LeakyReLU -> flatten   (B, F)
       D(x, y) = psi(phi(x)) + e_D(y) . phi(x)                                (projection, Miyato & Koyama 2018)

The generator concatenates a learned label embedding e_G(y) with z, as Mirza & Osindero feed the
one-hot y next to z. The discriminator uses the projection form rather than their concatenation: the
label's embedding is an inner product with the image features, which Miyato & Koyama found to give
more class-faithful samples than feeding y as an input. Weights from N(0, 0.02) as in DCGAN.

Shapes: ``generator(z, y)``: (B, latent), (B,) long -> (B, C, H, W) in [-1, 1]; ``critic(x, y)``
(B, C, H, W), (B,) -> (B,); ``sample(n, labels=y)`` -> (n, C, H, W) in [0, 1] (labels default to
0, 1, ..., K-1, 0, 1, ... so every class appears).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from ...registry import register
from ..base import ArchModel


@dataclass
class CGANConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); H and W must be divisible by 4."""
    n_classes: int = 10
    """Number of classes the generator and discriminator are conditioned on."""
    latent_dim: int = 100
    """Dimension of the generator's Gaussian noise z."""
    label_dim: int = 32
    """Dimension of the generator's label embedding (concatenated with z)."""
    width: int = 32
    """Channels of the discriminator's first layer (the generator mirrors: 4w, 2w)."""
    critic_norm: Literal["batch", "layer", "none"] = "batch"
    """Normalisation in the discriminator: batch, layer or none (WGAN-GP needs layer / none)."""

    def __post_init__(self) -> None:
        c, h, w = (self.image_shape + [0, 0, 0])[:3]
        if len(self.image_shape) != 3 or not 1 <= c <= 64 or h % 4 or w % 4 or not 4 <= h <= 4096 or not 4 <= w <= 4096:
            raise ValueError(f"image_shape must be [C, H, W] with H, W multiples of 4, got {self.image_shape}")
        for key in ("n_classes", "latent_dim", "label_dim", "width"):
            if not 1 <= getattr(self, key) <= 65536:
                raise ValueError(f"{key} must be in [1, 65536], got {getattr(self, key)}")
        if self.n_classes < 2:
            raise ValueError("n_classes must be at least 2")
        if self.critic_norm not in ("batch", "layer", "none"):
            raise ValueError(f"critic_norm must be batch, layer or none, got {self.critic_norm!r}")


class ConditionalGenerator(nn.Module):
    """G(z, y): the DCGAN generator on [z ; e(y)]."""

    def __init__(self, c: CGANConfig) -> None:
        super().__init__()
        ch, h, wd, w = *c.image_shape, c.width
        self.embed = nn.Embedding(c.n_classes, c.label_dim)
        self.net = nn.Sequential(
            nn.Linear(c.latent_dim + c.label_dim, 4 * w * (h // 4) * (wd // 4)),
            nn.Unflatten(1, (4 * w, h // 4, wd // 4)),
            nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, ch, 4, stride=2, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(y)], dim=1))


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + e(y) . phi(x)."""

    def __init__(self, c: CGANConfig) -> None:
        super().__init__()
        ch, h, wd, w = *c.image_shape, c.width
        norm = {"batch": nn.BatchNorm2d(2 * w), "layer": nn.GroupNorm(1, 2 * w), "none": nn.Identity()}[c.critic_norm]
        self.features = nn.Sequential(
            nn.Conv2d(ch, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), norm, nn.LeakyReLU(0.2), nn.Flatten(),
        )
        feat = 2 * w * (h // 4) * (wd // 4)
        self.out = nn.Linear(feat, 1)
        self.embed = nn.Embedding(c.n_classes, feat)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.features(x)
        return self.out(phi).squeeze(-1) + (self.embed(y) * phi).sum(dim=1)


@register("cgan", family="generative")
class CGAN(ArchModel):
    """Class-conditional DCGAN (label embedding in G, projection discriminator); trained by ``image_gan``."""

    config_class = CGANConfig
    can_sample: ClassVar[bool] = True

    def __init__(self, config: CGANConfig) -> None:
        super().__init__(config)
        self.generator = ConditionalGenerator(config)
        self.discriminator = ProjectionDiscriminator(config)
        for m in self.modules():  # Radford et al. Sec. 4: all weights from N(0, 0.02)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.default_labels(len(z), z.device) if y is None else y
        fake = self.generator(z, y)
        return self.critic(fake, y), fake

    def critic(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1], (B,) labels -> (B,) logits."""
        return self.discriminator(x, y)

    def default_labels(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """0, 1, ..., K-1, 0, 1, ...: n labels covering the classes evenly."""
        return torch.arange(n, device=device) % self.config.n_classes

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images in [0, 1] (n, C, H, W) of classes ``labels`` (n,) (default: every class in turn)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        y = self.default_labels(n, device) if labels is None else labels.to(device)
        return ((self.generator(z, y) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] of latent codes (n, latent) and labels (n,) (default: class 0) -> (n, C, H, W)."""
        y = torch.zeros(len(z), dtype=torch.long, device=z.device) if labels is None else labels.to(z.device)
        return ((self.generator(z, y) + 1) / 2).clamp(0, 1)

    @classmethod
    def example_input(cls, config: CGANConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.latent_dim)
