"""The message-passing base every graph layer builds on (Gilmer et al. 2017):

    m_{j->i} = message(x_i, x_j, e_{j->i})             one message per edge j -> i
    a_i      = AGG_{j : (j, i) in E} m_{j->i}           sum | mean | max | min
    x_i'     = update(a_i, x_i)

A layer overrides :meth:`message` (and :meth:`update` when it needs ``x_i``) and calls
:meth:`propagate`. Layers with a faster formulation (a CSR matmul for linear aggregations) keep this
generic path as their reference and are tested against it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .ops import Reduce, scatter


class MessagePassing(nn.Module):
    """Base class: ``propagate(edge_index, x, **edge_kwargs)`` runs message -> aggregate -> update.

    ``x`` may be one tensor (messages within one node set) or a pair ``(x_src, x_dst)`` for bipartite
    blocks, where sources and targets are different node sets (sampled mini-batches). Keyword
    arguments are edge-level tensors (first dimension E) handed to :meth:`message` unchanged.

    Shapes:
        edge_index: (2, E); x: (N, F) or ((N_src, F), (N_dst, F')) -> (N_dst, F_out)
    """

    def __init__(self, aggr: Reduce = "sum") -> None:
        super().__init__()
        self.aggr = aggr

    def propagate(self, edge_index: Tensor, x: Tensor | tuple[Tensor, Tensor | None], num_nodes: int | None = None,
                  **edge_kwargs: Any) -> Tensor:
        x_src, x_dst = x if isinstance(x, tuple) else (x, x)
        src, dst = edge_index[0], edge_index[1]
        if num_nodes is None:
            num_nodes = x_dst.shape[0] if x_dst is not None else x_src.shape[0]
        x_j = x_src[src]
        x_i = x_dst[dst] if x_dst is not None else None
        messages = self.message(x_i=x_i, x_j=x_j, index=dst, num_nodes=num_nodes, **edge_kwargs)
        out = self.aggregate(messages, dst, num_nodes)
        return self.update(out, x_dst)

    def message(self, x_i: Tensor | None, x_j: Tensor, **edge_kwargs: Any) -> Tensor:
        """Message along each edge; the default passes the source features (times ``edge_weight``)."""
        weight = edge_kwargs.get("edge_weight")
        return x_j if weight is None else x_j * weight.view(-1, *([1] * (x_j.dim() - 1)))

    def aggregate(self, messages: Tensor, index: Tensor, num_nodes: int) -> Tensor:
        return scatter(messages, index, num_nodes, self.aggr)

    def update(self, aggregated: Tensor, x_dst: Tensor | None) -> Tensor:
        return aggregated
