"""CycleGAN (Zhu, Park, Isola & Efros 2017): unpaired translation between two image domains A and B with
two generators G: A -> B, F: B -> A and two discriminators D_B (is it a real B?), D_A (a real A?).

Generator (their Appendix 7.2, ResNet generator of Johnson et al. 2016, shrunk to 28 px): c7s1-w, d2w, d4w,
``res_blocks`` x R4w, u2w, uw, c7s1-C, tanh (with ``downsample`` = 2, the paper's; 1 keeps a 14x14 bottleneck:
c7s1-w, d2w, R2w, uw, c7s1-C):

    reflect-pad 3, conv7x7 -> IN -> ReLU                       (B, w, 28, 28)
    downsample x (conv3x3 /2 -> IN -> ReLU)                    (B, 2^k w, 28 / 2^k, 28 / 2^k)
    residual blocks: x + IN(conv3(ReLU(IN(conv3(x)))))         reflection padding
    downsample x (convT3x3 x2 -> IN -> ReLU)                   (B, w, 28, 28)
    reflect-pad 3, conv7x7 -> tanh                             (B, C, 28, 28) in [-1, 1]

Discriminator: a PatchGAN (their 70x70 one cut to two strided layers for 28 px: an 18x18 receptive field):
C_w (no norm), C_2w, then a 3x3 convolution to one logit per patch; Ck = conv4x4 /2 -> IN -> LeakyReLU(0.2).
IN is instance norm without affine parameters, as their code.

The losses (adversarial, cycle consistency |F(G(a)) - a|_1 + |G(F(b)) - b|_1, identity) are the
``cycle_gan`` loop's.

Shapes: ``generator_ab(a)`` / ``generator_ba(b)`` (B, C, H, W) -> (B, C, H, W); ``discriminator_a(x)`` /
``discriminator_b(x)`` (B, C, H, W) -> (B, 1, H/4, W/4) patch logits; ``forward(a, b)`` ->
(patch logits of D_B(G(a)) and D_A(F(b)) side by side (B, 2, H/4, W/4), G(a), F(b)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...registry import register
from ..base import ArchModel


@dataclass
class CycleGANConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W) of both domains; H and W divisible by 4."""
    width: int = 16
    """Generator channels at full resolution (4w in the residual blocks)."""
    res_blocks: int = 3
    """Residual blocks at the bottleneck (the paper uses 6 at 128 px and 9 at 256 px)."""
    downsample: int = 2
    """Stride-2 convolutions before the residual blocks (and transposed ones after): 2 as the paper, or 0 / 1."""
    d_width: int = 16
    """Discriminator channels of its first layer."""

    def __post_init__(self) -> None:
        c, h, w = (self.image_shape + [0, 0, 0])[:3]
        if len(self.image_shape) != 3 or not 1 <= c <= 64 or h % 4 or w % 4 or not 8 <= h <= 4096 or not 8 <= w <= 4096:
            raise ValueError(f"image_shape must be [C, H, W] with H, W >= 8 multiples of 4, got {self.image_shape}")
        if not 1 <= self.width <= 1024 or not 1 <= self.d_width <= 1024 or not 0 <= self.res_blocks <= 64:
            raise ValueError("need 1 <= width, d_width <= 1024 and 0 <= res_blocks <= 64")
        if self.downsample not in (0, 1, 2):
            raise ValueError(f"downsample must be 0, 1 or 2, got {self.downsample}")


class ResidualBlock(nn.Module):
    """x + IN(conv3(ReLU(IN(conv3(x))))) with reflection padding; (B, C, H, W) -> same."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(),
                                  nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def resnet_generator(c: CycleGANConfig) -> nn.Sequential:
    ch, w = c.image_shape[0], c.width
    down: list[nn.Module] = []
    up: list[nn.Module] = []
    for k in range(c.downsample):
        a, b = w * 2 ** k, w * 2 ** (k + 1)
        down += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.InstanceNorm2d(b), nn.ReLU()]
        up = [nn.ConvTranspose2d(b, a, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(a), nn.ReLU()] + up
    return nn.Sequential(
        nn.ReflectionPad2d(3), nn.Conv2d(ch, w, 7), nn.InstanceNorm2d(w), nn.ReLU(),
        *down, *[ResidualBlock(w * 2 ** c.downsample) for _ in range(c.res_blocks)], *up,
        nn.ReflectionPad2d(3), nn.Conv2d(w, ch, 7), nn.Tanh(),
    )


def patch_discriminator(c: CycleGANConfig) -> nn.Sequential:
    ch, w = c.image_shape[0], c.d_width
    return nn.Sequential(
        nn.Conv2d(ch, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * w), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * w, 1, 3, padding=1),
    )


@register("cyclegan", family="generative")
class CycleGAN(ArchModel):
    """Two ResNet generators (A -> B, B -> A) and two PatchGAN discriminators; trained by ``cycle_gan``."""

    config_class = CycleGANConfig

    def __init__(self, config: CycleGANConfig) -> None:
        super().__init__(config)
        self.generator_ab = resnet_generator(config)
        self.generator_ba = resnet_generator(config)
        self.discriminator_a = patch_discriminator(config)
        self.discriminator_b = patch_discriminator(config)
        for m in self.modules():  # Zhu et al.'s code: weights from N(0, 0.02)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fake_b, fake_a = self.generator_ab(a), self.generator_ba(b)
        return torch.cat([self.discriminator_b(fake_b), self.discriminator_a(fake_a)], dim=1), fake_b, fake_a

    @torch.no_grad()
    def translate(self, x: torch.Tensor, direction: str = "ab") -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) translated A -> B (``"ab"``) or B -> A (``"ba"``), in [0, 1]."""
        net = {"ab": self.generator_ab, "ba": self.generator_ba}[direction]
        return ((net(x * 2 - 1) + 1) / 2).clamp(0, 1)

    @classmethod
    def example_input(cls, config: CycleGANConfig, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, *config.image_shape), torch.randn(batch_size, *config.image_shape)
