"""A small GAN on 2-D points (Goodfellow et al. 2014): an MLP generator and an MLP discriminator.

It exists to show how a loop with two optimizers plugs into the engine (``train.loop = "gan"``,
``[optim.generator]`` and ``[optim.discriminator]``); the sizes follow the 2-D experiments of Metz et
al. 2017 (two hidden layers of 128 units, ReLU).

    x_fake = G(z),  z ~ N(0, I_latent)               generator:     (B, latent_dim) -> (B, data_dim)
    D(x) = logit that x is real                       discriminator: (B, data_dim) -> (B,)

Shapes: ``forward(z)``: (B, latent_dim) -> (D(G(z)) logits (B,), G(z) samples (B, data_dim)), one pass
through both networks; ``sample(n)`` -> (n, data_dim); ``critic(x)`` (B, data_dim) -> (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...registry import register
from ..base import ArchModel


def _mlp(inp: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    dims = [inp] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        blocks += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(dims[-1], out))


@dataclass
class ToyGANConfig:
    data_dim: int = 2
    """Dimension of the data points."""
    latent_dim: int = 16
    """Dimension of the generator's Gaussian noise."""
    hidden: int = 128
    """Units per hidden layer (both networks)."""
    layers: int = 2
    """Hidden layers per network."""

    def __post_init__(self) -> None:
        for key in ("data_dim", "latent_dim", "hidden", "layers"):
            if not 1 <= getattr(self, key) <= 65536:
                raise ValueError(f"{key} must be in [1, 65536], got {getattr(self, key)}")


@register("toy_gan", family="generative")
class ToyGAN(ArchModel):
    """A GAN of two MLPs on low-dimensional points (the engine's worked two-optimizer example)."""

    config_class = ToyGANConfig

    def __init__(self, config: ToyGANConfig) -> None:
        super().__init__(config)
        c = config
        self.generator = _mlp(c.latent_dim, c.hidden, c.data_dim, c.layers)
        self.discriminator = _mlp(c.data_dim, c.hidden, 1, c.layers)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fake = self.generator(z)
        return self.critic(fake), fake

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` generated points (n, data_dim)."""
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(next(self.parameters()).device)
        return self.generator(z)

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """(B, data_dim) -> (B,) logits that the points are real."""
        return self.discriminator(x).squeeze(-1)

    @classmethod
    def example_input(cls, config: ToyGANConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.latent_dim)
