"""Readouts: one vector per graph from the node vectors of a batch (:func:`archlab.graph.batch_graphs`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .ops import Reduce, scatter, segment_softmax


def global_pool(x: Tensor, batch: Tensor | None, num_graphs: int | None = None, reduce: Reduce = "sum") -> Tensor:
    """``out[g] = reduce_{i : batch[i] = g} x_i`` (sum, mean, max or min).

    Shapes: x: (N, F), batch: (N,) or None (one graph) -> (num_graphs, F)
    """
    if batch is None:
        batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    return scatter(x, batch, num_graphs, reduce)


class Set2Set(nn.Module):
    """Set2Set readout (Vinyals et al. 2016, "Order Matters"; used by Gilmer et al. 2017's MPNN).

    For ``t = 1..steps``, with an LSTM state ``q_t`` per graph::

        q_t   = LSTM(q*_{t-1})
        e_i   = <x_i, q_t>,   a_i = softmax_{i in graph} e_i
        r_t   = sum_i a_i x_i
        q*_t  = [q_t, r_t]

    The output ``q*_T`` is order invariant. Shapes: x: (N, F), batch: (N,) -> (num_graphs, 2F)
    """

    def __init__(self, channels: int, steps: int = 3) -> None:
        super().__init__()
        self.channels, self.steps = channels, steps
        self.lstm = nn.LSTM(2 * channels, channels, batch_first=False)

    def forward(self, x: Tensor, batch: Tensor | None, num_graphs: int | None = None) -> Tensor:
        if batch is None:
            batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        q_star = x.new_zeros(num_graphs, 2 * self.channels)
        h = (x.new_zeros(1, num_graphs, self.channels), x.new_zeros(1, num_graphs, self.channels))
        for _ in range(self.steps):
            q, h = self.lstm(q_star.unsqueeze(0), h)
            q = q.squeeze(0)
            e = (x * q[batch]).sum(-1)
            a = segment_softmax(e, batch, num_graphs)
            r = scatter(a.unsqueeze(-1) * x, batch, num_graphs, "sum")
            q_star = torch.cat([q, r], dim=-1)
        return q_star
