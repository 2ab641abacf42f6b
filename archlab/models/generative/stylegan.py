"""A StyleGAN-style generator (Karras, Laine & Aila 2019) at MNIST size, with a progressive-GAN-style
discriminator (fixed resolution, minibatch stddev).

Mapping network f (their Sec. 2): z -> w, an MLP on the pixel-normalised noise with a 100x lower learning
rate (equalized lr with lr_mul = 0.01, Appendix C)

    w = f(z / rms(z)),     f = (EqualLinear -> LeakyReLU(0.2)) x mapping_layers           (B, w_dim)

Synthesis network g: a learned constant (C_0, 7, 7) grows by nearest upsampling to 14 and 28; each
resolution has two style layers; style layer l is

    x <- conv3x3(x) (not on the constant),   x <- x + B_l * noise,  noise ~ N(0, 1) (B, 1, H, W)
    x <- LeakyReLU(x + b_l),                 AdaIN(x, y_l) = y_{s,l} * (x - mu(x)) / sigma(x) + y_{b,l}
    y_l = (y_{s,l}, y_{b,l}) = A_l(w_l)      (learned affine, scale bias initialised to 1)

(mu and sigma per example and channel: instance normalisation). The image is a 1x1 "toRGB" convolution
of the last features (linear output, as in the paper; samples are clipped to [-1, 1]).

Style mixing regularisation (Sec. 3.1): in training, with probability ``mixing_prob`` two codes
w1 = f(z1), w2 = f(z2) are used, w1 for the layers before a random crossover point and w2 after.
Truncation trick (Sec. 3.1 and Appendix B): w' = w_avg + psi (w - w_avg), w_avg a running mean of the
mapped codes kept during training (decay 0.995); psi = 1 is no truncation, psi = 0 gives every z the
mean style. Noise inputs: random in training and in :meth:`StyleGAN.sample` (from the caller's
generator); fixed per-layer noise images (buffers, saved with the model) in ``eval()`` forward passes
and latent walks, as StyleGAN2-ADA's ``noise_mode="const"``.

Discriminator (Karras et al. 2018, Table 2, shrunk): 1x1 fromRGB, per resolution two 3x3 convolutions
and 2x2 average pooling (28 -> 14 -> 7), minibatch stddev, a 3x3 convolution, two linear layers.
All layers use the equalized learning rate.

Shapes: ``generator(z)`` (B, latent) -> (B, C, 28, 28); ``generator.synthesis(ws)`` (B, L, w_dim) ->
(B, C, H, W) with L = 2 x resolutions style layers; ``critic(x)`` (B, C, H, W) -> (B,);
``sample(n, truncation=psi)`` -> (n, C, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.gan_layers import EqualConv2d, EqualLinear, MinibatchStdDev, PixelNorm
from ...registry import register
from ..base import ArchModel

NoiseMode = Literal["random", "const", "none"]


@dataclass
class StyleGANConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); H and W are the constant's size times 2^(len(channels) - 1)."""
    latent_dim: int = 64
    """Dimension of z."""
    w_dim: int = 64
    """Dimension of the intermediate latent w."""
    mapping_layers: int = 4
    """Layers of the mapping network (the paper uses 8)."""
    mapping_lr_mul: float = 0.01
    """Learning-rate multiplier of the mapping network (the paper's 0.01)."""
    channels: list[int] = field(default_factory=lambda: [64, 32, 16])
    """Generator channels per resolution, coarsest first (the discriminator mirrors them)."""
    mixing_prob: float = 0.9
    """Probability of style mixing for a training batch (0: off; the paper uses 0.9)."""
    w_avg_decay: float = 0.995
    """Decay of the running mean w_avg of mapped codes that truncation pulls towards."""
    stddev_group: int = 4
    """Group size of the discriminator's minibatch standard deviation."""

    def __post_init__(self) -> None:
        c, h, w = (self.image_shape + [0, 0, 0])[:3]
        div = 2 ** (len(self.channels) - 1)
        if len(self.image_shape) != 3 or not 1 <= c <= 64 or not self.channels or h % div or w % div or h < div:
            raise ValueError(f"image_shape [C, H, W] must have H, W divisible by 2^(len(channels) - 1) = {div}, "
                             f"got {self.image_shape}")
        for key in ("latent_dim", "w_dim", "mapping_layers", "stddev_group"):
            if not 1 <= getattr(self, key) <= 65536:
                raise ValueError(f"{key} must be in [1, 65536], got {getattr(self, key)}")
        if any(not 1 <= ch <= 4096 for ch in self.channels) or len(self.channels) > 8:
            raise ValueError(f"channels: 1 to 8 resolutions of 1 to 4096 channels, got {self.channels}")
        if not 0 < self.mapping_lr_mul <= 1 or not 0 <= self.mixing_prob <= 1 or not 0 <= self.w_avg_decay < 1:
            raise ValueError("need 0 < mapping_lr_mul <= 1, 0 <= mixing_prob <= 1 and 0 <= w_avg_decay < 1")


class MappingNetwork(nn.Module):
    """z (B, latent) -> w (B, w_dim)."""

    def __init__(self, c: StyleGANConfig) -> None:
        super().__init__()
        dims = [c.latent_dim] + [c.w_dim] * c.mapping_layers
        layers: list[nn.Module] = [PixelNorm()]
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [EqualLinear(a, b, lr_mul=c.mapping_lr_mul), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class StyleLayer(nn.Module):
    """[conv3x3] -> + B * noise -> + bias -> LeakyReLU -> AdaIN(style A(w)); (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, size: tuple[int, int], conv: bool) -> None:
        super().__init__()
        self.conv = EqualConv2d(in_channels, out_channels, 3) if conv else None
        self.noise_strength = nn.Parameter(torch.zeros(out_channels))       # B_l, per channel, init 0
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.affine = EqualLinear(w_dim, 2 * out_channels, gain=1.0)          # A_l: w -> (y_s, y_b)
        with torch.no_grad():
            self.affine.bias[:out_channels] = 1.0                              # y_s starts at 1
        self.register_buffer("noise_const", torch.randn(1, 1, *size))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        if noise is not None:
            x = x + self.noise_strength.view(1, -1, 1, 1) * noise
        x = F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2)
        y_s, y_b = self.affine(w).view(-1, 2, self.out_channels, 1, 1).unbind(1)
        return y_s * F.instance_norm(x, eps=1e-8) + y_b                        # AdaIN


class StyleGenerator(nn.Module):
    """Mapping + synthesis with style mixing (training) and the running mean w_avg (truncation)."""

    def __init__(self, c: StyleGANConfig) -> None:
        super().__init__()
        self.c = c
        ch, h, wd = c.image_shape
        base = (h // 2 ** (len(c.channels) - 1), wd // 2 ** (len(c.channels) - 1))
        self.mapping = MappingNetwork(c)
        self.const = nn.Parameter(torch.ones(1, c.channels[0], *base))
        layers, prev = [], c.channels[0]
        for i, out in enumerate(c.channels):
            size = (base[0] * 2 ** i, base[1] * 2 ** i)
            layers += [StyleLayer(prev, out, c.w_dim, size, conv=i > 0), StyleLayer(out, out, c.w_dim, size, conv=True)]
            prev = out
        self.layers = nn.ModuleList(layers)
        self.to_rgb = EqualConv2d(prev, ch, 1, gain=1.0)
        self.register_buffer("w_avg", torch.zeros(c.w_dim))
        self.num_styles = len(layers)

    def synthesis(self, ws: torch.Tensor, noise: NoiseMode = "const",
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, C, H, W) from one w per style layer ``ws`` (B, L, w_dim); ``noise``: random (from
        ``generator``, or the global generator when None), const (the saved noise images) or none."""
        x = self.const.expand(len(ws), -1, -1, -1)
        for i, layer in enumerate(self.layers):
            if i and i % 2 == 0:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            size = layer.noise_const.shape[-2:]
            if noise == "random":
                n = torch.randn(len(ws), 1, *size, generator=generator).to(ws.device)
            else:
                n = layer.noise_const.expand(len(ws), -1, -1, -1) if noise == "const" else None
            x = layer(x, ws[:, i], n)
        return self.to_rgb(x)

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """w' = w_avg + psi (w - w_avg)."""
        return self.w_avg + psi * (w - self.w_avg) if psi != 1 else w

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Training: random noise, style mixing with probability ``mixing_prob`` and a w_avg update;
        eval: the constant noise, one w for every layer."""
        w = self.mapping(z)
        ws = w.unsqueeze(1).repeat(1, self.num_styles, 1)
        if not self.training:
            return self.synthesis(ws, "const")
        with torch.no_grad():
            self.w_avg.lerp_(w.detach().mean(0), 1 - self.c.w_avg_decay)
        if self.c.mixing_prob and float(torch.rand(())) < self.c.mixing_prob:
            w2 = self.mapping(torch.randn_like(z))
            cut = int(torch.randint(1, self.num_styles, ()))
            ws = torch.cat([ws[:, :cut], w2.unsqueeze(1).expand(-1, self.num_styles - cut, -1)], dim=1)
        return self.synthesis(ws, "random")


class StyleDiscriminator(nn.Module):
    """fromRGB -> per resolution (conv3, conv3, avgpool) -> minibatch stddev -> conv3 -> linear -> linear."""

    def __init__(self, c: StyleGANConfig) -> None:
        super().__init__()
        ch, h, wd = c.image_shape
        chans = list(reversed(c.channels))                                 # finest first
        layers: list[nn.Module] = [EqualConv2d(ch, chans[0], 1), nn.LeakyReLU(0.2)]
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [EqualConv2d(a, a, 3), nn.LeakyReLU(0.2), EqualConv2d(a, b, 3), nn.LeakyReLU(0.2),
                       nn.AvgPool2d(2)]
        last = chans[-1]
        base = (h // 2 ** (len(chans) - 1)) * (wd // 2 ** (len(chans) - 1))
        layers += [MinibatchStdDev(c.stddev_group), EqualConv2d(last + 1, last, 3), nn.LeakyReLU(0.2), nn.Flatten(),
                   EqualLinear(last * base, last), nn.LeakyReLU(0.2), EqualLinear(last, 1, gain=1.0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@register("stylegan", family="generative")
class StyleGAN(ArchModel):
    """StyleGAN-style generator (mapping network, AdaIN styles, noise inputs, mixing, truncation) and a
    minibatch-stddev discriminator; trained by the ``image_gan`` loop."""

    config_class = StyleGANConfig
    can_sample: ClassVar[bool] = True
    truncatable: ClassVar[bool] = True

    def __init__(self, config: StyleGANConfig) -> None:
        super().__init__(config)
        self.generator = StyleGenerator(config)
        self.discriminator = StyleDiscriminator(config)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fake = self.generator(z)
        return self.critic(fake), fake

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B,) logits."""
        return self.discriminator(x)

    def styles(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """One (truncated) w per style layer: (B, latent) -> (B, L, w_dim)."""
        w = self.generator.truncate(self.generator.mapping(z), truncation)
        return w.unsqueeze(1).repeat(1, self.generator.num_styles, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, truncation: float = 1.0) -> torch.Tensor:
        """``n`` images in [0, 1] (n, C, H, W); z and the noise inputs from ``generator``; ``truncation`` = psi."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        x = self.generator.synthesis(self.styles(z, truncation), "random", generator)
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """Images in [0, 1] of latent codes (n, latent) with the constant noise (smooth latent walks)."""
        return ((self.generator.synthesis(self.styles(z, truncation), "const") + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def mix(self, z_coarse: torch.Tensor, z_fine: torch.Tensor, crossover: int) -> torch.Tensor:
        """Images in [0, 1] taking the styles of layers < ``crossover`` from ``z_coarse`` and the rest from
        ``z_fine`` (both (n, latent)), constant noise: the style-mixing figure of Karras et al. (Fig. 3)."""
        ws = torch.cat([self.styles(z_coarse)[:, :crossover], self.styles(z_fine)[:, crossover:]], dim=1)
        return ((self.generator.synthesis(ws, "const") + 1) / 2).clamp(0, 1)

    @classmethod
    def example_input(cls, config: StyleGANConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.latent_dim)
