"""Building blocks of the mobile convolutional networks (MobileNetV2, EfficientNet).

**Depthwise-separable convolution** (Howard et al. 2017). A ``k x k`` convolution from ``C_in`` to
``C_out`` channels costs ``H W k^2 C_in C_out`` multiply-adds; splitting it into a depthwise ``k x k``
convolution (one filter per channel, ``groups = C``) and a pointwise ``1 x 1`` convolution costs
``H W C_in (k^2 + C_out)``, about ``k^2`` times less when ``C_out >> k^2``.

**Inverted residual with linear bottleneck** (Sandler et al. 2018, MobileNetV2 §3.3, Table 1). For an
input ``x`` with ``C_in`` channels, expansion ratio ``t`` and ``C_h = t C_in`` hidden channels:

    h = act(BN(conv1x1(x)))                 expand      [B, C_in, H, W]  -> [B, C_h, H, W]   (absent when t = 1)
    h = act(BN(dwconv_kxk_stride(h)))       depthwise   -> [B, C_h, H / s, W / s]
    h = h * SE(h)                           (EfficientNet only, see SqueezeExcitation)
    y = BN(conv1x1(h))                      project     -> [B, C_out, H / s, W / s]   -- linear: no activation
    y = x + DropPath(y)                     residual only when s = 1 and C_in = C_out

The block is "inverted" because the residual connects the narrow bottlenecks and the wide layer sits
inside; the projection is linear because a ReLU on a low-dimensional manifold destroys information
(§3.2). MobileNetV2 uses ReLU6 and no SE; EfficientNet's MBConv (Tan & Le 2019) uses SiLU (Swish), SE
and stochastic depth (Huang et al. 2016) on the residual branch.

**Squeeze-and-excitation** (Hu et al. 2018): a per-channel gate computed from the global average,

    s = sigmoid(W_2 act(W_1 mean_{H,W}(h) + b_1) + b_2),   h <- h * s      s: [B, C_h, 1, 1]

with ``W_1: C_h -> C_se`` and ``W_2: C_se -> C_h`` (1x1 convolutions with bias). EfficientNet sizes the
squeeze from the *block input*: ``C_se = max(1, int(C_in * se_ratio))``, ``se_ratio = 0.25``.

**Channel rounding** (:func:`make_divisible`, from the TensorFlow reference implementations): widths
scaled by a multiplier are rounded to the nearest multiple of 8 (hardware-friendly), never below 8
and never more than 10% below the unrounded value.
"""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``min_value`` (default
    ``divisor``), and bumped up by one ``divisor`` if rounding lost more than 10%.

    Examples: ``make_divisible(32 * 0.35) = 16`` (11.2 -> 8 would lose > 10%), ``make_divisible(24 * 1.1)
    = 24``, ``make_divisible(1280 * 1.4) = 1792``.
    """
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch (Huang et al. 2016; EfficientNet's "drop connect").

    In training, each example's branch is kept with probability ``1 - p`` and then divided by ``1 - p``
    so its expectation is unchanged: ``y_b = x_b * m_b / (1 - p)``, ``m_b ~ Bernoulli(1 - p)``. At
    evaluation (or ``p = 0``) it is the identity.

    Shapes:
        x: ``[B, ...]`` -> ``[B, ...]`` (one mask entry per example, broadcast over the rest)
    """
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class ConvBNAct(nn.Sequential):
    """``act(BN(conv_kxk(x)))`` with "same" padding ``(k - 1) / 2``; ``act=None`` leaves it linear.

    Shapes:
        x: ``[B, C_in, H, W]`` -> ``[B, C_out, ceil(H / stride), ceil(W / stride)]``
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: type[nn.Module] | None = nn.ReLU6) -> None:
        layers: list[nn.Module] = [
            # no bias: the BatchNorm that follows subtracts the per-channel mean anyway
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gate ``h * sigmoid(W_2 act(W_1 mean(h)))`` (Hu et al. 2018; equation in the module docstring).

    Args:
        channels: channels ``C_h`` of the gated tensor.
        squeeze_channels: bottleneck width ``C_se``.
        act: activation between the two 1x1 convolutions (SiLU in EfficientNet).

    Shapes:
        h: ``[B, C_h, H, W]`` -> ``[B, C_h, H, W]``
    """

    def __init__(self, channels: int, squeeze_channels: int, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s = h.mean((2, 3), keepdim=True)  # squeeze: [B, C_h, 1, 1]
        s = torch.sigmoid(self.expand(self.act(self.reduce(s))))  # excitation: a gate in (0, 1) per channel
        return h * s


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual / EfficientNet MBConv (equations in the module docstring).

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        stride: stride of the depthwise convolution (1 or 2).
        expand_ratio: ``t``; hidden width ``C_h = t * C_in`` (no expansion convolution when ``t = 1``).
        kernel_size: depthwise kernel (3 or 5).
        act: activation after the expansion and the depthwise convolution (ReLU6 or SiLU).
        se_channels: squeeze width ``C_se`` of a squeeze-and-excitation gate; 0 for none.
        drop_path: stochastic-depth probability of the residual branch (only used with the residual).

    Shapes:
        x: ``[B, C_in, H, W]`` -> ``[B, C_out, ceil(H / stride), ceil(W / stride)]``
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: float = 6,
                 kernel_size: int = 3, act: type[nn.Module] = nn.ReLU6, se_channels: int = 0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_path = drop_path
        layers: list[nn.Module] = []
        if hidden != in_channels:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=act))  # expand
        layers.append(ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, act=act))  # depthwise
        if se_channels > 0:
            layers.append(SqueezeExcitation(hidden, se_channels, act=act))
        layers.append(ConvBNAct(hidden, out_channels, 1, act=None))  # linear bottleneck
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.use_residual:
            return x + drop_path(y, self.drop_path, self.training)
        return y

    def extra_repr(self) -> str:
        return f"residual={self.use_residual}, drop_path={self.drop_path:g}"
