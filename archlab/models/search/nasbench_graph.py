"""The NAS-Bench-Graph macro architecture (Qin et al. 2022, "NAS-Bench-Graph: Benchmarking Graph Neural
Architecture Search", NeurIPS Datasets & Benchmarks, Sec. 3.1) built from a genotype with archlab's own
graph layers, so a table architecture trains with the ordinary node loop and can be checked against
the table (:mod:`archlab.search.nasbench`).

**Wiring** (one cell; ``link[i]`` is the input of computing node ``i + 1``, 0 = the cell's input):

    h_0     = dropout(X)                                    (N, F)   then ``num_pre`` linear layers
    h_{i+1} = op_i(pre(h_{link[i]}), A)                     (N, d)
    pre(h)  = dropout(ReLU(BN_i(h)))   if h is a hidden state,   h   if h is still the raw input
    z       = W_c ReLU([h_j for the leaves j]) + b_c        (N, d) with ``num_post`` >= 1, else (N, C)
    logits  = post(z)                                       ``num_post`` linear layers (ELU between)

A node is a *leaf* when no other node reads it; leaves are concatenated in node order. "Raw input"
covers ``h_0`` without pre-processing layers and any chain of ``skip`` nodes reading it (their ops
take ``F`` inputs instead of ``d``). Dropout, BN per computing node and the ReLU before the cell's
classifier follow the benchmark's released training code.

**Operations** (:data:`LAYERS`), all archlab layers: ``gcn`` (:class:`~archlab.models.graph.gcn.GCNConv`),
``gat`` (:class:`~archlab.models.graph.gat.GATConv`, ``gat_heads`` heads of ``d / heads`` concatenated),
``gin`` (:class:`~archlab.models.graph.gin.GINConv` over one linear layer, ε = 0 fixed), ``cheb``
(:class:`~archlab.models.graph.cheb.ChebConv`, K = 2), ``sage`` (:class:`~archlab.models.graph.sage.SAGEConv`,
mean), ``fc`` (a linear layer) and ``skip`` (identity). ``arma`` (ARMA filters, Bianchi et al.) and
``graph`` (k-GNN's GraphConv, Morris et al.) have no archlab layer: a genotype using them is refused.

Shapes: ``x`` (N, in_channels) dense; ``edge_index`` (2, E) -> (N, out_channels) logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ArchlabError
from ...registry import register
from ..graph.base import GraphModel
from ..graph.cheb import ChebConv
from ..graph.gat import GATConv
from ..graph.gcn import GCNConv
from ..graph.gin import GINConv
from ..graph.sage import SAGEConv

#: the node operations, in the benchmark's index order (archlab.search.nasbench reads the tables with them)
OPS = ("gat", "gcn", "gin", "cheb", "sage", "arma", "graph", "fc", "skip")
#: the canonical link patterns (input node of each computing node), in the benchmark's index order
LINKS = (
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 1), (0, 0, 1, 2), (0, 0, 1, 3),
    (0, 1, 1, 1), (0, 1, 1, 2), (0, 1, 2, 2), (0, 1, 2, 3),
)

#: the operations archlab has layers for
LAYERS = ("gat", "gcn", "gin", "cheb", "sage", "fc", "skip")
#: benchmark operations without an archlab layer, and why
MISSING = {"arma": "ARMA filters (Bianchi et al. 2021) are not implemented in archlab",
           "graph": "k-GNN's GraphConv (Morris et al. 2019) is not implemented in archlab"}


class _Linear(nn.Module):
    """``fc``: a node-wise linear layer (ignores the graph)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.lin(x)


class _Skip(nn.Module):
    """``skip``: the identity."""

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return x


def make_op(name: str, in_channels: int, out_channels: int, gat_heads: int = 4, cheb_k: int = 2) -> nn.Module:
    """One operation as a module ``op(x (N, in), edge_index) -> (N, out)`` (``skip``: in == out)."""
    if name in MISSING:
        raise ArchlabError(f"NAS-Bench-Graph op {name!r} has no archlab layer ({MISSING[name]}); "
                           f"pick an architecture over {', '.join(LAYERS)}")
    if name == "gcn":
        return GCNConv(in_channels, out_channels)
    if name == "gat":
        if out_channels % gat_heads:
            raise ArchlabError(f"gat: hidden_channels {out_channels} is not divisible by gat_heads {gat_heads}")
        return GATConv(in_channels, out_channels // gat_heads, heads=gat_heads, concat=True)
    if name == "gin":
        return GINConv(nn.Linear(in_channels, out_channels), eps=0.0, train_eps=False)
    if name == "cheb":
        return ChebConv(in_channels, out_channels, K=cheb_k)
    if name == "sage":
        return SAGEConv(in_channels, out_channels, aggr="mean")
    if name == "fc":
        return _Linear(in_channels, out_channels)
    if name == "skip":
        return _Skip()
    raise ArchlabError(f"unknown NAS-Bench-Graph op {name!r}; one of {', '.join(OPS)}")


def leaves(link: tuple[int, ...] | list[int]) -> list[int]:
    """States (1-based computing nodes) that no node reads: they feed the output, in node order."""
    read = set(link)
    return [j for j in range(1, len(link) + 1) if j not in read]


@dataclass
class NASBenchGraphNetConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset by the graph loops)."""
    out_channels: int = 7
    """Number of classes (filled in from the dataset)."""
    link: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    """Input of each computing node: 0 = the cell input, j = computing node j (< own index)."""
    ops: list[str] = field(default_factory=lambda: ["fc", "gat", "fc", "gin"])
    """Operation of each computing node (see :data:`LAYERS`)."""
    hidden_channels: int = 256
    """``d``: every computing node's width (the benchmark's ``dim``)."""
    dropout: float = 0.7
    num_pre: int = 0
    """Linear pre-processing layers before the cell."""
    num_post: int = 1
    """Linear post-processing layers after the cell (0: the cell's classifier outputs the logits)."""
    gat_heads: int = 4
    cheb_k: int = 2
    canonical: bool = False
    """Require ``link`` to be one of the benchmark's canonical patterns (:data:`LINKS`)."""

    def __post_init__(self) -> None:
        if len(self.link) != len(self.ops) or not self.link:
            raise ValueError(f"link and ops need the same non-zero length, got {self.link}, {self.ops}")
        if any(not 0 <= j <= i for i, j in enumerate(self.link)):
            raise ValueError(f"link[i] must be in [0, i] (an earlier state), got {self.link}")
        if self.canonical and tuple(self.link) not in LINKS:
            raise ValueError(f"link {self.link} is not one of the canonical patterns {list(LINKS)}")
        bad = [o for o in self.ops if o not in OPS]
        if bad:
            raise ValueError(f"unknown op {bad[0]!r}; one of {', '.join(OPS)}")
        if not 0.0 <= self.dropout < 1.0 or self.hidden_channels < 1 or self.num_pre < 0 or self.num_post < 0:
            raise ValueError("need 0 <= dropout < 1, hidden_channels >= 1, num_pre >= 0, num_post >= 0")


@register("nasbench_graph", family="graph",
          description="NAS-Bench-Graph macro architecture (Qin et al. 2022) from a genotype, on archlab's layers.")
class NASBenchGraphNet(GraphModel):
    """One NAS-Bench-Graph cell between optional linear pre-/post-processing layers; per-node logits.

    Shapes:
        x: (N, in_channels); edge_index: (2, E) -> (N, out_channels)
    """

    config_class = NASBenchGraphNetConfig

    def __init__(self, config: NASBenchGraphNetConfig) -> None:
        super().__init__(config)
        c = config
        for op in c.ops:
            if op in MISSING:
                make_op(op, 1, 1)  # raises the one-line error
        d = c.hidden_channels
        self.pre = nn.ModuleList(nn.Linear(c.in_channels if i == 0 else d, d) for i in range(c.num_pre))
        # raw[j]: state j is still the un-preprocessed input (no pre layers, reached through skips only)
        self.raw = [c.num_pre == 0]
        dims = [c.in_channels if c.num_pre == 0 else d]
        self.ops = nn.ModuleList()
        self.norms = nn.ModuleList()
        for op, j in zip(c.ops, c.link, strict=True):
            self.ops.append(make_op(op, dims[j], d, c.gat_heads, c.cheb_k))
            self.norms.append(nn.Identity() if self.raw[j] else nn.BatchNorm1d(dims[j]))
            self.raw.append(self.raw[j] and op == "skip")
            dims.append(dims[j] if op == "skip" else d)
        self.leaves = leaves(c.link)
        width = sum(dims[j] for j in self.leaves)
        self.classifier = nn.Linear(width, d if c.num_post else c.out_channels)
        self.post = nn.ModuleList(nn.Linear(d, c.out_channels if i == c.num_post - 1 else d)
                                  for i in range(c.num_post))

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        c = self.config
        x = x.to_dense() if x.layout != torch.strided else x
        h = F.dropout(x, c.dropout, self.training)
        for i, lin in enumerate(self.pre):
            h = lin(h)
            if i < c.num_pre - 1:
                h = F.elu(h)
        states = [h]
        for op, norm, j in zip(self.ops, self.norms, c.link, strict=True):
            inp = states[j]
            if not self.raw[j]:
                inp = F.dropout(F.relu(norm(inp)), c.dropout, self.training)
            states.append(op(inp, edge_index))
        z = self.classifier(F.relu(torch.cat([states[j] for j in self.leaves], dim=1)))
        for i, lin in enumerate(self.post):
            z = lin(z)
            if i < c.num_post - 1:
                z = F.elu(z)
        return z


__all__ = ["LAYERS", "MISSING", "NASBenchGraphNet", "NASBenchGraphNetConfig", "leaves", "make_op"]
