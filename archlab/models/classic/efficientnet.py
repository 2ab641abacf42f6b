"""EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", Table 1 and §3.3).

The baseline B0 is a 3x3 stem, sixteen MBConv blocks in seven stages (an inverted residual with a
squeeze-and-excitation gate and SiLU, see :class:`archlab.nn.mobile.InvertedResidual`), a 1x1
convolution to 1280 channels, global average pooling, dropout and a linear classifier. Stage ``i``
has ``n`` blocks of expansion ``t``, depthwise kernel ``k`` and ``c`` output channels; its first
block has stride ``s``:

    stage     t   k    c    n   s    B0 at 224x224
    stem      -   3   32    1   2    [B, 32, 112, 112]   conv3x3 -> BN -> SiLU
    1         1   3   16    1   1    [B, 16, 112, 112]
    2         6   3   24    2   2    [B, 24, 56, 56]
    3         6   5   40    2   2    [B, 40, 28, 28]
    4         6   3   80    3   2    [B, 80, 14, 14]
    5         6   5  112    3   1    [B, 112, 14, 14]
    6         6   5  192    4   2    [B, 192, 7, 7]
    7         6   3  320    1   1    [B, 320, 7, 7]
    head      -   1  1280   1   -    [B, 1280, 7, 7] -> pool -> dropout -> linear -> [B, num_classes]

Every block gates its depthwise output with SE of width ``max(1, int(se_ratio * C_in))`` (``C_in``:
the block's input channels, ``se_ratio = 0.25``). Blocks with stride 1 and equal widths are residual,
their branch dropped per example with probability ``p_j = drop_connect * j / J`` for the ``j``-th of
``J`` blocks (stochastic depth, linear in depth as in the reference implementation).

**Compound scaling** (§3.3). With one coefficient ``phi``, depth, width and resolution grow as

    d = alpha^phi,  w = beta^phi,  r = gamma^phi,   alpha = 1.2, beta = 1.1, gamma = 1.15,
    subject to alpha * beta^2 * gamma^2 ~= 2  (so the FLOPs grow by about 2^phi),

where a stage of ``n`` blocks gets ``ceil(d n)`` blocks, a width ``c`` becomes ``make_divisible(w c, 8)``
(the stem's 32 and the head's 1280 as well) and the input side ``round(224 r)``. The released B1..B7
were not built from integer ``phi`` exactly: their (width, depth, resolution, dropout) are a table of
the reference implementation (``efficientnet_builder.efficientnet_params``), used here for
``variant = "b0" ... "b7"``; ``phi`` (or ``width_coefficient`` / ``depth_coefficient``) overrides them.
B0 with 1000 classes has 5,288,548 parameters and about 0.39B multiply-adds at 224x224 (paper Table 2:
5.3M parameters, 0.39B FLOPS).

**Small images.** ``stem_stride`` and ``strides`` (one per stage) drop some of the five downsamplings
for inputs like 28x28 MNIST; parameters do not change (see ``recipes/classic/mnist_efficientnet_b0.toml``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ...nn import InitScheme, init_weights
from ...nn.mobile import ConvBNAct, InvertedResidual, make_divisible
from ...registry import register
from ..base import ArchModel

# (t, k, c, n) of the seven B0 stages, paper Table 1; the strides are a config field.
STAGES: tuple[tuple[int, int, int, int], ...] = ((1, 3, 16, 1), (6, 3, 24, 2), (6, 5, 40, 2), (6, 3, 80, 3),
                                                 (6, 5, 112, 3), (6, 5, 192, 4), (6, 3, 320, 1))
PAPER_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)

Variant = Literal["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"]
# (width, depth, resolution, dropout) of the released models: the reference implementation's
# efficientnet_builder.efficientnet_params (github.com/tensorflow/tpu, models/official/efficientnet).
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5),
}
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases of compound scaling (paper §3.3)


@dataclass
class EfficientNetConfig:
    in_channels: int = 3
    """input channels (3 for ImageNet, 1 for MNIST)"""
    num_classes: int = 1000
    """number of classes (output logits)"""
    variant: Variant = "b0"
    """released scaling b0 ... b7: (width, depth, resolution, dropout) from the reference table"""
    phi: float | None = None
    """compound coefficient: width 1.1^phi, depth 1.2^phi, resolution 224 * 1.15^phi (replaces the variant's)"""
    width_coefficient: float | None = None
    """explicit width coefficient (overrides variant and phi)"""
    depth_coefficient: float | None = None
    """explicit depth coefficient (overrides variant and phi)"""
    image_size: int | None = None
    """height = width of the input images; none: the variant's (or phi's) resolution. 28 for MNIST"""
    dropout: float | None = None
    """dropout before the classifier; none: the variant's (0.2 for b0)"""
    drop_connect: float = 0.2
    """stochastic depth: block j of J (from 0) drops its residual branch with probability drop_connect * j / J"""
    se_ratio: float = 0.25
    """squeeze-and-excitation width as a fraction of each block's input channels; 0 disables SE"""
    round_nearest: int = 8
    """channel widths are rounded to multiples of this"""
    stem_stride: int = 2
    """stride of the 3x3 stem convolution (paper: 2)"""
    strides: list[int] = field(default_factory=lambda: list(PAPER_STRIDES))
    """stride of the first block of each of the 7 stages (paper: 1, 2, 2, 2, 1, 2, 1)"""
    init: InitScheme = "he"
    """weight initialisation scheme (see archlab.nn.init); the reference uses He (fan_out) for convolutions"""

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.num_classes < 2:
            raise ValueError("in_channels must be >= 1, num_classes >= 2")
        for name in ("phi", "width_coefficient", "depth_coefficient"):
            value = getattr(self, name)
            if value is not None and (value <= 0 if name != "phi" else not -8 <= value <= 16):
                raise ValueError(f"{name} must be {'in [-8, 16]' if name == 'phi' else '> 0'}, got {value}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.drop_connect < 1.0:
            raise ValueError(f"drop_connect must be in [0, 1), got {self.drop_connect}")
        if not 0.0 <= self.se_ratio <= 1.0:
            raise ValueError(f"se_ratio must be in [0, 1], got {self.se_ratio}")
        if self.round_nearest < 1:
            raise ValueError(f"round_nearest must be >= 1, got {self.round_nearest}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        if len(self.strides) != len(STAGES) or any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides must list {len(STAGES)} strides of 1 or 2 (one per stage), got {self.strides}")

    def coefficients(self) -> tuple[float, float, int, float]:
        """(width, depth, resolution, dropout) after applying variant, then phi, then explicit values."""
        width, depth, resolution, dropout = VARIANTS[self.variant]
        if self.phi is not None:
            width, depth, resolution = BETA**self.phi, ALPHA**self.phi, round(224 * GAMMA**self.phi)
        width = self.width_coefficient if self.width_coefficient is not None else width
        depth = self.depth_coefficient if self.depth_coefficient is not None else depth
        resolution = self.image_size if self.image_size is not None else resolution
        dropout = self.dropout if self.dropout is not None else dropout
        return width, depth, resolution, dropout

    def width(self, channels: int) -> int:
        """A B0 width scaled by the width coefficient and rounded (reference: ``round_filters``)."""
        return make_divisible(channels * self.coefficients()[0], self.round_nearest)

    def repeats(self, blocks: int) -> int:
        """A B0 stage's block count scaled by the depth coefficient (reference: ``round_repeats``)."""
        return math.ceil(blocks * self.coefficients()[1])


@register("efficientnet", family="classic")
class EfficientNet(ArchModel):
    """EfficientNet (Tan & Le 2019): MBConv with squeeze-and-excitation and SiLU, compound scaling; B0 by default.

    Shapes:
        x: ``[B, in_channels, H, W]`` -> features ``[B, width(1280), H / S, W / S]`` (``S`` = product of
        the strides, 32 in the paper) -> pooled ``[B, width(1280)]`` -> logits ``[B, num_classes]``
    """

    config_class = EfficientNetConfig

    def __init__(self, config: EfficientNetConfig) -> None:
        super().__init__(config)
        _, _, _, dropout = config.coefficients()
        c_in = config.width(32)
        layers: list[nn.Module] = [ConvBNAct(config.in_channels, c_in, 3, config.stem_stride, act=nn.SiLU)]
        total = sum(config.repeats(n) for _, _, _, n in STAGES)
        j = 0
        for (t, k, c, n), stride in zip(STAGES, config.strides, strict=True):
            c_out = config.width(c)
            for i in range(config.repeats(n)):
                se = max(1, int(c_in * config.se_ratio)) if config.se_ratio > 0 else 0
                layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand_ratio=t, kernel_size=k,
                                               act=nn.SiLU, se_channels=se,
                                               drop_path=config.drop_connect * j / total))
                c_in = c_out
                j += 1
        self.last_channels = config.width(1280)
        layers.append(ConvBNAct(c_in, self.last_channels, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.last_channels, config.num_classes)
        init_weights(self, config.init)

    @classmethod
    def example_input(cls, config: EfficientNetConfig, batch_size: int = 2) -> torch.Tensor:
        side = config.coefficients()[2]
        return torch.randn(batch_size, config.in_channels, side, side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean((2, 3))  # global average pool: [B, last_channels]
        return self.head(self.dropout(h))
