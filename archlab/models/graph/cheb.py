"""ChebNet (Defferrard, Bresson & Vandergheynst, NeurIPS 2016, "Convolutional Neural Networks on Graphs with
Fast Localized Spectral Filtering").

A spectral filter approximated by a Chebyshev polynomial of the rescaled Laplacian (their Eq. 4-5):

    L  = I - D^-1/2 A D^-1/2,        L̃ = 2 L / λ_max - I
    T_0 = X,   T_1 = L̃ X,   T_k = 2 L̃ T_{k-1} - T_{k-2}
    X'  = sum_{k=0}^{K-1} T_k Θ_k + b

With ``λ_max = 2`` (the bound of the normalized Laplacian; Kipf & Welling 2017 make the same
approximation) ``L̃ = -D^-1/2 A D^-1/2``: no diagonal, one sparse matrix. A filter of size ``K``
mixes nodes up to ``K - 1`` hops apart.

Two implementations, equal up to float rounding (tested):

* ``impl="sparse"`` caches L̃ as a CSR matrix per ``edge_index``. Because the ``Θ_k`` are linear maps
  that commute with L̃, ``T_k(L̃) X Θ_k = T_k(L̃) (X Θ_k)``: all ``Y_k = X Θ_k`` come from one matmul
  (which also takes a sparse CSR ``X``) and the sum is evaluated by Clenshaw's recurrence on the
  ``out_channels``-wide ``Y_k``::

      b_K = b_{K+1} = 0,   b_k = Y_k + 2 L̃ b_{k+1} - b_{k+2}  (k = K-1 .. 1),   X' = Y_0 + L̃ b_1 - b_2

  That is ``K - 1`` sparse matmuls at width ``out_channels``. When the layer widens
  (``out_channels > in_channels``, dense ``X``) the paper's recurrence on ``X`` is cheaper and is used.
* ``impl="scatter"``: the paper's recurrence with generic message passing (``L̃ T`` as messages
  ``-w_ji t_j`` summed into ``i``), then ``sum_k T_k Θ_k``.

Note on ``K``: here (as in Defferrard et al. and PyG) ``K`` counts the terms, ``k = 0 .. K-1``. Kipf &
Welling's (2017, Table 3) "Chebyshev K = 3" sums ``k = 0 .. 3``, i.e. ``K = 4`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...graph import MessagePassing, SparseAdj, dropout, gcn_norm, linear, remove_self_loops, spmm
from ...graph.cache import AdjacencyCache
from ...registry import register
from .base import GraphModel


def scaled_laplacian(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``L̃ = 2L / λ_max - I`` with ``λ_max = 2``, i.e. ``-D^-1/2 A D^-1/2`` (self loops dropped: the
    diagonal of L̃ is zero). Returns ``(edge_index, w)`` with ``w[e] = -1 / sqrt(d_j d_i)`` for ``e = j -> i``.
    """
    edge_index, edge_weight = remove_self_loops(edge_index, edge_weight)
    edge_index, w = gcn_norm(edge_index, num_nodes, edge_weight, add_loops=False)
    return edge_index, -w


class ChebConv(MessagePassing):
    """``X' = sum_{k<K} T_k(L̃) X Θ_k + b`` (Chebyshev filter of size ``K``).

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E); edge_weight: (E,) or None
        -> (N, out_channels)
    """

    def __init__(self, in_channels: int, out_channels: int, K: int, bias: bool = True,
                 impl: Literal["sparse", "scatter"] = "sparse") -> None:
        super().__init__(aggr="sum")
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        self.in_channels, self.out_channels, self.K, self.impl = in_channels, out_channels, K, impl
        self.weight = nn.Parameter(torch.empty(K, out_channels, in_channels))  # Θ_k, stored as (out, in) like Linear
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._cache = AdjacencyCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for theta in self.weight:
            nn.init.xavier_uniform_(theta)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        n = x.shape[0]
        if self.impl == "sparse":
            def build() -> SparseAdj:
                ei, w = scaled_laplacian(edge_index, n, edge_weight)
                return SparseAdj.build(ei, n, w.float())
            lap = self._cache.get(edge_index, n, build) if edge_weight is None else build()
            sparse_x = x.layout == torch.sparse_csr
            out = self._clenshaw(x, lap) if sparse_x or self.out_channels <= self.in_channels else \
                self._recurrence(x, lambda t: spmm(lap, t))
        else:
            ei, w = scaled_laplacian(edge_index, n, edge_weight)
            x = x.to_dense() if x.layout == torch.sparse_csr else x
            out = self._recurrence(x, lambda t: self.propagate(ei, t, edge_weight=w.to(t.dtype)))
        return out if self.bias is None else out + self.bias

    def _clenshaw(self, x: Tensor, lap: SparseAdj) -> Tensor:
        # Y_k = X Θ_k for all k in one matmul: (N, K * out) -> K tensors of (N, out)
        ys = linear(x, self.weight.reshape(-1, self.in_channels)).split(self.out_channels, dim=1)
        if self.K == 1:
            return ys[0]
        b1, b2 = ys[-1], torch.zeros_like(ys[0])  # b_{K-1} = Y_{K-1} (as b_K = b_{K+1} = 0), b_K = 0
        for k in range(self.K - 2, 0, -1):
            b1, b2 = ys[k] + 2 * spmm(lap, b1) - b2, b1
        return ys[0] + spmm(lap, b1) - b2

    def _recurrence(self, x: Tensor, apply_lap: Callable[[Tensor], Tensor]) -> Tensor:
        terms = [x]  # T_0 = X
        if self.K > 1:
            terms.append(apply_lap(x))  # T_1 = L̃ X
        for _ in range(2, self.K):
            terms.append(2 * apply_lap(terms[-1]) - terms[-2])  # T_k = 2 L̃ T_{k-1} - T_{k-2}
        # sum_k T_k Θ_k as one matmul: [T_0 | ... | T_{K-1}] (N, K * in) @ [Θ_0; ...; Θ_{K-1}] (K * in, out)
        theta = self.weight.permute(1, 0, 2).reshape(self.out_channels, -1)
        return linear(torch.cat(terms, dim=1), theta)


@dataclass
class ChebNetConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset by the graph loops)."""
    hidden_channels: int = 16
    """Width of the hidden layer(s)."""
    out_channels: int = 7
    """Output size per node, e.g. the number of classes (filled in from the dataset)."""
    K: int = 3
    """Chebyshev filter size: terms ``T_0 .. T_{K-1}``, so each layer reaches ``K - 1`` hops."""
    num_layers: int = 2
    """Number of ChebConv layers (ReLU between them)."""
    dropout: float = 0.5
    """Dropout before every layer, input features included (as for GCN)."""
    bias: bool = True
    """Learned bias ``b`` in every layer."""
    impl: Literal["sparse", "scatter"] = "sparse"
    """``sparse``: cached CSR L̃ and Clenshaw's recurrence; ``scatter``: generic message passing."""

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        if self.K < 1:
            raise ValueError(f"K must be >= 1, got {self.K}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("chebnet", family="graph",
          description="ChebNet (Defferrard et al. 2016): K-term Chebyshev spectral filters.")
class ChebNet(GraphModel):
    """Stack of :class:`ChebConv` with ReLU and dropout; returns per-node logits.

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E) -> (N, out_channels)
    """

    config_class = ChebNetConfig
    accepts_sparse = True

    def __init__(self, config: ChebNetConfig) -> None:
        super().__init__(config)
        c = config
        dims = [c.in_channels] + [c.hidden_channels] * (c.num_layers - 1) + [c.out_channels]
        self.convs = nn.ModuleList(ChebConv(a, b, c.K, c.bias, c.impl)
                                   for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        for k, conv in enumerate(self.convs):
            x = dropout(x, self.config.dropout, self.training)
            x = conv(x, edge_index, edge_weight)
            if k < len(self.convs) - 1:
                x = F.relu(x)
        return x


__all__ = ["ChebConv", "ChebNet", "ChebNetConfig", "scaled_laplacian"]
