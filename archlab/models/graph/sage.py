"""GraphSAGE (Hamilton, Ying & Leskovec, NeurIPS 2017, "Inductive Representation Learning on Large
Graphs").

One layer (their Algorithm 1, with the concatenation ``W [h_i || a_i]`` written as two matrices):

    a_i  = AGG_{j in N(i)} h_j
    h_i' = W_self h_i + W_neigh a_i + b
    h_i' = σ(h_i') / ||σ(h_i')||_2                  (optional; Algorithm 1, lines 5 and 7)

The layer's own ``normalize`` option L2-normalizes its output (no σ); the model applies σ = ReLU
first and then normalizes, as the paper does.

Aggregators: ``mean`` (their "mean aggregator", without the self term), ``max`` (their "pooling
aggregator": ``a_i = max_j σ(W_pool h_j + b_pool)``, elementwise max, σ = ReLU) and ``gcn`` (their
"GCN aggregator", Eq. 2: ``h_i' = W_neigh MEAN({h_i} ∪ {h_j : j in N(i)}) + b``, no ``W_self``).

Two implementations of the means, equal up to float rounding (tested): ``impl="fast"`` multiplies by
the row-normalized adjacency ``D^-1 A`` (``A + I`` for ``gcn``; CSR, cached per ``edge_index``);
``impl="generic"`` is the message-passing path. Because the mean is linear, both project with
``W_neigh`` first when that shrinks the features (and always for a sparse ``x``), so the aggregation
moves fewer numbers.

The model stacks ``num_layers`` layers with ReLU and dropout before each (input included); the
defaults are the setup of DGL's full-graph Cora example (hidden 16, dropout 0.5). That example's
~83% uses the ``gcn`` aggregator (``examples/pytorch/graphsage/train_full.py``); ``mean`` gives ~81%.
With ``data.fanouts`` the node loop trains on sampled neighbourhoods as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...graph import MessagePassing, SparseAdj, add_self_loops, degree, dropout, linear, remove_self_loops, spmm
from ...graph.cache import AdjacencyCache
from ...registry import register
from .base import GraphModel


class SAGEConv(MessagePassing):
    """``h_i' = W_self h_i + W_neigh AGG_{j in N(i)} h_j + b`` (optionally L2-normalized).

    Parameters: ``weight_neigh``, ``weight_self`` (out, in), ``bias`` (out); with ``aggr="max"`` also
    ``weight_pool`` (in, in) and ``bias_pool`` (in). ``aggr="gcn"`` has no ``weight_self`` (the node is
    part of its own mean). Nodes without neighbours aggregate to 0.

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E) -> (N, out_channels)
    """

    def __init__(self, in_channels: int, out_channels: int, aggr: Literal["mean", "max", "gcn"] = "mean",
                 normalize: bool = False, root_weight: bool = True, bias: bool = True,
                 impl: Literal["fast", "generic"] = "fast") -> None:
        if aggr not in ("mean", "max", "gcn"):
            raise ValueError(f"aggr must be 'mean', 'max' or 'gcn', got {aggr!r}")
        super().__init__(aggr="max" if aggr == "max" else "mean")
        self.in_channels, self.out_channels, self.normalize, self.impl = in_channels, out_channels, normalize, impl
        self.self_in_mean = aggr == "gcn"
        root_weight = root_weight and not self.self_in_mean
        if aggr == "max":
            self.weight_pool = nn.Parameter(torch.empty(in_channels, in_channels))
            self.bias_pool = nn.Parameter(torch.zeros(in_channels))
        self.weight_neigh = nn.Parameter(torch.empty(out_channels, in_channels))
        self.weight_self = nn.Parameter(torch.empty(out_channels, in_channels)) if root_weight else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._cache = AdjacencyCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)

    def _mean_adjacency(self, edge_index: Tensor, n: int) -> SparseAdj:
        """``D^-1 A`` as CSR (and its transpose, for the backward): row ``i`` holds ``1 / deg_in(i)`` at each
        source (duplicate edges count twice); ``gcn`` adds one loop per node first."""
        if self.self_in_mean:
            edge_index, _ = add_self_loops(edge_index, n)
        deg = degree(edge_index[1], n)
        return SparseAdj.build(edge_index, n, 1.0 / deg[edge_index[1]])

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n, root = x.shape[0], None
        if self.self_in_mean and self.impl == "generic":  # the fast path adds the loops once, in its cache
            edge_index, _ = add_self_loops(edge_index, n)
        if self.aggr == "max":
            pooled = F.relu(linear(x, self.weight_pool, self.bias_pool))
            out = linear(self.propagate(edge_index, pooled), self.weight_neigh)
        else:
            # mean_j(W h_j) = W mean_j h_j: project first when it shrinks what the aggregation moves.
            project_first = x.layout == torch.sparse_csr or self.out_channels < self.in_channels
            if project_first and self.weight_self is not None:
                # One matmul for both projections: x (often a sparse bag of words) is read once.
                h, root = linear(x, torch.cat([self.weight_neigh, self.weight_self])).split(self.out_channels, -1)
            else:
                h = linear(x, self.weight_neigh) if project_first else x
            if self.impl == "fast":
                agg = spmm(self._cache.get(edge_index, n, lambda: self._mean_adjacency(edge_index, n)), h)
            else:
                agg = self.propagate(edge_index, h)
            out = agg if project_first else linear(agg, self.weight_neigh)
        if self.weight_self is not None:
            out = out + (root if root is not None else linear(x, self.weight_self))
        if self.bias is not None:
            out = out + self.bias
        return F.normalize(out, p=2.0, dim=-1) if self.normalize else out


@dataclass
class SAGEConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset by the graph loops)."""
    hidden_channels: int = 16
    """16 as in DGL's full-graph Cora example (the paper's inductive runs use 256 or more)."""
    out_channels: int = 7
    """Output size per node, e.g. the number of classes (filled in from the dataset)."""
    num_layers: int = 2
    aggr: Literal["mean", "max", "gcn"] = "mean"
    """``mean`` aggregator, ``max`` = the paper's pooling aggregator, ``gcn`` = its GCN aggregator (the
    mean over the node and its neighbours, no separate self weight; DGL's Cora example uses it)."""
    dropout: float = 0.5
    """Dropout before every layer, input features included (DGL's example)."""
    normalize: bool = False
    """L2-normalize every hidden layer's output after its ReLU (the paper's Algorithm 1, line 7)."""
    impl: Literal["fast", "generic"] = "fast"
    """``fast``: cached row-normalized CSR matmul for the mean; ``generic``: message passing."""
    add_self_loops: bool = False
    """Give every node one self loop before aggregating, as DGL's Cora example does (its
    ``AddSelfLoop`` transform); with ``aggr="gcn"`` the node then counts twice in its own mean."""

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("sage", family="graph",
          description="GraphSAGE (Hamilton et al. 2017): mean / max-pool / gcn aggregators, full batch or sampled.")
class GraphSAGE(GraphModel):
    """Stack of :class:`SAGEConv` with ReLU (then L2 normalization with ``normalize``) and dropout;
    returns per-node logits (the last layer is never normalized).

    A dense, mostly-zero ``x`` (bag of words) takes the sparse path by itself (:meth:`input_features`).

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E) -> (N, out_channels)
    """

    config_class = SAGEConfig
    accepts_sparse = True

    def __init__(self, config: SAGEConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.in_channels] + [c.hidden_channels] * (c.num_layers - 1) + [c.out_channels]
        self.convs = nn.ModuleList(
            SAGEConv(a, b, c.aggr, impl=c.impl) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self._loops = AdjacencyCache()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        if self.config.add_self_loops:
            n = x.shape[0]
            # Cached, so the layers' own caches see the same edge_index object every step.
            edge_index = self._loops.get(edge_index, n, lambda: add_self_loops(remove_self_loops(edge_index)[0], n)[0])
        x = self.input_features(x)  # dense bag-of-words -> CSR, once per x tensor
        for k, conv in enumerate(self.convs):
            x = dropout(x, self.config.dropout, self.training)
            x = conv(x, edge_index)
            if k < len(self.convs) - 1:
                x = F.relu(x)
                if self.config.normalize:
                    x = F.normalize(x, p=2.0, dim=-1)
        return x


__all__ = ["GraphSAGE", "SAGEConfig", "SAGEConv"]
