"""DARTS: Differentiable Architecture Search (Liu, Simonyan & Yang, ICLR 2019), on 1-d signals.

Search space (micro, Sec. 2.1): a *cell* is a DAG with two input nodes -- the outputs of the two
previous cells, ``h_{k-2}`` and ``h_{k-1}`` -- and ``steps`` intermediate nodes. Every edge (i, j),
i < j, carries an operation ``o^{(i,j)}`` from :data:`OPS`; a node sums its incoming edges and the
cell outputs its last ``multiplier`` nodes concatenated over channels::

    x_j = sum_{i<j} o^{(i,j)}(x_i)              j = 2 .. steps + 1       (x_0, x_1: the cell inputs)
    cell(h_{k-2}, h_{k-1}) = concat(x_{steps+2-multiplier} .. x_{steps+1})

The network is a stem convolution, ``layers`` cells (the cells at 1/3 and 2/3 of the depth are
*reduction* cells: their input edges have stride 2 and they double the channels), global average
pooling and a linear classifier. All normal cells share one architecture, all reduction cells another.

Continuous relaxation (Sec. 2.2, eq. 2): during search every edge is a *mixed operation*, the
softmax-weighted sum of all candidates, with architecture parameters ``alpha^{(i,j)}``::

    o_bar^{(i,j)}(x) = sum_{o in O} softmax(alpha^{(i,j)})_o * o(x)

Derivation (Sec. 2.4): each intermediate node keeps its two strongest incoming edges, an edge's
strength being ``max_{o != none} softmax(alpha^{(i,j)})_o``, each with that arg-max operation.
:class:`DartsSupernet` is the relaxed network (trained by the ``darts`` loop, ``archlab/train/darts.py``);
:class:`DartsNet` is a derived, discrete network, trained from scratch by the supervised loop.

The operations are the paper's, in 1-d: separable convolutions (twice ReLU -> depthwise conv ->
pointwise conv -> BN), dilated separable convolutions, 3-wide max and average pooling, identity
(a factorized 1x1 reduction where the edge has stride 2) and ``none`` (zero).

Shapes:
    x: ``[B, L]`` (one channel, as MNIST-1D stores it), ``[B, C, L]``, or an image ``[B, C, H, W]`` read in
    raster order as ``[B, C, H * W]`` -> logits ``[B, num_classes]``
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import register
from ..base import ArchModel

PRIMITIVES = ("none", "max_pool_3", "avg_pool_3", "skip_connect", "sep_conv_3", "sep_conv_5", "dil_conv_3",
              "dil_conv_5")
"""The candidate operations of every edge (DARTS's list, 1-d)."""


def as_signal(x: torch.Tensor) -> torch.Tensor:
    """The 1-d input ``[B, C, L]`` of a batch: ``[B, L]`` gains a channel axis, an image ``[B, C, H, W]``
    is read in raster order as ``[B, C, H * W]`` (e.g. digits' 8x8 as a 64-sample signal)."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.flatten(2) if x.dim() > 3 else x


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv1d(k, stride) -> BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool) -> None:
        super().__init__(nn.ReLU(), nn.Conv1d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm1d(c_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU -> depthwise Conv1d(k, dilation) -> pointwise Conv1d -> BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int, affine: bool) -> None:
        padding = dilation * (kernel - 1) // 2
        super().__init__(nn.ReLU(), nn.Conv1d(c_in, c_in, kernel, stride, padding, dilation, groups=c_in, bias=False),
                         nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out, affine=affine))


class SepConv(nn.Sequential):
    """Two DilConv blocks with dilation 1 (the first carries the stride), as in DARTS."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool) -> None:
        super().__init__(DilConv(c_in, c_in, kernel, stride, 1, affine), DilConv(c_in, c_out, kernel, 1, 1, affine))


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output's shape (an edge that is absent)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., ::self.stride] * 0.0


class FactorizedReduce(nn.Module):
    """Halve the length with two 1x1 stride-2 convolutions on offset positions, each giving half the
    channels (so no position is skipped entirely): ``BN(concat(conv_a(relu x), conv_b(relu x[1:])))``."""

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        self.conv_a = nn.Conv1d(c_in, c_out // 2, 1, 2, bias=False)
        self.conv_b = nn.Conv1d(c_in, c_out - c_out // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm1d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if x.shape[-1] % 2:  # even length, so both offsets give ceil(L / 2) positions
            x = F.pad(x, (0, 1))
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(x[..., 1:])], dim=1))


def make_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """One candidate operation from :data:`PRIMITIVES` on ``channels`` channels."""
    c = channels
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3":
        return nn.MaxPool1d(3, stride, padding=1)
    if name == "avg_pool_3":
        return nn.AvgPool1d(3, stride, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name.startswith("sep_conv_"):
        return SepConv(c, c, int(name[-1]), stride, affine)
    if name.startswith("dil_conv_"):
        return DilConv(c, c, int(name[-1]), stride, 2, affine)
    raise ValueError(f"unknown operation {name!r}; operations: {', '.join(PRIMITIVES)}")


class MixedOp(nn.Module):
    """An edge of the supernet: ``sum_o w_o * o(x)`` with ``w = softmax(alpha)`` given by the caller."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        # affine=False in search, as DARTS: learned BN scales would rescale ops and confound alpha.
        self.ops = nn.ModuleList(make_op(p, channels, stride, affine=False) for p in PRIMITIVES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))


def _preprocess(c_pp: int, c_p: int, c: int, reduction_prev: bool, affine: bool) -> tuple[nn.Module, nn.Module]:
    """1x1 convolutions that bring both cell inputs to ``c`` channels (and h_{k-2} to h_{k-1}'s length)."""
    p0 = FactorizedReduce(c_pp, c, affine) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, affine)
    return p0, ReLUConvBN(c_p, c, 1, 1, 0, affine)


class SearchCell(nn.Module):
    """A cell whose every edge is a :class:`MixedOp`; edge (i, j) is ``edges[offset_j + i]``."""

    def __init__(self, steps: int, multiplier: int, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.steps, self.multiplier, self.reduction = steps, multiplier, reduction
        self.pre0, self.pre1 = _preprocess(c_pp, c_p, c, reduction_prev, affine=False)
        self.edges = nn.ModuleList(MixedOp(c, 2 if reduction and i < 2 else 1)
                                   for j in range(steps) for i in range(2 + j))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.steps):
            states.append(sum(self.edges[offset + i](h, weights[offset + i]) for i, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[-self.multiplier:], dim=1)


def num_edges(steps: int) -> int:
    """Edges of a cell: node j (0-based) has 2 + j inputs."""
    return sum(2 + j for j in range(steps))


@dataclass
class DartsSupernetConfig:
    in_channels: int = 1
    """input channels C (1 for MNIST-1D)"""
    num_classes: int = 10
    """number of classes (output logits)"""
    channels: int = 8
    """channels of each cell's nodes in the first stage (doubled at every reduction cell)"""
    layers: int = 5
    """cells in the network; those at layers // 3 and 2 * layers // 3 are reduction cells"""
    steps: int = 3
    """intermediate nodes per cell (DARTS: 4)"""
    multiplier: int = 3
    """last intermediate nodes concatenated into a cell's output (DARTS: 4)"""
    stem_multiplier: int = 3
    """the stem convolution outputs stem_multiplier * channels channels"""

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.num_classes < 2 or not 1 <= self.channels <= 1024:
            raise ValueError("need in_channels >= 1, num_classes >= 2, channels in [1, 1024]")
        if not 1 <= self.layers <= 64 or not 1 <= self.steps <= 8 or not 1 <= self.multiplier <= self.steps:
            raise ValueError("need layers in [1, 64], steps in [1, 8], multiplier in [1, steps]")
        if not 1 <= self.stem_multiplier <= 8:
            raise ValueError("stem_multiplier must be in [1, 8]")


def _stages(layers: int) -> list[bool]:
    """Which cells reduce: those at 1/3 and 2/3 of the depth (DARTS)."""
    return [i in (layers // 3, 2 * layers // 3) and layers >= 3 for i in range(layers)]


class ArchParameters(nn.Module):
    """The architecture ``alpha``: one row of logits over :data:`PRIMITIVES` per edge, for the normal
    and for the reduction cell; its own module so the ``arch`` optimizer owns exactly these."""

    def __init__(self, edges: int) -> None:
        super().__init__()
        # DARTS initialises alpha to 1e-3 * N(0, 1): almost uniform mixtures.
        self.normal = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))
        self.reduce = nn.Parameter(1e-3 * torch.randn(edges, len(PRIMITIVES)))


class SupernetBody(nn.Module):
    """Stem, search cells and classifier: the network weights ``w`` (the ``weights`` optimizer's)."""

    def __init__(self, cfg: DartsSupernetConfig) -> None:
        super().__init__()
        c_stem = cfg.stem_multiplier * cfg.channels
        self.stem = nn.Sequential(nn.Conv1d(cfg.in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm1d(c_stem))
        c_pp, c_p, c = c_stem, c_stem, cfg.channels
        cells, reduction_prev = [], False
        for reduction in _stages(cfg.layers):
            if reduction:
                c *= 2
            cells.append(SearchCell(cfg.steps, cfg.multiplier, c_pp, c_p, c, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, cfg.multiplier * c
        self.cells = nn.ModuleList(cells)
        self.head = nn.Linear(c_p, cfg.num_classes)

    def forward(self, x: torch.Tensor, w_normal: torch.Tensor, w_reduce: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.head(s1.mean(dim=-1))  # global average pooling over positions


@register("darts_supernet", family="search")
class DartsSupernet(ArchModel):
    """DARTS search network: mixed operations on every edge, weighted by softmax(alpha) (Liu et al. 2019).

    ``body`` holds the weights w, ``arch`` the architecture alpha; :meth:`genotype` derives the discrete cell.
    """

    config_class = DartsSupernetConfig
    primitives = PRIMITIVES

    def __init__(self, config: DartsSupernetConfig) -> None:
        super().__init__(config)
        self.body = SupernetBody(config)
        self.arch = ArchParameters(num_edges(config.steps))

    @classmethod
    def example_input(cls, config: DartsSupernetConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_signal(x)
        return self.body(x, F.softmax(self.arch.normal, dim=-1), F.softmax(self.arch.reduce, dim=-1))

    def genotype(self) -> dict[str, list[str]]:
        """The derived cells as ``DartsNet`` config keys: ``normal`` and ``reduce``, two ``"op:input"``
        entries per intermediate node (inputs 0, 1 are the cell inputs, 2.. the earlier nodes)."""
        return {"normal": derive(self.arch.normal, self.config.steps),
                "reduce": derive(self.arch.reduce, self.config.steps)}


def derive(alpha: torch.Tensor, steps: int) -> list[str]:
    """Per node: the two incoming edges with the largest ``max_{o != none} softmax(alpha)_o`` (Sec. 2.4),
    each as ``"op:input"`` with that arg-max operation."""
    weights = F.softmax(alpha.detach().float(), dim=-1)
    none = PRIMITIVES.index("none")
    out, offset = [], 0
    for j in range(steps):
        rows = weights[offset:offset + 2 + j].clone()
        rows[:, none] = -1.0
        strength, best_op = rows.max(dim=-1)
        for i in sorted(strength.argsort(descending=True)[:2].tolist()):
            out.append(f"{PRIMITIVES[best_op[i]]}:{i}")
        offset += 2 + j
    return out


# -- the derived, discrete network ---------------------------------------------------------------
def _parse_genotype(entries: list[str], steps: int, what: str) -> list[tuple[str, int]]:
    if len(entries) != 2 * steps:
        raise ValueError(f"{what} needs 2 entries per intermediate node ({2 * steps} for steps = {steps}), "
                         f"got {len(entries)}")
    parsed = []
    for k, entry in enumerate(entries):
        op, _, src = entry.partition(":")
        if op not in PRIMITIVES or op == "none" or not src.isdigit() or not int(src) < 2 + k // 2:
            raise ValueError(f"{what}[{k}] = {entry!r}: expected 'op:input' with op one of "
                             f"{', '.join(p for p in PRIMITIVES if p != 'none')} and input < {2 + k // 2}")
        parsed.append((op, int(src)))
    return parsed


class DerivedCell(nn.Module):
    """A discrete cell: node j = op_a(x_{i_a}) + op_b(x_{i_b}) (the two edges DARTS kept)."""

    def __init__(self, genotype: list[tuple[str, int]], multiplier: int, c_pp: int, c_p: int, c: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.multiplier, self.reduction = multiplier, reduction
        self.pre0, self.pre1 = _preprocess(c_pp, c_p, c, reduction_prev, affine=True)
        self.inputs = [src for _, src in genotype]
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and src < 2 else 1, affine=True)
                                 for op, src in genotype)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for k in range(0, len(self.ops), 2):
            a, b = self.inputs[k], self.inputs[k + 1]
            states.append(self.ops[k](states[a]) + self.ops[k + 1](states[b]))
        return torch.cat(states[-self.multiplier:], dim=1)


@dataclass
class DartsNetConfig:
    in_channels: int = 1
    """input channels C (1 for MNIST-1D)"""
    num_classes: int = 10
    """number of classes (output logits)"""
    channels: int = 16
    """channels of each cell's nodes in the first stage (doubled at every reduction cell)"""
    layers: int = 5
    """cells; those at layers // 3 and 2 * layers // 3 are reduction cells"""
    steps: int = 3
    """intermediate nodes per cell (must match the genotype: 2 entries per node)"""
    multiplier: int = 3
    """last intermediate nodes concatenated into a cell's output"""
    stem_multiplier: int = 3
    """the stem convolution outputs stem_multiplier * channels channels"""
    normal: list[str] = field(default_factory=lambda: ["sep_conv_3:0", "sep_conv_3:1"] * 3)
    """normal cell: per node two "op:input" entries (``DartsSupernet.genotype()`` / the search's genotype.json)"""
    reduce: list[str] = field(default_factory=lambda: ["max_pool_3:0", "max_pool_3:1"] * 3)
    """reduction cell, as ``normal``"""
    dropout: float = 0.0
    """dropout before the classifier"""

    def __post_init__(self) -> None:
        DartsSupernetConfig(self.in_channels, self.num_classes, self.channels, self.layers, self.steps,
                            self.multiplier, self.stem_multiplier)
        _parse_genotype(self.normal, self.steps, "normal")
        _parse_genotype(self.reduce, self.steps, "reduce")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("darts_net", family="search")
class DartsNet(ArchModel):
    """A network of derived DARTS cells (Liu et al. 2019, Sec. 2.4), trained from scratch."""

    config_class = DartsNetConfig

    def __init__(self, config: DartsNetConfig) -> None:
        super().__init__(config)
        normal = _parse_genotype(config.normal, config.steps, "normal")
        reduce = _parse_genotype(config.reduce, config.steps, "reduce")
        c_stem = config.stem_multiplier * config.channels
        self.stem = nn.Sequential(nn.Conv1d(config.in_channels, c_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm1d(c_stem))
        c_pp, c_p, c = c_stem, c_stem, config.channels
        cells, reduction_prev = [], False
        for reduction in _stages(config.layers):
            if reduction:
                c *= 2
            cells.append(DerivedCell(reduce if reduction else normal, config.multiplier, c_pp, c_p, c, reduction,
                                     reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, config.multiplier * c
        self.cells = nn.ModuleList(cells)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c_p, config.num_classes)

    @classmethod
    def example_input(cls, config: DartsNetConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_channels, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_signal(x)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(self.dropout(s1.mean(dim=-1)))
