"""Adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey 2016, "Adversarial Autoencoders",
Sec. 2): an autoencoder whose code distribution q(z) is matched to a prior p(z) by a GAN played *in the
latent space*.

    reconstruction:  min_{Q,G}  -log p(x | G(Q(x)))                          (Bernoulli, nats per image)
    discriminator:   min_D  -log D(z~) - log(1 - D(Q(x))),   z~ ~ p(z) = N(0, I)
    generator:       min_Q  -log D(Q(x))                      (the non-saturating form; Q is the generator)

D is a small MLP on codes. The encoder and decoder are :func:`.conv_autoencoder.conv_encoder` /
``conv_decoder``. The ``adversarial_ae`` loop updates D with ``discriminator_terms`` (its own
optimizer, ``[optim.discriminator]``), then the autoencoder with ``terms``: ``rec + adv_weight * adv``,
``adv`` = -log D(Q(x)). ``parts()`` names the modules each optimizer owns.

Shapes: x (B, C, H, W) in [0, 1] -> z (B, latent); D: (B, latent) -> logits (B,);
``sample(n)`` -> (n, C, H, W) Bernoulli means of G(z~).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import register
from .conv_autoencoder import ConvAutoencoder, check_image_shape


@dataclass
class AAEConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); H and W divisible by 4."""
    channels: int = 32
    """Channels of the first convolution (the second has twice as many)."""
    latent_dim: int = 8
    """Dimension of z."""
    disc_hidden: int = 256
    """Width of the discriminator's two hidden layers."""
    adv_weight: float = 1.0
    """Weight of the generator (adversarial) term in the autoencoder's loss."""

    def __post_init__(self) -> None:
        check_image_shape(self.image_shape)
        if not 1 <= self.channels <= 4096 or not 1 <= self.latent_dim <= 65536 or not 1 <= self.disc_hidden <= 65536:
            raise ValueError("need 1 <= channels <= 4096, 1 <= latent_dim <= 65536 and 1 <= disc_hidden <= 65536")
        if not 0 <= self.adv_weight <= 1e4:
            raise ValueError(f"adv_weight must be in [0, 1e4], got {self.adv_weight}")


@register("aae", family="generative")
class AAE(ConvAutoencoder):
    """Adversarial autoencoder with a Gaussian prior and an MLP code discriminator."""

    config_class = AAEConfig
    can_sample: ClassVar[bool] = True

    def __init__(self, config: AAEConfig) -> None:
        super().__init__(config)  # the conv autoencoder's encoder and decoder
        c = config
        self.discriminator = nn.Sequential(nn.Linear(c.latent_dim, c.disc_hidden), nn.LeakyReLU(0.2),
                                           nn.Linear(c.disc_hidden, c.disc_hidden), nn.LeakyReLU(0.2),
                                           nn.Linear(c.disc_hidden, 1))

    def parts(self) -> dict[str, nn.Module]:
        """The modules of each optimizer: ``model`` (encoder + decoder) and ``discriminator``."""
        return {"model": nn.ModuleList([self.encoder, self.decoder]), "discriminator": self.discriminator}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction logits (B, C, H, W), the code z = Q(x) (B, d), and the discriminator's logit on it (B, 1)."""
        z = self.encoder(x.view(len(x), *self.config.image_shape))
        return self.decoder(z), z, self.discriminator(z)

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image terms (B,): ``rec`` (nats), ``adv`` = -log D(Q(x)), ``loss`` = rec + adv_weight adv."""
        x = x.view(len(x), *self.config.image_shape)
        logits, _, d = self(x)
        rec = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)
        adv = F.softplus(-d.squeeze(1).float())                                               # -log sigmoid(D)
        return {"loss": rec + self.config.adv_weight * adv, "rec": rec, "adv": adv}

    def discriminator_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The discriminator's loss per image (B,): -log D(z~) - log(1 - D(Q(x))), codes detached."""
        with torch.no_grad():
            z = self.encoder(x.view(len(x), *self.config.image_shape))
        z_prior = torch.randn(z.shape, generator=generator).to(z.device)
        real, fake = self.discriminator(z_prior).squeeze(1).float(), self.discriminator(z).squeeze(1).float()
        return F.softplus(-real) + F.softplus(fake)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images of Bernoulli means (n, C, H, W), z ~ N(0, I)."""
        z = torch.randn(n, self.config.latent_dim, generator=generator)
        return self.decode_images(z.to(next(self.parameters()).device))
