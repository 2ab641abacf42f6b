"""Graph Isomorphism Network (Xu, Hu, Leskovec & Jegelka, ICLR 2019, "How Powerful are Graph Neural
Networks?").

One layer (their Eq. 4.1):

    h_i' = MLP((1 + ε) h_i + Σ_{j in N(i)} h_j)

Sum aggregation with an injective MLP makes the layer as discriminative as the Weisfeiler-Lehman
test; ε (learned by default, "GIN-ε") keeps a node's own features apart from its neighbours' sum.

Graph readout (their Eq. 4.2): every layer's node representations, the input features included,
are summed over the nodes of each graph and scored by a linear layer of their own; the scores are
added up:

    score_G = Σ_{k=0..K} Linear_k(Σ_{i in G} h_i^(k))

As in the authors' code (weihua916/powerful-gnns): ``num_layers`` counts the input as a layer
(5 = input + 4 GIN layers), each MLP is Linear -> BatchNorm -> ReLU -> Linear followed by another
BatchNorm and ReLU, and dropout acts on each layer's score before the sum.

``impl="fast"`` sums neighbours with a cached CSR adjacency (one sparse matmul); ``impl="generic"``
is the message-passing path (tested equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...graph import Graph, MessagePassing, SparseAdj, batch_graphs, global_pool, spmm
from ...graph.cache import AdjacencyCache
from ...registry import register
from .base import GraphModel, random_graph


class GINConv(MessagePassing):
    """``h_i' = mlp((1 + ε) h_i + Σ_{j in N(i)} h_j)``; ε is a parameter with ``train_eps``, else a buffer.

    Shapes:
        x: (N, F); edge_index: (2, E) -> (N, F_out) with F_out the output size of ``mlp``
    """

    def __init__(self, mlp: nn.Module, eps: float = 0.0, train_eps: bool = True,
                 impl: Literal["fast", "generic"] = "fast") -> None:
        super().__init__(aggr="sum")
        self.mlp, self.impl = mlp, impl
        self._cache = AdjacencyCache()
        if train_eps:
            self.eps = nn.Parameter(torch.full((1,), eps))
        else:
            self.register_buffer("eps", torch.full((1,), eps))

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n = x.shape[0]
        if self.impl == "fast":
            agg = spmm(self._cache.get(edge_index, n, lambda: SparseAdj.build(edge_index, n)), x)
        else:
            agg = self.propagate(edge_index, x)
        return self.mlp((1 + self.eps) * x + agg)


@dataclass
class GINConfig:
    in_channels: int = 7
    """Node feature size (filled in from the dataset by the graph loops)."""
    hidden_channels: int = 64
    out_channels: int = 2
    """Number of graph classes (filled in from the dataset)."""
    num_layers: int = 5
    """Layers including the input "layer": ``num_layers - 1`` GIN layers (the paper's 5 = input + 4)."""
    dropout: float = 0.5
    """Dropout on each layer's graph score (the authors' ``final_dropout``)."""
    train_eps: bool = True
    """Learn ε (GIN-ε); ``False`` fixes ε = 0 (GIN-0)."""
    impl: Literal["fast", "generic"] = "fast"
    """``fast``: cached CSR adjacency, one sparse matmul; ``generic``: message passing."""

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.hidden_channels < 1:
            raise ValueError(f"num_layers and hidden_channels must be >= 1, got {self.num_layers}, "
                             f"{self.hidden_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("gin", family="graph",
          description="Graph Isomorphism Network (Xu et al. 2019): sum aggregation, (1 + eps) self term, readout.")
class GIN(GraphModel):
    """GIN for graph classification: ``num_layers - 1`` GIN layers, sum readout of every layer
    (input included), one linear scorer per layer, scores summed.

    Shapes:
        x: (N, in_channels); edge_index: (2, E); batch: (N,) graph ids or None (one graph)
        -> (num_graphs, out_channels)
    """

    config_class = GINConfig

    def __init__(self, config: GINConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.in_channels] + [c.hidden_channels] * (c.num_layers - 1)
        self.convs = nn.ModuleList(
            GINConv(nn.Sequential(nn.Linear(a, c.hidden_channels), nn.BatchNorm1d(c.hidden_channels), nn.ReLU(),
                                  nn.Linear(c.hidden_channels, c.hidden_channels)), train_eps=c.train_eps, impl=c.impl)
            for a in dims[:-1])
        self.norms = nn.ModuleList(nn.BatchNorm1d(c.hidden_channels) for _ in dims[:-1])
        self.scorers = nn.ModuleList(nn.Linear(d, c.out_channels) for d in dims)

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None,
                num_graphs: int | None = None) -> Tensor:
        if batch is None:
            batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            num_graphs = 1
        elif num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        layers = [x]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            layers.append(F.relu(norm(conv(layers[-1], edge_index))))
        score = 0
        for h, scorer in zip(layers, self.scorers, strict=True):
            pooled = global_pool(h, batch, num_graphs, "sum")
            score = score + F.dropout(scorer(pooled), self.config.dropout, self.training)
        return score

    @classmethod
    def example_input(cls, config: Any, batch_size: int = 2) -> tuple[Tensor, ...]:
        """``batch_size`` small random graphs of 5, 6, ... nodes merged: ``(x, edge_index, batch)``."""
        graphs = [Graph(*random_graph(5 + k, config.in_channels, seed=k)) for k in range(batch_size)]
        g = batch_graphs(graphs)
        return g.x, g.edge_index, g.batch


__all__ = ["GIN", "GINConfig", "GINConv"]
