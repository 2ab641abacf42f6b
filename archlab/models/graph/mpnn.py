"""Message Passing Neural Network with edge networks (Gilmer et al., ICML 2017, "Neural Message Passing for
Quantum Chemistry"), the variant they found best on QM9: edge network messages, GRU updates, Set2Set readout.

    h_i^0     = ReLU(W_in x_i + b_in)
    m_i^{t+1} = AGG_{j : (j, i) in E} A(e_ji) h_j^t          edge network: A is an MLP, R^{D_e} -> R^{H x H}
    h_i^{t+1} = GRU(m_i^{t+1}, h_i^t)                         t = 0 .. T-1, weights shared across steps
    y         = MLP(Set2Set({h_i^T}))                         one vector per graph

``AGG`` is a sum (the paper) or a mean. ``A(e_ji)`` depends on the edge features only, so the
``(E, H, H)`` matrices are computed once per forward pass and reused in all ``T`` steps.
The paper pads ``x`` with zeros to ``H``; a learned input projection does the same job for any ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ...graph import MessagePassing, Set2Set
from ...registry import register
from .base import GraphModel, random_graph


class EdgeNetworkConv(MessagePassing):
    """Edge-conditioned messages ``m_i = AGG_j A(e_ji) h_j`` with ``A(e) = MLP(e).view(H, H)``.

    :meth:`edge_matrices` computes ``A(e)`` for all edges; :meth:`forward` aggregates the messages.

    Shapes:
        h: (N, H); edge_index: (2, E); matrices: (E, H, H) -> (N, H)
    """

    def __init__(self, channels: int, edge_channels: int, edge_hidden: int = 128,
                 aggr: Literal["sum", "mean"] = "sum") -> None:
        super().__init__(aggr=aggr)
        self.channels = channels
        self.edge_net = nn.Sequential(nn.Linear(edge_channels, edge_hidden), nn.ReLU(),
                                      nn.Linear(edge_hidden, channels * channels))

    def edge_matrices(self, edge_attr: Tensor) -> Tensor:
        """``A(e_ji)`` for every edge: (E, D_e) -> (E, H, H)."""
        return self.edge_net(edge_attr).view(-1, self.channels, self.channels)

    def forward(self, h: Tensor, edge_index: Tensor, matrices: Tensor) -> Tensor:
        return self.propagate(edge_index, h, matrices=matrices)

    def message(self, x_i: Tensor | None, x_j: Tensor, **edge_kwargs: Any) -> Tensor:
        # m_ji = A(e_ji) h_j: one (H x H) @ (H,) product per edge
        return torch.bmm(edge_kwargs["matrices"], x_j.unsqueeze(-1)).squeeze(-1)


@dataclass
class MPNNConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset)."""
    edge_channels: int = 4
    """Edge feature size ``D_e`` (filled in from the dataset's ``num_edge_features``); 0 = no edge features."""
    hidden_channels: int = 64
    """Node state size ``H``."""
    out_channels: int = 1
    """Outputs per graph: targets for regression, classes for classification (filled in from the dataset)."""
    steps: int = 3
    """Message passing steps ``T`` (one set of weights shared by all steps)."""
    set2set_steps: int = 3
    """Processing steps of the Set2Set readout."""
    edge_hidden: int = 128
    """Hidden width of the edge network ``A``."""
    aggr: Literal["sum", "mean"] = "sum"
    """Message aggregation: ``sum`` (Gilmer et al.) or ``mean``."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.set2set_steps < 1:
            raise ValueError("steps and set2set_steps must be >= 1")


@register("mpnn", family="graph",
          description="MPNN (Gilmer et al. 2017): edge network messages, GRU updates, Set2Set readout.")
class MPNN(GraphModel):
    """Edge-network MPNN with GRU updates and a Set2Set readout; returns one output row per graph.

    Graphs without edge features (``edge_attr=None``; ``edge_channels=0`` when the dataset has none) give
    every edge the all-ones vector, so ``A`` is a single learned matrix.

    Shapes:
        x: (N, in_channels); edge_index: (2, E); edge_attr: (E, edge_channels) or None;
        batch: (N,) graph id per node, or None (one graph) -> (num_graphs, out_channels)
    """

    config_class = MPNNConfig
    export_blocker = None  # scatter sums over index_add: static shapes, exports
    data_fields: ClassVar[dict[str, str]] = {"in_channels": "num_features", "out_channels": "num_classes",
                                             "edge_channels": "num_edge_features"}

    def __init__(self, config: MPNNConfig) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Linear(c.in_channels, c.hidden_channels)
        # without edge features every edge gets the constant feature vector 1 (see forward)
        self.edge_in = max(c.edge_channels, 1)
        self.conv = EdgeNetworkConv(c.hidden_channels, self.edge_in, c.edge_hidden, c.aggr)
        self.gru = nn.GRUCell(c.hidden_channels, c.hidden_channels)
        self.readout = Set2Set(c.hidden_channels, c.set2set_steps)
        self.head = nn.Sequential(nn.Linear(2 * c.hidden_channels, c.hidden_channels), nn.ReLU(),
                                  nn.Linear(c.hidden_channels, c.out_channels))

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None, batch: Tensor | None = None,
                num_graphs: int | None = None) -> Tensor:
        if edge_attr is None:
            edge_attr = x.new_ones(edge_index.shape[1], self.edge_in)
        h = torch.relu(self.embed(x))
        matrices = self.conv.edge_matrices(edge_attr)
        for _ in range(self.config.steps):
            m = self.conv(h, edge_index, matrices)
            h = self.gru(m, h)  # h^{t+1} = GRU(m^{t+1}, h^t)
        return self.head(self.readout(h, batch, num_graphs))

    @classmethod
    def example_input(cls, config: MPNNConfig, batch_size: int = 2) -> tuple[Tensor, ...]:
        """``batch_size`` random graphs of 5 nodes merged into one batch: ``(x, edge_index, edge_attr, batch)``."""
        xs, edges = [], []
        for g in range(batch_size):
            x, ei = random_graph(5, config.in_channels, seed=g)
            xs.append(x)
            edges.append(ei + 5 * g)
        edge_index = torch.cat(edges, dim=1)
        gen = torch.Generator().manual_seed(batch_size)
        edge_attr = torch.randn(edge_index.shape[1], config.edge_channels, generator=gen)
        batch = torch.arange(batch_size).repeat_interleave(5)
        return torch.cat(xs), edge_index, edge_attr, batch


__all__ = ["EdgeNetworkConv", "MPNN", "MPNNConfig"]
