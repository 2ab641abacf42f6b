"""Ring of Gaussians: the 2-D toy distribution GAN papers use to show mode collapse.

Eight Gaussians with standard deviation ``std`` centred on a circle of radius ``radius`` (Metz et al.
2017, "Unrolled Generative Adversarial Networks", Sec. 3.1: radius 2, std 0.02). Generated from a
seed, nothing is downloaded. ``x`` float32 (N, 2); ``y`` the mode each point was drawn from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .registry import Split, register_dataset


@dataclass(frozen=True)
class RingConfig:
    modes: int = 8
    """Gaussians on the circle."""
    radius: float = 2.0
    std: float = 0.02
    train_size: int = 20_000
    test_size: int = 2_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.modes <= 1000 or not 0 < self.radius <= 1e3 or not 0 < self.std <= 1e3:
            raise ValueError("need 1 <= modes <= 1000, 0 < radius <= 1000 and 0 < std <= 1000")
        if not 1 <= self.train_size <= 10**7 or not 1 <= self.test_size <= 10**7:
            raise ValueError("train_size and test_size must be in [1, 1e7]")


def ring_centres(cfg: RingConfig) -> torch.Tensor:
    """(modes, 2) centres, mode k at angle 2 pi k / modes."""
    angle = torch.arange(cfg.modes, dtype=torch.float64) * (2 * math.pi / cfg.modes)
    return (cfg.radius * torch.stack([angle.cos(), angle.sin()], dim=1)).float()


@register_dataset("ring", RingConfig, num_classes=8)
def load_ring(cfg: RingConfig) -> tuple[Split, Split]:
    """Points of a ring of Gaussians (x: (N, 2), y: mode index)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    centres = ring_centres(cfg)

    def draw(n: int) -> Split:
        y = torch.randint(cfg.modes, (n,), generator=gen)
        return Split(centres[y] + cfg.std * torch.randn(n, 2, generator=gen), y)

    return draw(cfg.train_size), draw(cfg.test_size)
