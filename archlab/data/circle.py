"""Circle: 2-D points in the square [-1, 1]^2, labelled by whether they fall inside a circle.

The first problem of Pérez-Salinas et al. 2020, "Data re-uploading for a universal quantum classifier"
(Quantum 4, 226), Sec. 6.1: the circle has radius sqrt(2 / pi), so it covers half the square and both classes
are equally likely. Generated from a seed (their Table 1 uses 200 training and 4,000 test points),
nothing is downloaded. ``x`` float32 (N, 2); ``y`` 1 inside the circle, 0 outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .registry import Split, register_dataset


@dataclass(frozen=True)
class CircleConfig:
    train_size: int = 200
    test_size: int = 4000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.train_size <= 10**7 or not 1 <= self.test_size <= 10**7:
            raise ValueError("train_size and test_size must be in [1, 1e7]")


@register_dataset("circle", CircleConfig, num_classes=2)
def load_circle(cfg: CircleConfig) -> tuple[Split, Split]:
    """Uniform points of [-1, 1]^2 (x: (N, 2)), y = 1 inside the circle of radius sqrt(2/pi)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    radius2 = 2 / math.pi

    def draw(n: int) -> Split:
        x = 2 * torch.rand(n, 2, generator=gen) - 1
        return Split(x, (x.square().sum(1) < radius2).long())

    return draw(cfg.train_size), draw(cfg.test_size)
