"""Graph Attention Network (Veličković et al., ICLR 2018, "Graph Attention Networks") and GATv2
(Brody, Alon & Yahav, ICLR 2022, "How Attentive are Graph Attention Networks?").

One head of one layer, over the edges ``j -> i`` into ``i`` (self loop included):

    GAT   (their Eq. 3):  e_ij = LeakyReLU(a^T [W h_i || W h_j])
    GATv2 (their Eq. 7):  e_ij = a^T LeakyReLU(W_dst h_i + W_src h_j)       (= a^T LeakyReLU(W [h_i || h_j]))
    α_ij = softmax_{j in N(i) ∪ {i}} e_ij                                      (their Eq. 2)
    h_i' = Σ_j α_ij W h_j        (GATv2: W_src h_j)                            (their Eq. 4)

``K`` heads run side by side; hidden layers concatenate them (Eq. 5), the output layer averages
them (Eq. 6). Dropout acts on the normalized coefficients α (each node sees a random subset of its
neighbourhood during training) and, in the model, on every layer's input features.

GAT's score is *static*: ``a^T [W h_i || W h_j] = a_dst·W h_i + a_src·W h_j`` splits into one score
per target and one per source, so the ranking of neighbours is the same for every target.
GATv2 puts the nonlinearity between ``W`` and ``a``, which makes the attention *dynamic*.

Two implementations, equal up to float rounding (tested):
``impl="generic"`` is the message-passing path that evaluates the per-edge formula literally;
``impl="fast"``

* uses the split for GAT (two per-node scores gathered per edge instead of a ``2C``-wide dot
  product per edge);
* prepares the self loops and a target-sorted edge order once per ``edge_index`` (cached);
* normalizes after aggregation: ``h_i' = Σ_j w_ij W h_j / Σ_j w_ij`` with ``w_ij = exp(e_ij -
  max_j e_ij)``, which saves a per-edge division (attention dropout commutes with that: it rescales
  single ``w_ij``, never the denominator);
* aggregates all heads with one sparse matmul: the weights of head ``h`` fill block ``h`` of a
  block-diagonal CSR matrix, so the aggregation builds no ``(E, heads, C)`` message tensor. Its
  backward is a sampled dense-dense product (SDDMM) for the weights and the transposed matrix for
  the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ...graph import MessagePassing, add_self_loops, dropout, linear, remove_self_loops, segment_softmax
from ...graph.cache import AdjacencyCache
from ...registry import register
from .base import GraphModel


class _HeadEdges(NamedTuple):
    """The fast path's view of one graph, built once per ``edge_index``: edges ``src -> dst`` sorted by
    (target, source) with the self loops in place, and the block-diagonal CSR structure (block ``h`` =
    head ``h``: rows ``h N + i``, columns ``h N + j``) plus that of its transpose, whose values are the
    forward values permuted by ``perm_t``."""

    src: Tensor
    dst: Tensor
    crow: Tensor
    col: Tensor
    crow_t: Tensor
    col_t: Tensor
    perm_t: Tensor

    @staticmethod
    def build(edge_index: Tensor, num_nodes: int, heads: int) -> _HeadEdges:
        src, dst = edge_index
        n, e = num_nodes, edge_index.shape[1]
        shift = torch.arange(heads, device=src.device).unsqueeze(1)

        def block_csr(rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:  # rows sorted
            crow = torch.bincount(rows, minlength=n).cumsum(0)
            starts = torch.cat([crow.new_zeros(1), crow[:-1]])
            block_crow = torch.cat([(starts + shift * e).reshape(-1), crow.new_full((1,), heads * e)])
            return block_crow, (cols + shift * n).reshape(-1)

        crow, col = block_csr(dst, src)
        order_t = torch.argsort(src * n + dst)
        crow_t, col_t = block_csr(src[order_t], dst[order_t])
        return _HeadEdges(src, dst, crow, col, crow_t, col_t, (order_t + shift * e).reshape(-1))


class _HeadwiseSpMM(torch.autograd.Function):
    """``out[i, h] = Σ_{e = j -> i} w[e, h] x[j, h]`` as one block-diagonal sparse matmul.

    Shapes: w: (E, H), x: (N, H, C) -> (N, H, C)
    """

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # autocast would cast to bf16, which the sparse kernels lack
    @torch.autocast("cuda", enabled=False)
    def forward(ctx: Any, w: Tensor, x: Tensor, g: _HeadEdges) -> Tensor:
        n, h, c = x.shape
        values = w.t().reshape(-1)  # head-major, the order of the blocks
        xs = x.transpose(0, 1).reshape(h * n, c)
        adj = torch.sparse_csr_tensor(g.crow, g.col, values, (h * n, h * n), check_invariants=False)
        ctx.save_for_backward(values, xs)
        ctx.g = g
        return (adj @ xs).view(h, n, c).transpose(0, 1)

    @staticmethod
    @once_differentiable
    @torch.autocast("cpu", enabled=False)
    @torch.autocast("cuda", enabled=False)
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        values, xs = ctx.saved_tensors
        g: _HeadEdges = ctx.g
        n, h, c = grad.shape
        gs = grad.transpose(0, 1).reshape(h * n, c)
        grad_w = grad_x = None
        if ctx.needs_input_grad[0]:  # d out_i / d w_e = x_j: one dot product per edge, only where A is non-zero
            pattern = torch.sparse_csr_tensor(g.crow, g.col, torch.zeros_like(values), (h * n, h * n),
                                              check_invariants=False)
            grad_w = torch.sparse.sampled_addmm(pattern, gs, xs.t(), beta=0.0).values().view(h, -1)
            # contiguous: a transposed gradient would make every later elementwise backward strided (slow)
            grad_w = grad_w.t().contiguous()
        if ctx.needs_input_grad[1]:
            adj_t = torch.sparse_csr_tensor(g.crow_t, g.col_t, values[g.perm_t], (h * n, h * n),
                                            check_invariants=False)
            grad_x = (adj_t @ gs).view(h, n, c).transpose(0, 1).contiguous()
        return grad_w, grad_x, None


class GATConv(MessagePassing):
    """Multi-head graph attention layer (GAT, or GATv2 with ``v2=True``).

    Parameters (``H = heads``, ``C = out_channels``): GAT has ``weight`` (H·C, F_in) and the two
    halves of ``a``: ``att_dst``, ``att_src`` (H, C). GATv2 has ``weight_src``, ``weight_dst``
    (H·C, F_in) and ``att`` (H, C). ``bias`` is (H·C) with ``concat``, else (C).

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E)
        -> (N, heads * out_channels) if concat else (N, out_channels)
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, attn_dropout: float = 0.0, add_self_loops: bool = True,
                 bias: bool = True, v2: bool = False, impl: Literal["fast", "generic"] = "fast") -> None:
        super().__init__(aggr="sum")
        self.in_channels, self.out_channels, self.heads, self.concat = in_channels, out_channels, heads, concat
        self.negative_slope, self.attn_dropout, self.add_loops = negative_slope, attn_dropout, add_self_loops
        self.v2, self.impl = v2, impl
        hc = heads * out_channels
        if v2:
            self.weight_src = nn.Parameter(torch.empty(hc, in_channels))
            self.weight_dst = nn.Parameter(torch.empty(hc, in_channels))
            self.att = nn.Parameter(torch.empty(heads, out_channels))
        else:
            self.weight = nn.Parameter(torch.empty(hc, in_channels))
            self.att_src = nn.Parameter(torch.empty(heads, out_channels))
            self.att_dst = nn.Parameter(torch.empty(heads, out_channels))
        self.bias = nn.Parameter(torch.zeros(hc if concat else out_channels)) if bias else None
        self._cache = AdjacencyCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Glorot & Bengio (2010) everywhere, as in both papers' reference code.
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.xavier_uniform_(p)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _edges(self, edge_index: Tensor, num_nodes: int) -> Tensor:
        """Exactly one self loop per node (when enabled); sorted by target for locality of the scatters."""
        if self.add_loops:
            edge_index, _ = remove_self_loops(edge_index)
            edge_index, _ = add_self_loops(edge_index, num_nodes)
        order = torch.argsort(edge_index[1] * num_nodes + edge_index[0])
        return edge_index[:, order]

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n, h, c = x.shape[0], self.heads, self.out_channels
        if self.v2:
            # One matmul for both projections: x (often a sparse bag of words) is read once.
            x_src, x_dst = linear(x, torch.cat([self.weight_src, self.weight_dst])).view(n, 2, h, c).unbind(1)
        else:
            x_src = x_dst = linear(x, self.weight).view(n, h, c)
        if self.impl == "fast":
            edges = self._cache.get(edge_index, n, lambda: _HeadEdges.build(self._edges(edge_index, n), n, h))
            out = self._fast(x_src, x_dst, edges)
        else:
            out = self.propagate(self._edges(edge_index, n), (x_src, x_dst))
        out = out.reshape(n, h * c) if self.concat else out.mean(1)
        return out if self.bias is None else out + self.bias

    def message(self, x_i: Tensor | None, x_j: Tensor, index: Tensor, num_nodes: int, **_) -> Tensor:
        """The literal per-edge formula: score, softmax over the edges into each target, dropout, weight."""
        if self.v2:
            e = (F.leaky_relu(x_i + x_j, self.negative_slope) * self.att).sum(-1)
        else:
            a = torch.cat([self.att_dst, self.att_src], dim=-1)  # a = [a_dst || a_src], (H, 2C)
            e = F.leaky_relu((torch.cat([x_i, x_j], dim=-1) * a).sum(-1), self.negative_slope)
        alpha = segment_softmax(e, index, num_nodes)  # (E, H)
        alpha = F.dropout(alpha, self.attn_dropout, self.training)
        return x_j * alpha.unsqueeze(-1)

    def _fast(self, x_src: Tensor, x_dst: Tensor, edges: _HeadEdges) -> Tensor:
        n, h = x_src.shape[:2]
        src, dst = edges.src, edges.dst
        if self.v2:
            e = (F.leaky_relu(x_src[src] + x_dst[dst], self.negative_slope) * self.att).sum(-1)
        else:
            score_src = (x_src * self.att_src).sum(-1)  # (N, H): a_src·W h_j, once per node
            score_dst = (x_dst * self.att_dst).sum(-1)
            e = F.leaky_relu(score_src[src] + score_dst[dst], self.negative_slope)
        idx = dst.unsqueeze(-1).expand_as(e)
        peak = e.new_full((n, h), float("-inf")).scatter_reduce_(0, idx, e.detach(), "amax", include_self=True)
        w = (e - peak.gather(0, idx)).exp()  # (E, H), the max keeps exp in range
        denom = w.new_zeros(n, h).index_add_(0, dst, w)
        w = dropout(w, self.attn_dropout, self.training)
        # The sparse matmuls run in fp32 (fp64 for fp64 inputs), also under bf16 autocast.
        dtype, work = x_src.dtype, torch.promote_types(x_src.dtype, torch.float32)
        out = _HeadwiseSpMM.apply(w.to(work), x_src.to(work), edges)
        # Nodes without incoming edges (only possible without self loops) have denom 0 and out 0.
        return (out / denom.to(work).clamp(min=torch.finfo(work).tiny).unsqueeze(-1)).to(dtype)


@dataclass
class GATConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset by the graph loops)."""
    hidden_channels: int = 8
    """Features per head in the hidden layers (the paper's Cora setup: 8 heads x 8 features)."""
    out_channels: int = 7
    """Output size per node, e.g. the number of classes (filled in from the dataset)."""
    heads: int = 8
    """Heads of every hidden layer (concatenated)."""
    out_heads: int = 1
    """Heads of the output layer (averaged; the paper uses 8 on Pubmed)."""
    num_layers: int = 2
    dropout: float = 0.6
    """Feature dropout before every layer, input features included."""
    attn_dropout: float = 0.6
    """Dropout on the normalized attention coefficients."""
    negative_slope: float = 0.2
    v2: bool = False
    """GATv2's dynamic attention instead of GAT's static one."""
    impl: Literal["fast", "generic"] = "fast"
    """``fast``: split scores, cached self loops, normalize after aggregation; ``generic``: message passing."""

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        if self.heads < 1 or self.out_heads < 1:
            raise ValueError("heads and out_heads must be >= 1")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@register("gat", family="graph",
          description="Graph Attention Network (Veličković et al. 2018); GATv2 dynamic attention with v2=true.")
class GAT(GraphModel):
    """Stack of :class:`GATConv`: hidden layers concatenate ``heads`` heads and apply ELU, the output
    layer averages ``out_heads`` heads; dropout before every layer. Returns per-node logits.

    A dense, mostly-zero ``x`` (bag of words) takes the sparse path by itself (:meth:`input_features`).

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E) -> (N, out_channels)
    """

    config_class = GATConfig
    accepts_sparse = True

    def __init__(self, config: GATConfig) -> None:
        super().__init__(config)
        c = config
        shared = {"negative_slope": c.negative_slope, "attn_dropout": c.attn_dropout, "v2": c.v2, "impl": c.impl}
        convs, width = [], c.in_channels
        for _ in range(c.num_layers - 1):
            convs.append(GATConv(width, c.hidden_channels, c.heads, concat=True, **shared))
            width = c.heads * c.hidden_channels
        convs.append(GATConv(width, c.out_channels, c.out_heads, concat=False, **shared))
        self.convs = nn.ModuleList(convs)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.input_features(x)  # dense bag-of-words -> CSR, once per x tensor
        for k, conv in enumerate(self.convs):
            x = dropout(x, self.config.dropout, self.training)
            x = conv(x, edge_index)
            if k < len(self.convs) - 1:
                x = F.elu(x)
        return x


__all__ = ["GAT", "GATConfig", "GATConv"]
