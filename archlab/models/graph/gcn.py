"""Graph Convolutional Network (Kipf & Welling, ICLR 2017, "Semi-Supervised Classification with Graph
Convolutional Networks").

One layer (their Eq. 2):

    H' = Â H W + b,        Â = D̃^-1/2 (A + I) D̃^-1/2,   D̃_ii = sum_j (A + I)_ij

The model stacks ``num_layers`` layers with ReLU between them and dropout before each layer
(also on the input features, as in the authors' code); the output is unnormalized logits.

Two implementations of ``Â (H W)``, equal up to float rounding (tested):
``impl="sparse"`` builds Â once as a CSR matrix (cached per ``edge_index``) and uses one sparse
matmul; ``impl="scatter"`` is the generic message-passing path (``w_ji * h_j`` summed into ``i``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...graph import MessagePassing, SparseAdj, dropout, gcn_norm, linear, spmm
from ...graph.cache import AdjacencyCache
from ...registry import register
from .base import GraphModel


class GCNConv(MessagePassing):
    """``x_i' = sum_{j in N(i) ∪ {i}} x_j W / sqrt(d̃_j d̃_i) + b``.

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E); edge_weight: (E,) or None
        -> (N, out_channels)
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True,
                 impl: Literal["sparse", "scatter"] = "sparse", add_self_loops: bool = True) -> None:
        super().__init__(aggr="sum")
        self.in_channels, self.out_channels, self.impl, self.add_loops = in_channels, out_channels, impl, add_self_loops
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._cache = AdjacencyCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)  # Glorot & Bengio (2010), as in the paper
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        n = x.shape[0]
        h = linear(x, self.weight)
        if self.impl == "sparse":
            def build() -> SparseAdj:
                ei, w = gcn_norm(edge_index, n, edge_weight, self.add_loops)
                return SparseAdj.build(ei, n, w.float())
            adj = self._cache.get(edge_index, n, build) if edge_weight is None else build()
            out = spmm(adj, h)
        else:
            ei, w = gcn_norm(edge_index, n, edge_weight, self.add_loops)
            out = self.propagate(ei, h, edge_weight=w.to(h.dtype))
        return out if self.bias is None else out + self.bias


@dataclass
class GCNConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset by the graph loops)."""
    hidden_channels: int = 16
    out_channels: int = 7
    """Output size per node, e.g. the number of classes (filled in from the dataset)."""
    num_layers: int = 2
    dropout: float = 0.5
    """Dropout before every layer, input features included (Kipf & Welling's code)."""
    bias: bool = True
    impl: Literal["sparse", "scatter"] = "sparse"
    """``sparse``: cached CSR Â and one sparse matmul per layer; ``scatter``: generic message passing."""

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.hidden_channels < 1:
            raise ValueError(f"num_layers and hidden_channels must be >= 1, got {self.num_layers}, "
                             f"{self.hidden_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("gcn", family="graph",
          description="Graph Convolutional Network (Kipf & Welling 2017): renormalized-adjacency propagation.")
class GCN(GraphModel):
    """Stack of :class:`GCNConv` with ReLU and dropout; returns per-node logits.

    A dense, mostly-zero ``x`` (bag of words) takes the sparse path by itself (:meth:`input_features`).

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E) -> (N, out_channels)
    """

    config_class = GCNConfig
    accepts_sparse = True

    def __init__(self, config: GCNConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.in_channels] + [c.hidden_channels] * (c.num_layers - 1) + [c.out_channels]
        self.convs = nn.ModuleList(GCNConv(a, b, c.bias, c.impl) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        x = self.input_features(x)  # dense bag-of-words -> CSR, once per x tensor
        for k, conv in enumerate(self.convs):
            x = dropout(x, self.config.dropout, self.training)
            x = conv(x, edge_index, edge_weight)
            if k < len(self.convs) - 1:
                x = F.relu(x)
        return x


__all__ = ["GCN", "GCNConfig", "GCNConv"]
