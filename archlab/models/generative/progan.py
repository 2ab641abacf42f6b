"""Progressive GAN (Karras, Aila, Laine & Lehtinen 2018) growing 7 -> 14 -> 28 px with fade-in.

Generator (their Table 2, shrunk): z -> pixel norm -> EqualLinear -> (C_0, 7, 7) -> LeakyReLU, pixel norm
-> conv3x3 -> LeakyReLU, pixel norm; then per growth stage s = 1, 2: nearest 2x upsampling and two
conv3x3 -> LeakyReLU(0.2) -> pixel norm; each stage has its own 1x1 "toRGB". At stage s with fade-in
weight alpha (their Fig. 2):

    G_s(z) = (1 - alpha) * up2(toRGB_{s-1}(h_{s-1})) + alpha * toRGB_s(block_s(h_{s-1}))

so alpha = 0 is the previous stage's image, upsampled, and alpha = 1 the new block alone. The
discriminator mirrors it: a 1x1 "fromRGB" per stage, per stage two conv3x3 -> LeakyReLU and 2x2
average pooling, and at 7x7 the minibatch standard deviation (Sec. 3), a conv3x3, and two linear layers:

    D_s(x) = D_{<s}( (1 - alpha) * fromRGB_{s-1}(pool2(x)) + alpha * pool2(block_s(fromRGB_s(x))) )

All layers use the equalized learning rate (Sec. 4.1) and the generator pixel norm (Sec. 4.2), from
:mod:`archlab.nn.gan_layers`. The current stage and alpha are buffers of both networks (saved with the
model, so a saved generator samples at the resolution it reached); :meth:`ProGAN.set_growth` moves them
and freezes the layers the stage does not use (the toRGB / fromRGB of older stages, the blocks of later
ones), which thaw when the schedule reaches them. The schedule itself is the training loop's
(``image_gan``'s ``grow_at`` and ``fade_steps``).

Shapes: ``generator(z)`` (B, latent) -> (B, C, H_s, W_s) at the current stage (7, 14 or 28 px);
``critic(x)`` (B, C, H_s, W_s) -> (B,); ``sample(n)`` -> (n, C, H, W) in [0, 1] at full size (a lower
stage's images upsampled by nearest neighbour).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.gan_layers import EqualConv2d, EqualLinear, MinibatchStdDev, PixelNorm
from ...registry import register
from ..base import ArchModel


@dataclass
class ProGANConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W) at the last stage; H, W divisible by 2^(len(channels) - 1)."""
    latent_dim: int = 64
    """Dimension of z."""
    channels: list[int] = field(default_factory=lambda: [64, 32, 16])
    """Generator channels per stage, coarsest first (one stage per entry; the discriminator mirrors them)."""
    stddev_group: int = 4
    """Group size of the discriminator's minibatch standard deviation."""

    def __post_init__(self) -> None:
        c, h, w = (self.image_shape + [0, 0, 0])[:3]
        div = 2 ** (len(self.channels) - 1)
        if len(self.image_shape) != 3 or not 1 <= c <= 64 or not self.channels or h % div or w % div or h < div:
            raise ValueError(f"image_shape [C, H, W] must have H, W divisible by 2^(len(channels) - 1) = {div}, "
                             f"got {self.image_shape}")
        if any(not 1 <= ch <= 4096 for ch in self.channels) or len(self.channels) > 8:
            raise ValueError(f"channels: 1 to 8 stages of 1 to 4096 channels, got {self.channels}")
        if not 1 <= self.latent_dim <= 65536 or not 1 <= self.stddev_group <= 1024:
            raise ValueError("need 1 <= latent_dim <= 65536 and 1 <= stddev_group <= 1024")


def _conv_act(a: int, b: int, norm: bool) -> list[nn.Module]:
    return [EqualConv2d(a, b, 3), nn.LeakyReLU(0.2)] + ([PixelNorm()] if norm else [])


class _Growing(nn.Module):
    """Holds the current stage and fade-in weight as buffers."""

    def __init__(self, stages: int) -> None:
        super().__init__()
        self.register_buffer("stage", torch.tensor(stages - 1))
        self.register_buffer("alpha", torch.tensor(1.0))

    def used(self, s: int) -> tuple[bool, bool]:
        """(block s is used, rgb layer s is used) at the current stage and alpha."""
        stage, fading = int(self.stage), float(self.alpha) < 1
        return s <= stage, s == stage or (fading and s == stage - 1)


class GrowingGenerator(_Growing):
    def __init__(self, c: ProGANConfig) -> None:
        super().__init__(len(c.channels))
        ch, h, w = c.image_shape
        self.base = (h // 2 ** (len(c.channels) - 1), w // 2 ** (len(c.channels) - 1))
        c0 = c.channels[0]
        self.stem = nn.Sequential(PixelNorm(), EqualLinear(c.latent_dim, c0 * self.base[0] * self.base[1]),
                                  nn.Unflatten(1, (c0, *self.base)), nn.LeakyReLU(0.2), PixelNorm(),
                                  *_conv_act(c0, c0, True))
        self.blocks = nn.ModuleList([nn.Sequential(*_conv_act(a, b, True), *_conv_act(b, b, True))
                                     for a, b in zip(c.channels[:-1], c.channels[1:], strict=True)])
        self.to_rgb = nn.ModuleList([EqualConv2d(k, ch, 1, gain=1.0) for k in c.channels])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        stage, alpha = int(self.stage), float(self.alpha)
        h = self.stem(z)
        for s in range(1, stage + 1):
            prev, h = h, self.blocks[s - 1](F.interpolate(h, scale_factor=2, mode="nearest"))
        if stage == 0 or alpha >= 1:
            return self.to_rgb[stage](h)
        low = F.interpolate(self.to_rgb[stage - 1](prev), scale_factor=2, mode="nearest")
        return torch.lerp(low, self.to_rgb[stage](h), alpha)


class GrowingDiscriminator(_Growing):
    def __init__(self, c: ProGANConfig) -> None:
        super().__init__(len(c.channels))
        ch, h, w = c.image_shape
        chans = c.channels  # stage s reads channels[s] from RGB; block s maps channels[s] -> channels[s - 1]
        self.from_rgb = nn.ModuleList([nn.Sequential(EqualConv2d(ch, k, 1), nn.LeakyReLU(0.2)) for k in chans])
        self.blocks = nn.ModuleList([nn.Sequential(*_conv_act(b, b, False), *_conv_act(b, a, False), nn.AvgPool2d(2))
                                     for a, b in zip(chans[:-1], chans[1:], strict=True)])
        base = (h // 2 ** (len(chans) - 1)) * (w // 2 ** (len(chans) - 1))
        c0 = chans[0]
        self.head = nn.Sequential(MinibatchStdDev(c.stddev_group), *_conv_act(c0 + 1, c0, False), nn.Flatten(),
                                  EqualLinear(c0 * base, c0), nn.LeakyReLU(0.2), EqualLinear(c0, 1, gain=1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stage, alpha = int(self.stage), float(self.alpha)
        h = self.from_rgb[stage](x)
        if stage > 0:
            h = self.blocks[stage - 1](h)
            if alpha < 1:
                h = torch.lerp(self.from_rgb[stage - 1](F.avg_pool2d(x, 2)), h, alpha)
            for s in range(stage - 1, 0, -1):
                h = self.blocks[s - 1](h)
        return self.head(h).squeeze(-1)


@register("progan", family="generative")
class ProGAN(ArchModel):
    """Progressive GAN: a generator and a discriminator that grow by resolution stages with fade-in;
    trained by the ``image_gan`` loop with ``grow_at`` / ``fade_steps``."""

    config_class = ProGANConfig
    export_blocker = ("progressive growing: the forward picks its layers from the stage and fade-in buffers "
                      "(int(stage), float(alpha)), data-dependent control flow torch.export cannot capture")
    can_sample: ClassVar[bool] = True

    def __init__(self, config: ProGANConfig) -> None:
        super().__init__(config)
        self.generator = GrowingGenerator(config)
        self.discriminator = GrowingDiscriminator(config)
        self.num_stages = len(config.channels)
        self.set_growth(self.num_stages - 1, 1.0)

    def set_growth(self, stage: int, alpha: float) -> None:
        """Move both networks to ``stage`` (0 = coarsest) with fade-in weight ``alpha`` in [0, 1] (alpha < 1
        blends in the stage's new block), and freeze the layers that are not used there."""
        if not 0 <= stage < self.num_stages or not 0 <= alpha <= 1:
            raise ValueError(f"need 0 <= stage < {self.num_stages} and 0 <= alpha <= 1, got {stage}, {alpha}")
        alpha = 1.0 if stage == 0 else alpha
        for net, rgb in ((self.generator, self.generator.to_rgb), (self.discriminator, self.discriminator.from_rgb)):
            net.stage.fill_(stage)
            net.alpha.fill_(alpha)
            for s in range(self.num_stages):
                block_used, rgb_used = net.used(s)
                rgb[s].requires_grad_(rgb_used)
                if s > 0:
                    net.blocks[s - 1].requires_grad_(block_used)

    def resolution(self, stage: int) -> tuple[int, int]:
        """(H, W) of the images at ``stage``."""
        _, h, w = self.config.image_shape
        f = 2 ** (self.num_stages - 1 - stage)
        return h // f, w // f

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fake = self.generator(z)
        return self.critic(fake), fake

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H_s, W_s) in [-1, 1] at the current stage -> (B,) logits."""
        return self.discriminator(x)

    def _full_size(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(self.config.image_shape[1:])
        x = x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="nearest")
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images in [0, 1] at full size (n, C, H, W)."""
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(next(self.parameters()).device)
        return self._full_size(self.generator(z))

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (full size) of latent codes (n, latent)."""
        return self._full_size(self.generator(z))

    @classmethod
    def example_input(cls, config: ProGANConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.latent_dim)
