"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", Sec. 3.5):
an autoregressive image model whose exact likelihood is one forward pass.

    p(x) = prod_{i=1..n^2} prod_{c=1..C} p(x_{i,c} | x_{<i}, x_{i,<c})                (their eq. 1-2)
    -log p(x) = sum_{i,c} BCE(logit_{i,c}, x_{i,c})      binary pixels: one Bernoulli logit per sub-pixel

Every convolution is *masked* so that the output at pixel i (raster order, rows then columns) sees
only the pixels before i: the kernel's weights below the centre row and right of the centre are zero.
At the centre the colour channels keep their order R -> G -> B (their Fig. 2): the feature maps are
cut into C groups, group g standing for channel g; mask **A** (first layer only, on the image)
connects output group g to input groups < g, mask **B** (every later layer) to groups <= g. With
C = 1 mask A drops the centre tap, mask B keeps it.

Network (their Fig. 5 and Table 4's MNIST model, at a CPU size): a 7x7 mask-A convolution to ``2h``
maps, ``layers`` residual blocks [ReLU, 1x1 B (2h -> h), ReLU, 3x3 B (h -> h), ReLU, 1x1 B (h -> 2h)],
then ReLU, 1x1 B, ReLU, 1x1 B to C logits. Its receptive field has the "blind spot" up and to the
right that the gated variant (:mod:`.gated_pixelcnn`) removes.

Sampling draws the n^2 C sub-pixels one by one, each from a full forward pass (slow, exact).

Shapes: ``forward(x)``: x (B, C, H, W) binary in {0, 1} -> logits (B, C, H, W); ``terms(x)``,
``log_prob(x)`` -> (B,) nats; ``sample(n)`` -> (n, C, H, W) in {0, 1}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import register
from ..base import ArchModel


def channel_groups(channels: int, colors: int) -> torch.Tensor:
    """The colour group (0 .. colors-1) of each of ``channels`` feature maps: (channels,), group-major."""
    return torch.arange(channels) * colors // channels


def causal_mask(out_channels: int, in_channels: int, kernel: tuple[int, int], center: tuple[int, int],
                mask_type: Literal["A", "B"], colors: int) -> torch.Tensor:
    """(out, in, kh, kw) 0/1 mask: taps before ``center`` in raster order are 1, taps after it 0; the
    centre tap connects output group g to input groups < g (A) or <= g (B)."""
    kh, kw = kernel
    ci, cj = center
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    mask[:, :, :ci, :] = 1
    mask[:, :, ci, :cj] = 1
    g_out, g_in = channel_groups(out_channels, colors), channel_groups(in_channels, colors)
    allowed = g_out[:, None] > g_in[None] if mask_type == "A" else g_out[:, None] >= g_in[None]
    mask[:, :, ci, cj] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A convolution whose weight is multiplied by a fixed 0/1 mask on every call (so masked weights
    get zero gradient and never leak, whatever the optimizer does). Centre tap at (kh // 2, kw // 2)
    unless ``center`` says otherwise; zero padding keeps H and W.

    Shapes: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int],
                 mask_type: Literal["A", "B"], colors: int, center: tuple[int, int] | None = None) -> None:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        center = center or (kh // 2, kw // 2)
        # Pad so the output pixel sits on the kernel's centre tap (asymmetric kernels: pad explicitly).
        self.pads = (center[1], kw - 1 - center[1], center[0], kh - 1 - center[0])
        super().__init__(in_channels, out_channels, (kh, kw))
        self.register_buffer("mask", causal_mask(out_channels, in_channels, (kh, kw), center, mask_type, colors),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads), self.weight * self.mask, self.bias)


class ResidualBlock(nn.Module):
    """x + 1x1 B (ReLU(3x3 B (ReLU(1x1 B (ReLU(x))))))  (van den Oord et al. 2016, Fig. 5).

    Shapes: (B, 2h, H, W) -> (B, 2h, H, W)."""

    def __init__(self, hidden: int, colors: int) -> None:
        super().__init__()
        self.reduce = MaskedConv2d(2 * hidden, hidden, 1, "B", colors)
        self.conv = MaskedConv2d(hidden, hidden, 3, "B", colors)
        self.expand = MaskedConv2d(hidden, 2 * hidden, 1, "B", colors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(F.relu(self.conv(F.relu(self.reduce(F.relu(x))))))


@dataclass
class PixelCNNConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); pixels are binary."""
    hidden: int = 32
    """h: the residual blocks carry 2h maps (a multiple of C, so every colour has its group)."""
    layers: int = 6
    """Residual blocks after the 7x7 mask-A input convolution."""
    first_kernel: int = 7
    """Kernel of the mask-A input convolution (odd)."""
    out_hidden: int = 64
    """Maps of the two 1x1 output layers (a multiple of C)."""

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or not all(1 <= s <= 4096 for s in self.image_shape):
            raise ValueError(f"image_shape must be [C, H, W] with sizes in [1, 4096], got {self.image_shape}")
        c = self.image_shape[0]
        if not 1 <= self.hidden <= 4096 or self.hidden % c or self.out_hidden % c or not 1 <= self.out_hidden <= 8192:
            raise ValueError(f"hidden in [1, 4096] and out_hidden in [1, 8192] must be multiples of C = {c}")
        if not 0 <= self.layers <= 64 or self.first_kernel % 2 == 0 or not 1 <= self.first_kernel <= 15:
            raise ValueError("need 0 <= layers <= 64 and an odd first_kernel in [1, 15]")


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x) of binary images under per-sub-pixel Bernoulli logits: (B, C, H, W) -> (B,), nats."""
    return F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)


class AutoregressiveImageModel(ArchModel):
    """What the PixelCNNs share: exact NLL terms and sub-pixel-by-sub-pixel sampling from ``forward``."""

    can_sample: ClassVar[bool] = True

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image terms (B,) in nats: ``loss`` = ``rec`` = -log p(x), exact."""
        nll = bernoulli_nll(self(x.view(len(x), *self.config.image_shape)), x.view(len(x), *self.config.image_shape))
        return {"loss": nll, "rec": nll}

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per image (B,), nats: exact."""
        return -self.terms(x)["loss"]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch: int = 256) -> torch.Tensor:
        """``n`` binary images (n, C, H, W): each sub-pixel drawn in raster order (rows, columns, colours)
        from a forward pass over the rows so far; the uniforms come from ``generator`` (on the CPU) so
        draws are seeded."""
        c, h, w = self.config.image_shape
        device = next(self.parameters()).device
        out = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            u = torch.rand(m, c, h, w, generator=generator).to(device)
            x = torch.zeros(m, c, h, w, device=device)
            for i in range(h):
                for j in range(w):
                    for k in range(c):
                        # Rows below i cannot reach row i through the masks: run on rows 0..i only.
                        p = torch.sigmoid(self(x[:, :, :i + 1])[:, k, i, j].float())
                        x[:, k, i, j] = (u[:, k, i, j] < p).float()
            out.append(x)
        return torch.cat(out)

    @classmethod
    def example_input(cls, config: PixelCNNConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.bernoulli(torch.full((batch_size, *config.image_shape), 0.5))


@register("pixelcnn", family="generative")
class PixelCNN(AutoregressiveImageModel):
    """PixelCNN with mask-A / mask-B convolutions and residual blocks; Bernoulli sub-pixels."""

    config_class = PixelCNNConfig

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__(config)
        c = config
        colors = c.image_shape[0]
        self.input = MaskedConv2d(colors, 2 * c.hidden, c.first_kernel, "A", colors)
        self.blocks = nn.Sequential(*[ResidualBlock(c.hidden, colors) for _ in range(c.layers)])
        self.out1 = MaskedConv2d(2 * c.hidden, c.out_hidden, 1, "B", colors)
        self.out2 = MaskedConv2d(c.out_hidden, colors, 1, "B", colors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.input(x))
        return self.out2(F.relu(self.out1(F.relu(h))))
