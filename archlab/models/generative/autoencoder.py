"""Plain autoencoder (MLP): a deterministic code and a Bernoulli (cross-entropy) reconstruction.

    z = enc(x),  x_hat = sigmoid(dec(z)),  loss(x) = -sum_i [x_i log x_hat_i + (1 - x_i) log(1 - x_hat_i)]

(Hinton & Salakhutdinov 2006 train deep autoencoders of this shape, 784-1000-500-250-30 on MNIST with a
cross-entropy reconstruction error.) The loss is in nats per image, comparable with a VAE's
reconstruction term; without a prior on z there is nothing to sample, but its code space can still be
interpolated.

Shapes: ``forward(x)``: x (B, 1, 28, 28) or (B, 784) in [0, 1] -> (logits (B, 784), z (B, latent));
``decode_images(z)`` (n, latent) -> (n, *image_shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ...registry import register
from ..base import ArchModel
from .vae import _ACTIVATIONS, bernoulli_log_likelihood, mlp


@dataclass
class AutoencoderConfig:
    input_dim: int = 784
    """Pixels per image (flattened)."""
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); its product must be ``input_dim``."""
    hidden: list[int] = field(default_factory=lambda: [1000, 500, 250])
    """Hidden layer widths of the encoder (the decoder mirrors them)."""
    latent_dim: int = 30
    """Dimension of the code z."""
    activation: str = "relu"
    """Hidden activation: tanh, relu or softplus."""

    def __post_init__(self) -> None:
        if not 1 <= self.input_dim <= 10**6 or not 1 <= self.latent_dim <= 65536:
            raise ValueError("need 1 <= input_dim <= 1e6 and 1 <= latent_dim <= 65536")
        if not self.hidden or not all(1 <= h <= 65536 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty list of widths in [1, 65536], got {self.hidden}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if math.prod(self.image_shape) != self.input_dim:
            raise ValueError(f"image_shape {self.image_shape} does not hold input_dim={self.input_dim} pixels")


@register("autoencoder", family="generative")
class Autoencoder(ArchModel):
    """MLP autoencoder with a cross-entropy reconstruction error."""

    config_class = AutoencoderConfig
    can_sample: ClassVar[bool] = False

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = mlp([c.input_dim, *c.hidden, c.latent_dim], c.activation)
        self.decoder = mlp([c.latent_dim, *reversed(c.hidden), c.input_dim], c.activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x.flatten(1))
        return self.decoder(z), z

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example terms (B,) in nats: ``loss`` = ``rec`` = -log p(x | x_hat)."""
        rec = -bernoulli_log_likelihood(self(x)[0], x.flatten(1))
        return {"loss": rec, "rec": rec}

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).sigmoid().view(len(z), *self.config.image_shape)

    @classmethod
    def example_input(cls, config: AutoencoderConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.rand(batch_size, *config.image_shape)
