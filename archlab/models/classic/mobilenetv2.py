"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov & Chen 2018, "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", Table 2).

A 3x3 stem, seventeen inverted-residual blocks (expand 1x1 -> depthwise 3x3 -> linear 1x1, ReLU6,
see :class:`archlab.nn.mobile.InvertedResidual`) in seven stages, a 1x1 convolution to 1280 channels,
global average pooling, dropout and a linear classifier. Stage ``i`` has ``n`` blocks of expansion
``t`` and ``c`` output channels; its first block has stride ``s`` (the rest stride 1):

    stage    t    c    n   s    ImageNet 224x224 output
    stem     -   32    1   2    [B, 32, 112, 112]   conv3x3 -> BN -> ReLU6
    1        1   16    1   1    [B, 16, 112, 112]
    2        6   24    2   2    [B, 24, 56, 56]
    3        6   32    3   2    [B, 32, 28, 28]
    4        6   64    4   2    [B, 64, 14, 14]
    5        6   96    3   1    [B, 96, 14, 14]
    6        6  160    3   2    [B, 160, 7, 7]
    7        6  320    1   1    [B, 320, 7, 7]
    head     -  1280   1   -    [B, 1280, 7, 7] -> pool -> dropout -> linear -> [B, num_classes]

A block adds its input back (the residual) when its stride is 1 and its input and output widths
agree. The **width multiplier** ``alpha`` scales every width ``c`` to ``make_divisible(alpha c, 8)``
(the stem as well; the 1280 of the head only grows, ``make_divisible(1280 max(1, alpha), 8)``), which
cuts the cost roughly by ``alpha^2``. At the ImageNet configuration (3 input channels, 1000 classes,
``alpha = 1``) the network has 3,504,872 parameters and about 300M multiply-adds at 224x224 (paper,
Table 4: 3.4M parameters, 300M MAdds).

**Small images.** The network divides the resolution by 32 (stem and stages 2, 3, 4, 6). A 28x28
MNIST digit would leave a 1x1 map after stage 6, so ``stem_stride`` and ``strides`` (one per stage)
let a recipe drop some of the downsamplings; the blocks and their parameters do not change, only the
resolution at which they run (and hence the cost). See ``recipes/classic/mnist_mobilenetv2.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...nn import InitScheme, init_weights
from ...nn.mobile import ConvBNAct, InvertedResidual, make_divisible
from ...registry import register
from ..base import ArchModel

# (t, c, n) of the seven stages, paper Table 2; the strides are a config field.
STAGES: tuple[tuple[int, int, int], ...] = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3),
                                            (6, 160, 3), (6, 320, 1))
PAPER_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)


@dataclass
class MobileNetV2Config:
    in_channels: int = 3
    """input channels (3 for ImageNet, 1 for MNIST)"""
    num_classes: int = 1000
    """number of classes (output logits)"""
    width_mult: float = 1.0
    """width multiplier alpha: every width c becomes make_divisible(alpha c, round_nearest) (paper: 0.35 ... 1.4)"""
    round_nearest: int = 8
    """channel widths are rounded to multiples of this"""
    image_size: int = 224
    """height = width of the input images (224 for ImageNet, 28 for MNIST); sets the example input"""
    stem_stride: int = 2
    """stride of the 3x3 stem convolution (paper: 2)"""
    strides: list[int] = field(default_factory=lambda: list(PAPER_STRIDES))
    """stride of the first block of each of the 7 stages (paper: 1, 2, 2, 2, 1, 2, 1)"""
    dropout: float = 0.2
    """dropout probability before the classifier"""
    init: InitScheme = "he"
    """weight initialisation scheme (see archlab.nn.init); the reference uses He (fan_out) for convolutions"""

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.num_classes < 2 or self.image_size < 1:
            raise ValueError("in_channels and image_size must be >= 1, num_classes >= 2")
        if self.width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {self.width_mult}")
        if self.round_nearest < 1:
            raise ValueError(f"round_nearest must be >= 1, got {self.round_nearest}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        if len(self.strides) != len(STAGES) or any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides must list {len(STAGES)} strides of 1 or 2 (one per stage), got {self.strides}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def width(self, channels: int) -> int:
        """A paper width scaled by the multiplier and rounded (the stem and every stage)."""
        return make_divisible(channels * self.width_mult, self.round_nearest)

    @property
    def last_channels(self) -> int:
        """Width of the final 1x1 convolution: 1280, grown (never shrunk) by the multiplier."""
        return make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)


@register("mobilenetv2", family="classic")
class MobileNetV2(ArchModel):
    """MobileNetV2 (Sandler et al. 2018): inverted residuals with linear bottlenecks, ReLU6, width multiplier.

    Shapes:
        x: ``[B, in_channels, H, W]`` -> features ``[B, last_channels, H / S, W / S]`` (``S`` = product of
        the strides, 32 in the paper) -> pooled ``[B, last_channels]`` -> logits ``[B, num_classes]``
    """

    config_class = MobileNetV2Config

    def __init__(self, config: MobileNetV2Config) -> None:
        super().__init__(config)
        c_in = config.width(32)
        layers: list[nn.Module] = [ConvBNAct(config.in_channels, c_in, 3, config.stem_stride)]
        for (t, c, n), stride in zip(STAGES, config.strides, strict=True):
            c_out = config.width(c)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand_ratio=t))
                c_in = c_out
        layers.append(ConvBNAct(c_in, config.last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.last_channels, config.num_classes)
        init_weights(self, config.init)

    @classmethod
    def example_input(cls, config: MobileNetV2Config, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, config.image_size, config.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean((2, 3))  # global average pool: [B, last_channels]
        return self.head(self.dropout(h))
