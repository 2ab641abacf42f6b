"""DCGAN (Radford, Metz & Chintala 2016): a transposed-convolution generator and a strided-convolution
discriminator, at MNIST size (28 = 7 x 2 x 2).

    G: z (B, latent) -> Linear -> (4w, 7, 7) -> BN, ReLU -> ConvT 4x4 /2 -> (2w, 14, 14) -> BN, ReLU
                     -> ConvT 4x4 /2 -> (C, 28, 28) -> tanh                        images in [-1, 1]
    D: x (B, C, 28, 28) -> Conv 4x4 /2 -> (w, 14, 14) -> LeakyReLU(0.2) -> Conv 4x4 /2 -> (2w, 7, 7)
                        -> norm, LeakyReLU(0.2) -> Linear -> (B,) logit / critic value

The paper's guidelines are kept: no pooling (strided convolutions), batch norm in the generator, ReLU
in G and LeakyReLU(0.2) in D, tanh output; their weight init N(0, 0.02). ``critic_norm`` chooses the
discriminator's normalisation: ``batch`` (DCGAN) or ``layer`` / ``none``, which the WGAN-GP penalty needs
(Gulrajani et al. 2017, Sec. 4: batch norm makes the critic's gradient depend on the whole batch).

Shapes: ``forward(z)``: (B, latent) -> (D(G(z)) (B,), G(z) (B, C, H, W)); ``critic(x)`` (B, C, H, W) -> (B,);
``sample(n)`` -> (n, C, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from ...registry import register
from ..base import ArchModel


@dataclass
class DCGANConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); H and W must be divisible by 4."""
    latent_dim: int = 100
    """Dimension of the generator's Gaussian noise z."""
    width: int = 32
    """Channels of the discriminator's first layer (the generator mirrors: 4w, 2w)."""
    critic_norm: Literal["batch", "layer", "none"] = "batch"
    """Normalisation in the discriminator: batch (DCGAN), layer or none (WGAN-GP)."""

    def __post_init__(self) -> None:
        c, h, w = (self.image_shape + [0, 0, 0])[:3]
        if len(self.image_shape) != 3 or not 1 <= c <= 64 or h % 4 or w % 4 or not 4 <= h <= 4096 or not 4 <= w <= 4096:
            raise ValueError(f"image_shape must be [C, H, W] with H, W multiples of 4, got {self.image_shape}")
        if not 1 <= self.latent_dim <= 65536 or not 1 <= self.width <= 4096:
            raise ValueError("need 1 <= latent_dim <= 65536 and 1 <= width <= 4096")
        if self.critic_norm not in ("batch", "layer", "none"):
            raise ValueError(f"critic_norm must be batch, layer or none, got {self.critic_norm!r}")


def _critic_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(1, channels) if kind == "layer" else nn.Identity()


@register("dcgan", family="generative")
class DCGAN(ArchModel):
    """Convolutional GAN for small images; trained by the ``image_gan`` loop (non-saturating or WGAN-GP loss)."""

    config_class = DCGANConfig
    can_sample: ClassVar[bool] = True

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__(config)
        c, w = config, config.width
        ch, h, wd = c.image_shape
        self.base = (4 * w, h // 4, wd // 4)
        self.generator = nn.Sequential(
            nn.Linear(c.latent_dim, 4 * w * (h // 4) * (wd // 4)),
            nn.Unflatten(1, self.base),
            nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, ch, 4, stride=2, padding=1), nn.Tanh(),
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(ch, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), _critic_norm(c.critic_norm, 2 * w), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * w * (h // 4) * (wd // 4), 1),
        )
        for m in self.modules():  # Radford et al. Sec. 4: all weights from N(0, 0.02)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fake = self.generator(z)
        return self.critic(fake), fake

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B,) logits (or critic values)."""
        return self.discriminator(x).squeeze(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images in [0, 1] (n, C, H, W)."""
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(next(self.parameters()).device)
        return ((self.generator(z) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] of latent codes (n, latent) -> (n, C, H, W)."""
        return ((self.generator(z) + 1) / 2).clamp(0, 1)

    @classmethod
    def example_input(cls, config: DCGANConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.latent_dim)
