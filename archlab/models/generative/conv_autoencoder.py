"""Convolutional autoencoder: two stride-2 convolutions and a linear layer to a code z, mirrored by a
linear layer and two transposed convolutions back to Bernoulli logits.

    z = enc(x) = W_z flatten(ReLU(conv_2(ReLU(conv_1(x)))))        28 -> 14 -> 7, then (latent,)
    x_hat = sigmoid(dec(z)),  loss(x) = -sum_i [x_i log x_hat_i + (1 - x_i) log(1 - x_hat_i)]   nats / image

The reconstruction error per image is the curve the run's ``plots/loss.png`` draws (training and
validation). :func:`conv_encoder` / :func:`conv_decoder` are the same networks for the other
deterministic-code models of the family (WAE, adversarial autoencoder).

Shapes: x (B, C, H, W) in [0, 1], H and W divisible by 4 -> logits (B, C, H, W), z (B, latent);
``decode_images(z)`` (n, latent) -> (n, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import register
from ..base import ArchModel


def conv_encoder(image_shape: list[int], channels: int, out_dim: int) -> nn.Sequential:
    """(B, C, H, W) -> (B, out_dim): conv 4x4/2 to ``channels``, conv 4x4/2 to 2 ``channels``, linear."""
    c, h, w = image_shape
    return nn.Sequential(nn.Conv2d(c, channels, 4, 2, 1), nn.ReLU(), nn.Conv2d(channels, 2 * channels, 4, 2, 1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(2 * channels * (h // 4) * (w // 4), out_dim))


def conv_decoder(image_shape: list[int], channels: int, latent_dim: int) -> nn.Sequential:
    """(B, latent) -> logits (B, C, H, W): linear, transposed conv 4x4/2 to ``channels``, to C."""
    c, h, w = image_shape
    return nn.Sequential(nn.Linear(latent_dim, 2 * channels * (h // 4) * (w // 4)), nn.ReLU(),
                         nn.Unflatten(1, (2 * channels, h // 4, w // 4)),
                         nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1), nn.ReLU(),
                         nn.ConvTranspose2d(channels, c, 4, 2, 1))


def check_image_shape(image_shape: list[int]) -> None:
    """ValueError unless ``image_shape`` is [C, H, W] with H and W divisible by 4."""
    if len(image_shape) != 3 or not all(1 <= s <= 4096 for s in image_shape) or any(s % 4 for s in image_shape[1:]):
        raise ValueError(f"image_shape must be [C, H, W] with H and W divisible by 4, got {image_shape}")


@dataclass
class ConvAutoencoderConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); H and W divisible by 4."""
    channels: int = 32
    """Channels of the first convolution (the second has twice as many)."""
    latent_dim: int = 16
    """Dimension of the code z."""

    def __post_init__(self) -> None:
        check_image_shape(self.image_shape)
        if not 1 <= self.channels <= 4096 or not 1 <= self.latent_dim <= 65536:
            raise ValueError("need 1 <= channels <= 4096 and 1 <= latent_dim <= 65536")


@register("conv_autoencoder", family="generative")
class ConvAutoencoder(ArchModel):
    """Convolutional autoencoder with a cross-entropy reconstruction error."""

    config_class = ConvAutoencoderConfig
    can_sample: ClassVar[bool] = False

    def __init__(self, config: ConvAutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = conv_encoder(c.image_shape, c.channels, c.latent_dim)
        self.decoder = conv_decoder(c.image_shape, c.channels, c.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x.view(len(x), *self.config.image_shape))
        return self.decoder(z), z

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image terms (B,) in nats: ``loss`` = ``rec`` = -log p(x | x_hat)."""
        x = x.view(len(x), *self.config.image_shape)
        rec = F.binary_cross_entropy_with_logits(self(x)[0].float(), x.float(), reduction="none").flatten(1).sum(1)
        return {"loss": rec, "rec": rec}

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.view(len(x), *self.config.image_shape))

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).sigmoid()

    @classmethod
    def example_input(cls, config: ConvAutoencoderConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.rand(batch_size, *config.image_shape)
