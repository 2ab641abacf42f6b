"""Graph Transformer in the GPS layout (Rampášek et al., NeurIPS 2022, "Recipe for a General, Powerful,
Scalable Graph Transformer"), with Laplacian positional encodings (Dwivedi & Bresson, 2020, "A
Generalization of Transformer Networks to Graphs") or random-walk encodings (Dwivedi et al., ICLR 2022).

Input embedding, with a positional encoding ``p_i`` (Laplacian eigenvectors or random-walk return
probabilities of the node's own graph):

    h_i^0 = W_x x_i + W_p p_i          (Laplacian signs flipped at random per graph while training)

One GPS layer (their Eq. 2-4; LayerNorm as the normalization)::

    X_M = LN(X + Dropout(MPNN(X, A)))              local branch: one GCN layer, or absent
    X_T = LN(X + Dropout(Attn(X)))                 global multi-head self-attention within each graph
    X'  = LN(X_M + X_T + Dropout(FFN(X_M + X_T)))  (without the local branch X_M + X_T is just X_T)

Attention runs on the nodes of each graph only. With ``batch`` (many graphs) the nodes are packed
into a ``(num_graphs, n_max)`` grid and a key-padding mask goes to ``F.scaled_dot_product_attention``:
the same result as one ``N x N`` block-diagonal mask, at ``O(G n_max^2)`` instead of ``O(N^2)``.
One graph (``batch=None``) attends over all its ``N`` nodes: ``O(heads N^2)`` memory, fine for Cora or
Citeseer full batch (N ~ 3k), too much for Pubmed (use sampled mini-batches there).
Output: one row per node (node tasks; works in the node loop), or one per graph with ``pool``.

Shapes:
    x: (N, in_channels) dense or sparse CSR; edge_index: (2, E); batch: (N,) or None (one graph)
    -> (N, out_channels), or (num_graphs, out_channels) when ``pool`` is ``mean`` or ``sum``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...graph import dropout, gcn_norm, global_pool, laplacian_eigenvectors, linear, random_walk_pe
from ...graph.cache import AdjacencyCache
from ...registry import register
from .base import GraphModel
from .gcn import GCNConv


class Packing(NamedTuple):
    """Where each node sits in a dense ``(num_graphs, n_max)`` grid: flat slot ``graph * n_max + position``."""

    slot: Tensor  # (N,)
    valid: Tensor  # (num_graphs, n_max) bool: the slot holds a node
    n_max: int


def pack_nodes(batch: Tensor, num_graphs: int) -> Packing:
    """Positions of the nodes within their graph (in node order; ``batch`` need not be sorted)."""
    counts = torch.bincount(batch, minlength=num_graphs)
    n_max = int(counts.max()) if batch.numel() else 0
    order = torch.argsort(batch, stable=True)
    starts = counts.cumsum(0) - counts
    position = torch.empty_like(batch)
    position[order] = torch.arange(batch.numel(), device=batch.device) - starts[batch[order]]
    valid = torch.arange(n_max, device=batch.device) < counts.unsqueeze(1)
    return Packing(batch * n_max + position, valid, n_max)


def batched_laplacian_eigenvectors(edge_index: Tensor, batch: Tensor, num_graphs: int, k: int) -> Tensor:
    """:func:`archlab.graph.laplacian_eigenvectors` of every graph of a batch separately, by one batched
    ``eigh`` over the graphs' Laplacians padded to ``n_max``. The padding gets eigenvalue 3 (above the
    normalized Laplacian's bound of 2), so its eigenvectors sort last and are zero on the real nodes.

    Shapes: edge_index: (2, E), batch: (N,) -> (N, k); column ``t`` is zero on graphs with ``n_g - 1 <= t``.
    """
    n = batch.numel()
    pack = pack_nodes(batch, num_graphs)
    m = pack.n_max
    ei, w = gcn_norm(edge_index, n, add_loops=False)
    position = pack.slot - batch * m
    lap = torch.zeros(num_graphs * m * m, dtype=torch.float64, device=edge_index.device)
    # L = I - D^-1/2 A D^-1/2: off-diagonal entry (i, j) of graph g gets -w_ji
    lap.index_add_(0, pack.slot[ei[1]] * m + position[ei[0]], -w.double())
    lap = lap.view(num_graphs, m, m) + torch.diag_embed(torch.where(pack.valid, 1.0, 3.0).double())
    _, vecs = torch.linalg.eigh(lap)
    out = torch.zeros(num_graphs * m, k, dtype=torch.float32, device=edge_index.device)
    take = min(k, m - 1)
    out[:, :take] = vecs[:, :, 1:1 + take].reshape(num_graphs * m, take).float()
    return out[pack.slot]


@dataclass
class GraphTransformerConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset)."""
    hidden_channels: int = 64
    """Model width; must be divisible by ``heads``."""
    out_channels: int = 7
    """Outputs per node (or per graph with ``pool``), e.g. the number of classes (filled in from the dataset)."""
    num_layers: int = 2
    """Number of GPS layers."""
    heads: int = 4
    """Attention heads."""
    dropout: float = 0.1
    """Dropout on the input features and on every branch output before its residual."""
    attn_dropout: float = 0.0
    """Dropout on the attention weights."""
    pe: Literal["lap", "rw", "none"] = "lap"
    """Positional encoding: Laplacian eigenvectors, random-walk return probabilities, or none."""
    pe_dim: int = 8
    """Eigenvectors / random-walk steps in the positional encoding."""
    local: Literal["gcn", "none"] = "gcn"
    """Local message-passing branch of each layer: a GCN layer, or none (a plain Transformer on the nodes)."""
    ffn_ratio: int = 2
    """FFN hidden width as a multiple of ``hidden_channels`` (GPS uses 2)."""
    pool: Literal["none", "mean", "sum"] = "none"
    """``none``: node-level outputs; ``mean`` / ``sum``: one output per graph (pooled before the head)."""

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.heads < 1 or self.pe_dim < 1:
            raise ValueError("num_layers, heads and pe_dim must be >= 1")
        if self.hidden_channels % self.heads:
            raise ValueError(f"hidden_channels ({self.hidden_channels}) must be divisible by heads ({self.heads})")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


class GPSLayer(nn.Module):
    """One GPS layer: local GCN branch + global attention branch, each with residual and LayerNorm, then FFN.

    Shapes: h: (N, C); edge_index: (2, E); pack: None (one graph) or :class:`Packing` -> (N, C)
    """

    def __init__(self, c: GraphTransformerConfig) -> None:
        super().__init__()
        ch = c.hidden_channels
        self.heads, self.dropout, self.attn_dropout = c.heads, c.dropout, c.attn_dropout
        self.local = GCNConv(ch, ch) if c.local == "gcn" else None
        self.norm_local = nn.LayerNorm(ch) if self.local is not None else None
        self.qkv = nn.Linear(ch, 3 * ch)
        self.out = nn.Linear(ch, ch)
        self.norm_attn = nn.LayerNorm(ch)
        self.ffn = nn.Sequential(nn.Linear(ch, c.ffn_ratio * ch), nn.ReLU(), nn.Dropout(c.dropout),
                                 nn.Linear(c.ffn_ratio * ch, ch))
        self.norm_ffn = nn.LayerNorm(ch)

    def attention(self, h: Tensor, pack: Packing | None) -> Tensor:
        n, ch = h.shape
        d = ch // self.heads
        qkv = self.qkv(h)
        p = self.attn_dropout if self.training else 0.0
        if pack is None:  # one graph: every node attends to every node
            q, k, v = qkv.view(1, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # each (1, heads, N, d)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(n, ch)
        else:
            g, m = pack.valid.shape
            grid = qkv.new_zeros(g * m, 3 * ch).index_copy(0, pack.slot, qkv)
            q, k, v = grid.view(g, m, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # each (G, heads, n_max, d)
            mask = pack.valid.view(g, 1, 1, m)  # keys of the same graph only; padding is never a key
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            out = out.transpose(1, 2).reshape(g * m, ch)[pack.slot]
        return self.out(out)

    def forward(self, h: Tensor, edge_index: Tensor, pack: Packing | None) -> Tensor:
        mixed = self.norm_attn(h + F.dropout(self.attention(h, pack), self.dropout, self.training))
        if self.local is not None:
            mixed = mixed + self.norm_local(h + F.dropout(self.local(h, edge_index), self.dropout, self.training))
        return self.norm_ffn(mixed + F.dropout(self.ffn(mixed), self.dropout, self.training))


@register("graph_transformer", family="graph")
class GraphTransformer(GraphModel):
    """GPS-style Graph Transformer: positional encodings + (local GCN | global attention) layers.

    Shapes:
        x: (N, in_channels) dense or sparse CSR; edge_index: (2, E); batch: (N,) or None
        -> (N, out_channels), or (num_graphs, out_channels) with ``pool``
    """

    config_class = GraphTransformerConfig
    accepts_sparse = True

    def __init__(self, config: GraphTransformerConfig) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Linear(c.in_channels, c.hidden_channels)
        self.pe_proj = nn.Linear(c.pe_dim, c.hidden_channels) if c.pe != "none" else None
        self.layers = nn.ModuleList(GPSLayer(c) for _ in range(c.num_layers))
        self.head = nn.Linear(c.hidden_channels, c.out_channels)
        self._pe_cache = AdjacencyCache()

    def positional_encoding(self, edge_index: Tensor, num_nodes: int, batch: Tensor | None,
                            num_graphs: int) -> Tensor:
        """The ``(N, pe_dim)`` encoding of each node within its own graph; cached for a single graph."""
        k = self.config.pe_dim
        # A property of the graph, not of the weights: computed in full precision, also under autocast.
        with torch.autocast(edge_index.device.type, enabled=False):
            if self.config.pe == "rw":  # diag(P^t) is local to each graph: the batch needs no special care
                return self._pe_cache.get(edge_index, num_nodes, lambda: random_walk_pe(edge_index, num_nodes, k))
            if batch is None:
                return self._pe_cache.get(edge_index, num_nodes,
                                          lambda: laplacian_eigenvectors(edge_index, num_nodes, k))
            return batched_laplacian_eigenvectors(edge_index, batch, num_graphs, k)

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None,
                num_graphs: int | None = None) -> Tensor:
        c = self.config
        n = x.shape[0]
        if batch is not None and num_graphs is None:
            num_graphs = int(batch.max()) + 1 if n else 0
        h = linear(dropout(x, c.dropout, self.training), self.embed.weight, self.embed.bias)
        if self.pe_proj is not None:
            pe = self.positional_encoding(edge_index, n, batch, num_graphs or 1).to(h.dtype)
            if c.pe == "lap" and self.training:  # eigenvector signs are arbitrary: learn to ignore them
                signs = torch.randint(0, 2, (num_graphs or 1, c.pe_dim), device=h.device).to(h.dtype) * 2 - 1
                pe = pe * (signs[batch] if batch is not None else signs)
            h = h + self.pe_proj(pe)
        pack = pack_nodes(batch, num_graphs) if batch is not None else None
        for layer in self.layers:
            h = layer(h, edge_index, pack)
        if c.pool != "none":
            h = global_pool(h, batch, num_graphs, c.pool)
        return self.head(h)


__all__ = ["GPSLayer", "GraphTransformer", "GraphTransformerConfig", "Packing", "batched_laplacian_eigenvectors",
           "pack_nodes"]
