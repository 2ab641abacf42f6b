"""Graph structure learning: a GCN that propagates over the given graph mixed with a graph learned from the
node features, in the style of IDGL (Chen, Wu & Zaki, NeurIPS 2020, "Iterative Deep Graph Learning for
Graph Neural Networks: Better and Robust Node Embeddings").

Learned graph (IDGL's multi-head weighted cosine, Eq. 1, on learned projections ``P_p``)::

    s_ij  = (1/m) sum_{p<m} cos(x_i P_p, x_j P_p)
    A_L   = kNN(S): for every node i keep the k largest s_ij (j != i) as edges j -> i with weight ReLU(s_ij)
    A_L  <- (A_L + A_L^T) / 2                                      symmetrized

Propagation (IDGL's mix with the initial graph, Eq. 4, with one learned graph; GCN layer of Kipf & Welling)::

    Â   = λ norm(A) + (1 - λ) norm(A_L),        norm(B) = D̃^-1/2 (B + I) D̃^-1/2
    H'  = Â H Θ + b

The top-k choice itself is not differentiable; the kept weights ``s_ij`` are, so the gradient of the
loss reaches the projections ``P_p`` through every edge of the learned graph. The graph stays sparse:
similarities are computed ``chunk`` rows at a time for the top-k (no gradient), then recomputed
with gradient for the ``N k`` kept pairs only. The learned graph is built once per forward pass from
the input features and shared by both layers. (IDGL also iterates the learning on the hidden embeddings
and adds graph regularization losses; those are left out here.)

Two implementations of the propagation, equal up to float rounding (tested): ``impl="sparse"``
(the given graph as a cached CSR matrix, the learned graph by message passing so that its weights
get their gradient in ``O(E_L F)``) and ``impl="scatter"`` (generic message passing for both).

Shapes:
    x: (N, in_channels) dense or sparse CSR; edge_index: (2, E) -> (N, out_channels)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...graph import MessagePassing, SparseAdj, coalesce, dropout, gcn_norm, linear, spmm
from ...graph.cache import AdjacencyCache
from ...registry import register
from .base import GraphModel


class GraphLearner(nn.Module):
    """kNN graph of the multi-head cosine similarity ``s_ij = (1/m) sum_p cos(x_i P_p, x_j P_p)``.

    Shapes:
        x: (N, in_channels) dense or sparse CSR -> (edge_index (2, E_L), weight (E_L,))
    """

    def __init__(self, in_channels: int, sim_channels: int = 16, heads: int = 4, k: int = 10,
                 chunk: int = 1024) -> None:
        super().__init__()
        self.sim_channels, self.heads, self.k, self.chunk = sim_channels, heads, k, chunk
        self.weight = nn.Parameter(torch.empty(heads * sim_channels, in_channels))  # [P_0 | ... | P_{m-1}]^T
        nn.init.xavier_uniform_(self.weight)

    def embed(self, x: Tensor) -> Tensor:
        """``z_i = [x_i P_p / |x_i P_p|]_p / sqrt(m)``, so that ``<z_i, z_j> = s_ij``. Shape (N, m * sim)."""
        z = linear(x, self.weight).view(x.shape[0], self.heads, self.sim_channels)
        return (F.normalize(z, dim=-1) / math.sqrt(self.heads)).flatten(1)

    def topk_graph(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Before symmetrization: exactly ``min(k, N - 1)`` incoming edges per node, weights ``ReLU(s_ij)``."""
        z = self.embed(x)
        n = z.shape[0]
        k = min(self.k, n - 1)
        with torch.no_grad():  # which pairs to keep: chunks of rows keep the memory at chunk x N
            picks = []
            for start in range(0, n, self.chunk):
                rows = torch.arange(start, min(start + self.chunk, n), device=z.device)
                sim = z[rows] @ z.t()
                sim[torch.arange(len(rows), device=z.device), rows] = float("-inf")  # no self pairs
                picks.append(sim.topk(k, dim=1).indices)
            src = torch.cat(picks).flatten() if picks else torch.zeros(0, dtype=torch.long, device=z.device)
        dst = torch.arange(n, device=z.device).repeat_interleave(k)
        weight = F.relu((z[src] * z[dst]).sum(-1))  # differentiable s_ij of the kept pairs
        return torch.stack([src, dst]), weight

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The symmetrized learned graph ``(A_L + A_L^T) / 2`` (coalesced)."""
        edge_index, weight = self.topk_graph(x)
        both = torch.cat([edge_index, edge_index.flip(0)], dim=1)
        both_w = torch.cat([weight, weight]) / 2
        edge_index, weight = coalesce(both, x.shape[0], both_w)
        return edge_index, weight


class MixedGraphConv(MessagePassing):
    """``H' = λ Â_A H Θ + (1 - λ) Â_L H Θ + b`` for the normalized given graph ``Â_A`` (a CSR matrix or
    ``(edge_index, weight)``) and the normalized learned graph ``Â_L`` (always ``(edge_index, weight)``).

    The learned graph goes through message passing even on the sparse path: its weights need gradients,
    and a sparse matmul's gradient for its values builds the dense ``N x N`` product ``dOut H^T``.

    Shapes:
        x: (N, in) dense or sparse CSR; given: SparseAdj (N, N) or ((2, E), (E,)); learned: ((2, E_L), (E_L,))
        -> (N, out)
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(aggr="sum")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: Tensor, given: SparseAdj | tuple[Tensor, Tensor], learned: tuple[Tensor, Tensor],
                given_weight: float) -> Tensor:
        h = linear(x, self.weight)
        if isinstance(given, SparseAdj):  # (a NamedTuple: test it before the plain tuple)
            from_given = spmm(given, h)
        else:
            from_given = self.propagate(given[0], h, edge_weight=given[1].to(h.dtype))
        from_learned = self.propagate(learned[0], h, edge_weight=learned[1].to(h.dtype))
        out = given_weight * from_given + (1 - given_weight) * from_learned
        return out if self.bias is None else out + self.bias


@dataclass
class SLGCNConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset)."""
    hidden_channels: int = 16
    """Width of the hidden layer."""
    out_channels: int = 7
    """Output size per node, e.g. the number of classes (filled in from the dataset)."""
    k: int = 10
    """Learned neighbours kept per node (kNN sparsification, before symmetrization)."""
    heads: int = 4
    """Heads ``m`` of the multi-head cosine similarity."""
    sim_channels: int = 16
    """Width of each head's projection ``P_p``."""
    given_weight: float = 0.8
    """``λ`` in ``Â = λ norm(A) + (1 - λ) norm(A_L)``: 1 = plain GCN, 0 = the learned graph only."""
    dropout: float = 0.5
    """Dropout before both layers, input features included (the graph learner sees undropped features)."""
    bias: bool = True
    """Learned bias ``b`` in both layers."""
    impl: Literal["sparse", "scatter"] = "sparse"
    """``sparse``: the given graph as a cached CSR matrix; ``scatter``: generic message passing throughout."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.heads < 1 or self.sim_channels < 1:
            raise ValueError("k, heads and sim_channels must be >= 1")
        if not 0.0 <= self.given_weight <= 1.0:
            raise ValueError(f"given_weight must be in [0, 1], got {self.given_weight}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("slgcn", family="graph")
class SLGCN(GraphModel):
    """Two-layer GCN over the given graph mixed with a kNN graph learned from the node features.

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E) -> (N, out_channels)
    """

    config_class = SLGCNConfig
    accepts_sparse = True

    def __init__(self, config: SLGCNConfig) -> None:
        super().__init__(config)
        c = config
        self.learner = GraphLearner(c.in_channels, c.sim_channels, c.heads, c.k)
        self.conv1 = MixedGraphConv(c.in_channels, c.hidden_channels, c.bias)
        self.conv2 = MixedGraphConv(c.hidden_channels, c.out_channels, c.bias)
        self._given = AdjacencyCache()

    def learned_graph(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The symmetrized learned graph ``(edge_index, weight)`` for features ``x`` (for inspection)."""
        return self.learner(x)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        c, n = self.config, x.shape[0]

        def given_graph() -> SparseAdj | tuple[Tensor, Tensor]:
            ei, w = gcn_norm(edge_index, n)
            return SparseAdj.build(ei, n, w.float()) if c.impl == "sparse" else (ei, w)

        given = self._given.get(edge_index, n, given_graph)  # normalized once per graph
        learned_ei, learned_w = self.learner(x)  # from the undropped input features
        learned = gcn_norm(learned_ei, n, learned_w)
        h = F.relu(self.conv1(dropout(x, c.dropout, self.training), given, learned, c.given_weight))
        return self.conv2(F.dropout(h, c.dropout, self.training), given, learned, c.given_weight)


__all__ = ["GraphLearner", "MixedGraphConv", "SLGCN", "SLGCNConfig"]
