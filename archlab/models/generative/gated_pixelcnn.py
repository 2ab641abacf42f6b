"""Gated PixelCNN (van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu 2016, "Conditional
Image Generation with PixelCNN Decoders", Sec. 2.1-2.2): the PixelCNN of :mod:`.pixelcnn` without its
blind spot, and with gated activations.

Two stacks per layer. The **vertical** stack sees every pixel in the rows up to the current one (a
(k//2 + 1) x k convolution, padded on top); shifted down one row it feeds the **horizontal** stack, which
sees the pixels left of the current one in its row (a 1 x (k//2 + 1) convolution whose centre tap is
masked A in the first layer and B later, with the colour groups of :func:`.pixelcnn.causal_mask`).
Together they cover every pixel before the current one: no blind spot.

    v_pre = W_v * v                                  h_pre = W_h * h + W_vh (shift_down(v_pre))    (Fig. 2)
    v'    = tanh(v_pre_f) . sigmoid(v_pre_g)         y     = tanh(h_pre_f) . sigmoid(h_pre_g)       (eq. 2)
    h'    = h + W_res y   (1x1, mask B; no residual in the first layer, whose input is the image)

The gate halves each colour group separately (group-major channels), so the colour order survives it.
Output: ReLU, 1x1 B, ReLU, 1x1 B -> one Bernoulli logit per sub-pixel; the likelihood and sampler are
the PixelCNN's.

Shapes: ``forward(x)``: x (B, C, H, W) binary -> logits (B, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import register
from .pixelcnn import AutoregressiveImageModel, MaskedConv2d


def gate(x: torch.Tensor, colors: int) -> torch.Tensor:
    """tanh(a) . sigmoid(b), where each colour group of x splits into its a and b halves:
    (B, 2F, H, W) -> (B, F, H, W)."""
    b, ch, h, w = x.shape
    x = x.view(b, colors, 2, ch // (2 * colors), h, w)
    return (torch.tanh(x[:, :, 0]) * torch.sigmoid(x[:, :, 1])).reshape(b, ch // 2, h, w)


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (row 0 becomes zeros): (B, C, H, W) -> (B, C, H, W)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(nn.Module):
    """One gated layer on the pair (v, h). Shapes: (B, c_in, H, W) x 2 -> (B, F, H, W) x 2."""

    def __init__(self, c_in: int, maps: int, kernel: int, colors: int, first: bool) -> None:
        super().__init__()
        p = kernel // 2
        self.colors, self.first, self.v_pad = colors, first, (p, p, p, 0)
        self.v_conv = nn.Conv2d(c_in, 2 * maps, (p + 1, kernel))
        self.v_to_h = nn.Conv2d(2 * maps, 2 * maps, 1)
        self.h_conv = MaskedConv2d(c_in, 2 * maps, (1, p + 1), "A" if first else "B", colors, center=(0, p))
        self.h_res = MaskedConv2d(maps, maps, 1, "B", colors)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_pre = self.v_conv(F.pad(v, self.v_pad))                        # rows i - k//2 .. i
        h_pre = self.h_conv(h) + self.v_to_h(shift_down(v_pre))          # rows < i, and row i left of j
        y = self.h_res(gate(h_pre, self.colors))
        return gate(v_pre, self.colors), y if self.first else h + y


@dataclass
class GatedPixelCNNConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); pixels are binary."""
    maps: int = 32
    """Feature maps F of both stacks (a multiple of C)."""
    layers: int = 8
    """Gated layers (the first one takes the image, with mask A)."""
    kernel: int = 5
    """k: the first layer's kernel width (odd); later layers use 3."""
    out_hidden: int = 64
    """Maps of the two 1x1 output layers (a multiple of C)."""

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or not all(1 <= s <= 4096 for s in self.image_shape):
            raise ValueError(f"image_shape must be [C, H, W] with sizes in [1, 4096], got {self.image_shape}")
        c = self.image_shape[0]
        if not 1 <= self.maps <= 4096 or self.maps % c or self.out_hidden % c or not 1 <= self.out_hidden <= 8192:
            raise ValueError(f"maps in [1, 4096] and out_hidden in [1, 8192] must be multiples of C = {c}")
        if not 1 <= self.layers <= 64 or self.kernel % 2 == 0 or not 3 <= self.kernel <= 15:
            raise ValueError("need 1 <= layers <= 64 and an odd kernel in [3, 15]")


@register("gated_pixelcnn", family="generative")
class GatedPixelCNN(AutoregressiveImageModel):
    """Gated PixelCNN: vertical + horizontal stacks, gated activations, no blind spot."""

    config_class = GatedPixelCNNConfig

    def __init__(self, config: GatedPixelCNNConfig) -> None:
        super().__init__(config)
        c = config
        colors = c.image_shape[0]
        self.layers = nn.ModuleList(
            [GatedLayer(colors if i == 0 else c.maps, c.maps, c.kernel if i == 0 else 3, colors, first=i == 0)
             for i in range(c.layers)])
        self.out1 = MaskedConv2d(c.maps, c.out_hidden, 1, "B", colors)
        self.out2 = MaskedConv2d(c.out_hidden, colors, 1, "B", colors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h)
        return self.out2(F.relu(self.out1(F.relu(h))))
