"""Relational GCN (Schlichtkrull et al., ESWC 2018, "Modeling Relational Data with Graph Convolutional
Networks").

Every edge has a relation type ``r``; messages are transformed by a per-relation matrix and averaged
per relation (their Eq. 2), plus a self-connection::

    h_i' = W_0 h_i + sum_r sum_{j in N_r(i)} (1 / c_{i,r}) W_r h_j + b,        c_{i,r} = |N_r(i)|

With many relations the ``W_r`` are tied by a basis decomposition (their Eq. 3)::

    W_r = sum_{b<B} a_{rb} V_b                 (``num_bases = B``; 0 = a free W_r per relation)

Computation: ``X W_r`` for all relations at once (with bases: ``X V_b`` for the ``B`` bases, then
mixed by ``a_rb``), stacked as an ``(R N, out)`` table whose row ``r N + j`` is ``h_j W_r``; an edge
``j -> i`` of type ``r`` then reads row ``r N + j``. ``impl="sparse"`` does the sum as one CSR matmul
``(N, R N) @ (R N, out)`` (cached per ``edge_index``); ``impl="scatter"`` is the generic message-passing
path over the same table. Equal up to float rounding (tested).

Shapes:
    x: (N, in_channels); edge_index: (2, E); edge_type: (E,) int64 in [0, num_relations), or None
    (every edge has relation 0) -> (N, out_channels)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...graph import MessagePassing, SparseAdj, spmm
from ...graph.cache import AdjacencyCache
from ...registry import register
from .base import GraphModel, random_graph


def relation_norm(edge_index: Tensor, edge_type: Tensor, num_nodes: int, num_relations: int) -> Tensor:
    """``1 / c_{i,r}`` for every edge ``j -> i`` of type ``r`` (``c_{i,r}`` = edges of type r into i). Shape (E,)."""
    key = edge_index[1] * num_relations + edge_type
    count = torch.bincount(key, minlength=num_nodes * num_relations)
    return 1.0 / count[key].float()


class RGCNConv(MessagePassing):
    """``h_i' = W_0 h_i + sum_r sum_{j in N_r(i)} W_r h_j / c_{i,r} + b``, optionally ``W_r = sum_b a_rb V_b``.

    Shapes:
        x: (N, in_channels); edge_index: (2, E); edge_type: (E,) or None -> (N, out_channels)
    """

    def __init__(self, in_channels: int, out_channels: int, num_relations: int, num_bases: int = 0,
                 bias: bool = True, impl: Literal["sparse", "scatter"] = "sparse") -> None:
        super().__init__(aggr="sum")
        self.in_channels, self.out_channels, self.impl = in_channels, out_channels, impl
        self.num_relations, self.num_bases = num_relations, num_bases
        if num_bases > 0:
            self.basis = nn.Parameter(torch.empty(num_bases, in_channels, out_channels))  # V_b
            self.comp = nn.Parameter(torch.empty(num_relations, num_bases))  # a_rb
        else:
            self.weight = nn.Parameter(torch.empty(num_relations, in_channels, out_channels))  # W_r
        self.root = nn.Parameter(torch.empty(in_channels, out_channels))  # W_0
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._cache = AdjacencyCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in self.basis if self.num_bases > 0 else self.weight:
            nn.init.xavier_uniform_(w)
        if self.num_bases > 0:
            nn.init.xavier_uniform_(self.comp)
        nn.init.xavier_uniform_(self.root)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def relation_weights(self) -> Tensor:
        """The ``W_r`` as one (R, in, out) tensor (built from the bases when decomposed)."""
        if self.num_bases > 0:
            return torch.einsum("rb,bio->rio", self.comp, self.basis)
        return self.weight

    def _transformed(self, x: Tensor) -> Tensor:
        """Row ``r N + j`` = ``x_j W_r``: (R N, out)."""
        if self.num_bases > 0:  # X V_b for B bases, then mix: cheaper than X W_r when B < R
            xv = torch.einsum("ni,bio->bno", x, self.basis)
            h = torch.einsum("rb,bno->rno", self.comp, xv)
        else:
            h = torch.einsum("ni,rio->rno", x, self.weight)
        return h.reshape(-1, self.out_channels)

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor | None = None) -> Tensor:
        n, r = x.shape[0], self.num_relations
        graph_key = (edge_index, edge_type)  # before edge_type gets its default
        if edge_type is None:
            edge_type = torch.zeros(edge_index.shape[1], dtype=torch.long, device=edge_index.device)
        table = self._transformed(x)
        # edge j -> i of type r reads row r N + j of the table
        table_edges = torch.stack([edge_type * n + edge_index[0], edge_index[1]])
        if self.impl == "sparse":
            def build() -> SparseAdj:  # full-batch training builds the CSR matrix once
                return SparseAdj.build(table_edges, n, relation_norm(edge_index, edge_type, n, r), num_cols=r * n)
            out = spmm(self._cache.get(graph_key, n, build), table)
        else:
            norm = relation_norm(edge_index, edge_type, n, r).to(table.dtype)
            out = self.propagate(table_edges, (table, None), num_nodes=n, edge_weight=norm)
        out = out + x @ self.root
        return out if self.bias is None else out + self.bias


@dataclass
class RGCNConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset)."""
    hidden_channels: int = 16
    """Width of the hidden layer(s) (16 in Schlichtkrull et al.'s entity classification)."""
    out_channels: int = 7
    """Output size per node, e.g. the number of classes (filled in from the dataset)."""
    num_relations: int = 3
    """Relation types ``R``; ``edge_type`` values lie in ``[0, R)``."""
    num_bases: int = 0
    """Bases ``B`` of the decomposition ``W_r = sum_b a_rb V_b``; 0 = a free matrix per relation."""
    num_layers: int = 2
    """Number of R-GCN layers (ReLU between them)."""
    dropout: float = 0.0
    """Dropout before every layer, input features included."""
    bias: bool = True
    """Learned bias ``b`` in every layer."""
    impl: Literal["sparse", "scatter"] = "sparse"
    """``sparse``: one cached CSR matmul per layer; ``scatter``: generic message passing."""

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.num_relations < 1:
            raise ValueError("num_layers and num_relations must be >= 1")
        if self.num_bases < 0:
            raise ValueError(f"num_bases must be >= 0, got {self.num_bases}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("rgcn", family="graph",
          description="Relational GCN (Schlichtkrull et al. 2018): per-relation weights, basis decomposition.")
class RGCN(GraphModel):
    """Stack of :class:`RGCNConv` with ReLU and dropout; returns per-node logits.

    Shapes:
        x: (N, in_channels); edge_index: (2, E); edge_type: (E,) or None -> (N, out_channels)
    """

    config_class = RGCNConfig

    def __init__(self, config: RGCNConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.in_channels] + [c.hidden_channels] * (c.num_layers - 1) + [c.out_channels]
        self.convs = nn.ModuleList(RGCNConv(a, b, c.num_relations, c.num_bases, c.bias, c.impl)
                                   for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor, edge_index: Tensor, edge_type: Tensor | None = None) -> Tensor:
        for k, conv in enumerate(self.convs):
            x = F.dropout(x, self.config.dropout, self.training)
            x = conv(x, edge_index, edge_type)
            if k < len(self.convs) - 1:
                x = F.relu(x)
        return x

    @classmethod
    def example_input(cls, config: RGCNConfig, batch_size: int = 2) -> tuple[Tensor, ...]:
        """A random graph with ``4 * batch_size`` nodes and random relation types: ``(x, edge_index, edge_type)``."""
        x, edge_index = random_graph(4 * batch_size, config.in_channels)
        gen = torch.Generator().manual_seed(1)
        edge_type = torch.randint(0, config.num_relations, (edge_index.shape[1],), generator=gen)
        return x, edge_index, edge_type


__all__ = ["RGCN", "RGCNConfig", "RGCNConv", "relation_norm"]
