"""A macro search-space network: a chain of 1-d layers, each with its own operation, width, kernel and
skip connection (the macro space of Zoph & Le 2017, Sec. 3.3, on 1-d signals); the space itself, for
random search and evolution, is :class:`archlab.search.macro.MacroSpace`.

**Wiring.** ``h_0 = stem(x)`` (a ``stem_channels``-wide convolution of width 3 -> BN -> ReLU); layer ``i``
(0-based) reads ``h_i`` and writes ``h_{i+1}``::

    h_{i+1} = ReLU(BN(op_i(h_i))) + P(h_{i + 1 - s_i})     if s_i >= 1  (a skip from s_i states back)
    h_{i+1} = ReLU(BN(op_i(h_i)))                           if s_i == 0
    h_{i+1} = h_i                                           if op_i == "identity" (the layer is absent)
    logits  = W mean_t(h_L[:, :, t]) + b

``P`` is a 1x1 convolution (no bias) where the skip's source width differs from the layer's width, else
the identity; ``s_i = 1`` is the usual residual connection (the layer's own input), ``s_i = i + 1`` reaches
back to the stem. Every layer keeps the length (stride 1, "same" padding), so any skip adds up.

**Operations** (:data:`OPS`): ``conv`` (Conv1d, kernel k), ``sep_conv`` (depthwise Conv1d k ->
pointwise 1x1), ``dil_conv`` (Conv1d k with dilation 2), ``identity``. Convolutions have no bias (BN
follows). A layer is written ``"op:width:kernel:skip"``, e.g. ``"conv:32:5:1"``; ``"identity"`` alone.

Shapes: ``x`` ``[B, L]`` or ``[B, C, L]`` (an image ``[B, C, H, W]`` is read in raster order) ->
``[B, num_classes]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...registry import register
from ..base import ArchModel

OPS = ("identity", "conv", "sep_conv", "dil_conv")
"""Layer operations, in the order :class:`archlab.search.macro.MacroSpace` encodes them."""


@dataclass(frozen=True)
class Layer:
    """One layer of the chain; ``skip`` = 0 (none) or how many states back its skip reads (1 = its input)."""

    op: str
    width: int = 0
    kernel: int = 0
    skip: int = 0

    def __str__(self) -> str:
        return self.op if self.op == "identity" else f"{self.op}:{self.width}:{self.kernel}:{self.skip}"


def parse_layers(layers: list[str]) -> list[Layer]:
    """``["conv:32:5:1", "identity", ...]`` -> :class:`Layer` list; ValueError naming the bad entry."""
    out = []
    for i, text in enumerate(layers):
        parts = str(text).split(":")
        if parts[0] not in OPS:
            raise ValueError(f"layers[{i}] = {text!r}: unknown op {parts[0]!r}; one of {', '.join(OPS)}")
        if parts[0] == "identity":
            if len(parts) != 1:
                raise ValueError(f"layers[{i}] = {text!r}: an identity layer is written 'identity'")
            out.append(Layer("identity"))
            continue
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"layers[{i}] = {text!r}: expected 'op:width:kernel:skip' (integers)")
        width, kernel, skip = map(int, parts[1:])
        if width < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"layers[{i}] = {text!r}: need width >= 1 and an odd kernel >= 1")
        if not 0 <= skip <= i + 1:
            raise ValueError(f"layers[{i}] = {text!r}: skip {skip} reaches before the stem (0..{i + 1})")
        out.append(Layer(parts[0], width, kernel, skip))
    return out


@dataclass
class MacroChainConfig:
    in_channels: int = 1
    num_classes: int = 10
    stem_channels: int = 16
    """width of the stem convolution, ``h_0``"""
    layers: list[str] = field(default_factory=lambda: ["conv:32:5:0", "conv:32:3:1", "sep_conv:64:5:0"])
    """the chain, one ``"op:width:kernel:skip"`` (or ``"identity"``) per layer"""

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.num_classes < 2 or self.stem_channels < 1 or not self.layers:
            raise ValueError("need in_channels >= 1, num_classes >= 2, stem_channels >= 1 and at least one layer")
        parse_layers(self.layers)


def make_op(op: str, c_in: int, c_out: int, kernel: int) -> nn.Module:
    """The layer's convolution (BN and ReLU are added by the caller)."""
    if op == "conv":
        return nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
    if op == "sep_conv":
        return nn.Sequential(nn.Conv1d(c_in, c_in, kernel, padding=kernel // 2, groups=c_in, bias=False),
                             nn.Conv1d(c_in, c_out, 1, bias=False))
    if op == "dil_conv":
        return nn.Conv1d(c_in, c_out, kernel, padding=kernel - 1, dilation=2, bias=False)
    raise ValueError(f"unknown op {op!r}")


@register("macro_chain", family="search")
class MacroChain(ArchModel):
    """A chain of conv layers with per-layer op, width, kernel and skip (see the module docstring)."""

    config_class = MacroChainConfig

    def __init__(self, config: MacroChainConfig) -> None:
        super().__init__(config)
        self.chain = parse_layers(config.layers)
        c = config.stem_channels
        self.stem = nn.Sequential(nn.Conv1d(config.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm1d(c),
                                  nn.ReLU())
        widths = [c]  # widths[j]: channels of h_j
        self.ops, self.skips = nn.ModuleList(), nn.ModuleList()
        for i, layer in enumerate(self.chain):
            if layer.op == "identity":
                self.ops.append(nn.Identity())
                self.skips.append(nn.Identity())
                widths.append(widths[i])
                continue
            self.ops.append(nn.Sequential(make_op(layer.op, widths[i], layer.width, layer.kernel),
                                          nn.BatchNorm1d(layer.width), nn.ReLU()))
            src = widths[i + 1 - layer.skip] if layer.skip else layer.width
            self.skips.append(nn.Identity() if src == layer.width else nn.Conv1d(src, layer.width, 1, bias=False))
            widths.append(layer.width)
        self.head = nn.Linear(widths[-1], config.num_classes)

    @classmethod
    def example_input(cls, config: MacroChainConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        elif x.dim() > 3:
            x = x.flatten(2)
        states = [self.stem(x)]
        for i, (layer, op, proj) in enumerate(zip(self.chain, self.ops, self.skips, strict=True)):
            h = op(states[i])
            if layer.op != "identity" and layer.skip:
                h = h + proj(states[i + 1 - layer.skip])
            states.append(h)
        return self.head(states[-1].mean(dim=-1))


__all__ = ["OPS", "Layer", "MacroChain", "MacroChainConfig", "parse_layers"]
