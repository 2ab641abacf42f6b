"""Hypergraph Neural Network (Feng et al., AAAI 2019, "Hypergraph Neural Networks"), with the row-normalized
hypergraph convolution of Bai, Zhang & Torr (Pattern Recognition 2021, "Hypergraph Convolution and
Hypergraph Attention").

A hypergraph has ``M`` hyperedges, each a set of nodes; ``H`` is the ``(N, M)`` incidence matrix
(``H_ve = 1`` when node ``v`` is in hyperedge ``e``) and ``W = diag(w_e)`` the hyperedge weights
(``I`` by default). One layer (Bai et al., Eq. 4)::

    X' = D_v^-1 H W D_e^-1 H^T X Θ + b,        D_v = sum_e w_e H_ve,   D_e = sum_v H_ve

read right to left: every hyperedge averages its members' ``XΘ`` (node -> hyperedge), every node
takes the ``w``-weighted average of its hyperedges (hyperedge -> node). (Feng et al. normalize
symmetrically, ``D_v^-1/2 H W D_e^-1 H^T D_v^-1/2``; the row-normalized form keeps every output a
convex combination, as PyG's ``HypergraphConv``.)

The incidence is given as ``hyperedge_index`` (2, nnz): row 0 the node id, row 1 the hyperedge id, so
it reads as edges ``node -> hyperedge`` in the convention of :mod:`archlab.graph.structure`.

From an ordinary graph Feng et al. build one hyperedge per node: the node and its neighbours
(:func:`neighborhood_hyperedges`), so the model runs on Cora in the node loop.

Two implementations of the propagation, equal up to float rounding (tested): ``impl="sparse"``
caches ``D_e^-1 H^T`` and ``D_v^-1 H W`` as CSR matrices (two sparse matmuls); ``impl="scatter"``
runs two generic message-passing passes (node -> hyperedge, hyperedge -> node).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...graph import MessagePassing, SparseAdj, coalesce, degree, dropout, linear, remove_self_loops, spmm
from ...graph.cache import AdjacencyCache
from ...registry import register
from .base import GraphModel


def neighborhood_hyperedges(edge_index: Tensor, num_nodes: int) -> Tensor:
    """One hyperedge per node ``i``: ``{i} ∪ {j : (j, i) in E}`` (hyperedge id = ``i``).

    Shapes: edge_index: (2, E) -> hyperedge_index (2, nnz), row 0 node, row 1 hyperedge; each node
    appears at most once per hyperedge.
    """
    edges, _ = remove_self_loops(edge_index)
    edges, _ = coalesce(edges, num_nodes)  # a repeated edge must not put a node into a hyperedge twice
    loops = torch.arange(num_nodes, device=edge_index.device).repeat(2, 1)
    return torch.cat([edges, loops], dim=1)


class HypergraphConv(MessagePassing):
    """``X' = D_v^-1 H W D_e^-1 H^T X Θ + b``.

    ``hyperedge_weight`` is treated as data on the sparse path (the cached matrices carry no gradient);
    ``impl="scatter"`` differentiates through it, for learned hyperedge weights.

    Shapes:
        x: (N, in_channels) dense or sparse CSR; hyperedge_index: (2, nnz);
        hyperedge_weight: (M,) or None (all 1) -> (N, out_channels)
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True,
                 impl: Literal["sparse", "scatter"] = "sparse") -> None:
        super().__init__(aggr="sum")
        self.in_channels, self.out_channels, self.impl = in_channels, out_channels, impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._cache = AdjacencyCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @staticmethod
    def normalization(hyperedge_index: Tensor, num_nodes: int, num_hyperedges: int,
                      hyperedge_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-incidence factors of the two passes: ``1 / D_e[e]`` (node -> hyperedge) and
        ``w_e / D_v[v]`` (hyperedge -> node); empty hyperedges and isolated nodes get 0."""
        node, edge = hyperedge_index
        w = hyperedge_weight if hyperedge_weight is not None else \
            torch.ones(num_hyperedges, device=hyperedge_index.device)
        d_e = degree(edge, num_hyperedges)
        d_v = degree(node, num_nodes, w[edge])
        inv_e = torch.where(d_e > 0, 1.0 / d_e, torch.zeros_like(d_e))
        inv_v = torch.where(d_v > 0, 1.0 / d_v, torch.zeros_like(d_v))
        return inv_e[edge], w[edge] * inv_v[node]

    def forward(self, x: Tensor, hyperedge_index: Tensor, hyperedge_weight: Tensor | None = None,
                num_hyperedges: int | None = None) -> Tensor:
        n = x.shape[0]
        if num_hyperedges is None:
            num_hyperedges = int(hyperedge_index[1].max()) + 1 if hyperedge_index.numel() else 0
        m = num_hyperedges
        h = linear(x, self.weight)
        to_node = hyperedge_index.flip(0)  # hyperedge -> node
        if self.impl == "sparse":
            def build() -> tuple[SparseAdj, SparseAdj]:
                gather, spread = self.normalization(hyperedge_index, n, m, hyperedge_weight)
                return (SparseAdj.build(hyperedge_index, m, gather.float(), num_cols=n),  # D_e^-1 H^T: (M, N)
                        SparseAdj.build(to_node, n, spread.float(), num_cols=m))  # D_v^-1 H W: (N, M)
            gather_mat, spread_mat = self._cache.get(hyperedge_index, n, build) if hyperedge_weight is None \
                else build()
            out = spmm(spread_mat, spmm(gather_mat, h))
        else:
            gather, spread = self.normalization(hyperedge_index, n, m, hyperedge_weight)
            edge_feat = self.propagate(hyperedge_index, (h, None), num_nodes=m, edge_weight=gather.to(h.dtype))
            out = self.propagate(to_node, (edge_feat, None), num_nodes=n, edge_weight=spread.to(h.dtype))
        return out if self.bias is None else out + self.bias


@dataclass
class HGNNConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset)."""
    hidden_channels: int = 16
    """Width of the hidden layer(s)."""
    out_channels: int = 7
    """Output size per node, e.g. the number of classes (filled in from the dataset)."""
    num_layers: int = 2
    """Number of hypergraph convolutions (ReLU between them)."""
    dropout: float = 0.5
    """Dropout before every layer, input features included."""
    hyperedges: Literal["neighborhood", "given"] = "neighborhood"
    """``neighborhood``: the second input is a graph's ``edge_index`` and every node's closed neighbourhood
    becomes a hyperedge (Feng et al.); ``given``: the second input is already a ``hyperedge_index``."""
    bias: bool = True
    """Learned bias ``b`` in every layer."""
    impl: Literal["sparse", "scatter"] = "sparse"
    """``sparse``: cached CSR incidence matrices; ``scatter``: generic two-pass message passing."""

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("hgnn", family="graph",
          description="Hypergraph neural network (Feng et al. 2019): node -> hyperedge -> node convolution.")
class HGNN(GraphModel):
    """Stack of :class:`HypergraphConv` with ReLU and dropout; returns per-node logits.

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E) graph edges (``hyperedges="neighborhood"``)
        or (2, nnz) incidence (``hyperedges="given"``); hyperedge_weight: (M,) or None -> (N, out_channels)
    """

    config_class = HGNNConfig
    accepts_sparse = True

    def __init__(self, config: HGNNConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.in_channels] + [c.hidden_channels] * (c.num_layers - 1) + [c.out_channels]
        self.convs = nn.ModuleList(HypergraphConv(a, b, c.bias, c.impl) for a, b in zip(dims[:-1], dims[1:],
                                                                                         strict=True))
        self._hyperedges = AdjacencyCache()

    def forward(self, x: Tensor, edge_index: Tensor, hyperedge_weight: Tensor | None = None) -> Tensor:
        n = x.shape[0]
        if self.config.hyperedges == "neighborhood":
            # cached, so the layers' own caches see the same incidence tensor every step
            incidence = self._hyperedges.get(edge_index, n, lambda: neighborhood_hyperedges(edge_index, n))
            num_hyperedges = n
        else:
            incidence, num_hyperedges = edge_index, None
        for k, conv in enumerate(self.convs):
            x = dropout(x, self.config.dropout, self.training)
            x = conv(x, incidence, hyperedge_weight, num_hyperedges)
            if k < len(self.convs) - 1:
                x = F.relu(x)
        return x


__all__ = ["HGNN", "HGNNConfig", "HypergraphConv", "neighborhood_hyperedges"]
