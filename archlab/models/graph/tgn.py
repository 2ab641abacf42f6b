"""Temporal Graph Network (Rossi et al. 2020, "Temporal Graph Networks for Deep Learning on Dynamic
Graphs"): per-node memory updated by interaction events, temporal graph attention, link decoder.

For an event ``(i, j, t, e_ij)`` (their Sec. 3.1; "identity" message, "last" aggregator, GRU memory):

    m_i   = [ s_i(t⁻) || s_j(t⁻) || φ(t - t_i⁻) || e_ij ]          message for i (and symmetrically for j)
    s_i   = GRU(m_i, s_i(t⁻)),   t_i⁻ <- t                         only the latest message of each node counts

    φ(Δt) = cos(ω Δt + b)                                          time encoding (Xu et al. 2020, TGAT),
                                                                   learnable ω (init 10^-linspace(0, 9)), b

Embedding of node ``i`` at time ``t`` (Sec. 3.2, one temporal graph attention layer over the ``K``
most recent interactions ``(j, t_j, e_j)`` of ``i``):

    q   = W_q [ s_i || φ(0) ],    k_j, v_j = W_k, W_v [ s_j || e_j || φ(t - t_j) ]
    a   = MultiHead(q, k, v)                                        (no neighbours: a = 0)
    z_i = W_2 ReLU(W_1 [ a || s_i ])

Decoder: ``logit(i, j) = MLP([z_i || z_j])``.

Batching as in the paper's training (Sec. 3.3, Fig. 2): the events of batch ``b`` are predicted from
the state left by batches ``< b``; the memory update from batch ``b - 1`` is computed *inside* batch
``b``'s forward, so the GRU, the message inputs and the time encoding get gradients from batch ``b``'s
loss, while a batch's own events never reach its predictions. Stored memory is detached.

State (non-persistent buffers; :meth:`reset_state`, :meth:`get_state`, :meth:`set_state`,
:meth:`observe`): memory ``s`` and last-update times, the pending events of the last observed batch,
and a ring buffer of the ``K`` latest neighbours (id, time, features) of every node.
``memory_dim = 0`` gives a memoryless model (attention over neighbours' times and features only);
``num_neighbors = 0`` uses the memory itself as the embedding (TGN's "id" embedding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...registry import register
from .base import GraphModel


class TimeEncoder(nn.Module):
    """``φ(Δt) = cos(ω Δt + b)`` with ``ω_k`` initialised to ``10^(-9 k / (d - 1))`` (TGAT / TGN).

    Shapes:
        dt: (*) -> (*, dim)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.omega = nn.Parameter(1.0 / 10 ** torch.linspace(0, 9, dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, dt: Tensor) -> Tensor:
        return torch.cos(dt.unsqueeze(-1) * self.omega + self.bias)


class TGNState(NamedTuple):
    """Everything a TGN remembers about the stream so far (N nodes, K neighbour slots, P pending events)."""

    memory: Tensor
    """(N, memory_dim) s, *before* the pending events."""
    last_update: Tensor
    """(N,) time of each node's last memory update."""
    nbr_id: Tensor
    """(N, K) int64 neighbour ids; -1 for an empty slot."""
    nbr_t: Tensor
    """(N, K) interaction times."""
    nbr_feat: Tensor
    """(N, K, edge_dim) interaction features."""
    nbr_count: Tensor
    """(N,) int64 interactions seen per node (the ring buffer's write position modulo K)."""
    pending_src: Tensor
    """(P,) the last observed batch, not yet in ``memory``."""
    pending_dst: Tensor
    pending_t: Tensor
    pending_feat: Tensor


@dataclass
class TGNConfig:
    num_nodes: int = 100
    """Number of nodes of the stream (memory slots; filled in from the dataset)."""
    edge_dim: int = 4
    """Event feature size (filled in from the dataset; 0: no features)."""
    memory_dim: int = 100
    """Size of each node's memory s_i; 0 disables the memory (a memoryless baseline)."""
    time_dim: int = 100
    embedding_dim: int = 100
    """Size of z_i (and of the attention); unused when ``num_neighbors = 0`` (z_i = s_i)."""
    num_neighbors: int = 10
    """K most recent interactions attended to; 0: the embedding is the memory itself."""
    num_heads: int = 2
    dropout: float = 0.1
    """Dropout on the attention weights."""

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.edge_dim < 0 or self.memory_dim < 0 or self.num_neighbors < 0:
            raise ValueError("need num_nodes >= 1 and edge_dim, memory_dim, num_neighbors >= 0")
        if self.memory_dim == 0 and self.num_neighbors == 0:
            raise ValueError("memory_dim = 0 needs num_neighbors > 0: the embedding would be empty")
        if self.time_dim < 1 or self.embedding_dim < 1 or self.num_heads < 1:
            raise ValueError("time_dim, embedding_dim and num_heads must be >= 1")
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("tgn", family="graph")
class TGN(GraphModel):
    """Temporal Graph Network for link prediction on event streams (memory + temporal attention).

    Shapes:
        src, dst: (B,) int64; t: (B,) float; edge_feat: (B, edge_dim) or None; batch: (B,) int64 or None;
        neg_dst: (B,) int64 or None -> (B,) logits, or (2, B) [positive; negative] with ``neg_dst``
    """

    config_class = TGNConfig
    data_fields: ClassVar[dict[str, str]] = {"num_nodes": "num_nodes", "edge_dim": "edge_dim"}

    def __init__(self, config: TGNConfig) -> None:
        super().__init__(config)
        c = config
        m, d, k = c.memory_dim, c.edge_dim, c.num_neighbors
        self.time_enc = TimeEncoder(c.time_dim)
        if m:
            self.gru = nn.GRUCell(2 * m + c.time_dim + d, m)
        if k:
            e = c.embedding_dim
            self.w_q = nn.Linear(m + c.time_dim, e)
            self.w_k = nn.Linear(m + d + c.time_dim, e)
            self.w_v = nn.Linear(m + d + c.time_dim, e)
            self.w_o = nn.Linear(e, e)
            self.merge1, self.merge2 = nn.Linear(e + m, e), nn.Linear(e, e)
        z = c.embedding_dim if k else m
        self.dec1, self.dec2 = nn.Linear(2 * z, z), nn.Linear(z, 1)
        for name, shape, dtype in self._state_shapes():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype), persistent=False)
        self.reset_state()

    def _state_shapes(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        c, f, i = self.config, torch.float32, torch.long
        n, k = c.num_nodes, c.num_neighbors
        return [("memory", (n, c.memory_dim), f), ("last_update", (n,), f), ("nbr_id", (n, k), i),
                ("nbr_t", (n, k), f), ("nbr_feat", (n, k, c.edge_dim), f), ("nbr_count", (n,), i),
                ("pending_src", (0,), i), ("pending_dst", (0,), i), ("pending_t", (0,), f),
                ("pending_feat", (0, c.edge_dim), f)]

    @classmethod
    def example_input(cls, config: TGNConfig, batch_size: int = 2) -> tuple[Tensor, ...]:
        """Two batches of ``2 * batch_size`` events; the second repeats the first's pairs later, so its
        predictions use memory and neighbours: ``(src, dst, t, edge_feat, batch)``."""
        gen = torch.Generator().manual_seed(0)
        b = 2 * batch_size
        src = torch.randint(0, config.num_nodes, (b,), generator=gen)
        dst = torch.randint(0, config.num_nodes, (b,), generator=gen)
        t = torch.arange(2 * b, dtype=torch.float32)
        feat = torch.randn(2 * b, config.edge_dim, generator=gen)
        return src.repeat(2), dst.repeat(2), t, feat, torch.arange(2).repeat_interleave(b)

    # ------------------------------------------------------------------------------------- state
    def reset_state(self) -> None:
        """Forget the stream: zero memory, no neighbours, nothing pending (start of every epoch)."""
        for name, shape, dtype in self._state_shapes():
            setattr(self, name, torch.zeros(shape, dtype=dtype, device=self.memory.device))
        self.nbr_id.fill_(-1)

    def get_state(self) -> TGNState:
        return TGNState(*(getattr(self, name) for name in TGNState._fields))

    def set_state(self, state: TGNState) -> None:
        for name, value in zip(TGNState._fields, state, strict=True):
            setattr(self, name, value.detach())

    @torch.no_grad()
    def observe(self, src: Tensor, dst: Tensor, t: Tensor, edge_feat: Tensor | None = None) -> None:
        """Take a batch of events into the state (after predicting them): the pending batch enters the
        memory, this batch becomes pending and joins the neighbour lists."""
        self.set_state(self._advance(self.get_state(), src, dst, t, self._features(edge_feat, len(src))))

    # ------------------------------------------------------------------------------------- steps
    def _features(self, edge_feat: Tensor | None, count: int) -> Tensor:
        if edge_feat is None:
            return self.memory.new_zeros(count, self.config.edge_dim)
        return edge_feat.to(self.memory.dtype)

    def _updated_memory(self, s: TGNState) -> tuple[Tensor, Tensor]:
        """Memory and last-update times with the pending events applied (differentiable)."""
        if self.config.memory_dim == 0 or len(s.pending_src) == 0:
            return s.memory, s.last_update
        # Both endpoints of event k receive a message; interleaving keeps occurrence order = time order.
        node = torch.stack([s.pending_src, s.pending_dst], 1).reshape(-1)
        other = torch.stack([s.pending_dst, s.pending_src], 1).reshape(-1)
        t = s.pending_t.repeat_interleave(2)
        feat = s.pending_feat.repeat_interleave(2, 0)
        # "last" aggregator: each node keeps the message of its latest occurrence.
        occ = torch.arange(len(node), device=node.device)
        latest = torch.full_like(s.last_update, -1, dtype=torch.long).scatter_reduce_(0, node, occ, "amax")
        upd = (latest >= 0).nonzero().squeeze(1)
        pick = latest[upd]
        mem = s.memory
        msg = torch.cat([mem[upd], mem[other[pick]], self.time_enc(t[pick] - s.last_update[upd]), feat[pick]], -1)
        new = self.gru(msg, mem[upd])
        return mem.index_put((upd,), new.to(mem.dtype)), s.last_update.index_put((upd,), t[pick])

    def _advance(self, s: TGNState, src: Tensor, dst: Tensor, t: Tensor, feat: Tensor) -> TGNState:
        memory, last_update = self._updated_memory(s)
        nbr_id, nbr_t, nbr_feat, nbr_count = s.nbr_id, s.nbr_t, s.nbr_feat, s.nbr_count
        k = self.config.num_neighbors
        if k:
            node = torch.stack([src, dst], 1).reshape(-1)
            other = torch.stack([dst, src], 1).reshape(-1)
            tt, ff = t.repeat_interleave(2), feat.repeat_interleave(2, 0)
            n = nbr_id.shape[0]
            counts = torch.bincount(node, minlength=n)
            # Rank of each occurrence among its node's occurrences in this batch (time order).
            order = torch.sort(node, stable=True).indices
            start = counts.cumsum(0) - counts
            rank = torch.empty_like(node)
            rank[order] = torch.arange(len(node), device=node.device) - start[node[order]]
            keep = rank >= counts[node] - k  # only a node's K latest fit; distinct (node, slot) pairs
            node, other, tt, ff, rank = node[keep], other[keep], tt[keep], ff[keep], rank[keep]
            slot = (nbr_count[node] + rank) % k
            nbr_id = nbr_id.index_put((node, slot), other)
            nbr_t = nbr_t.index_put((node, slot), tt.to(nbr_t.dtype))
            nbr_feat = nbr_feat.index_put((node, slot), ff.to(nbr_feat.dtype))
            nbr_count = nbr_count + counts
        return TGNState(memory, last_update, nbr_id, nbr_t, nbr_feat, nbr_count, src, dst, t.to(s.pending_t.dtype),
                        feat)

    def _embed(self, memory: Tensor, s: TGNState, nodes: Tensor, t: Tensor) -> Tensor:
        """Temporal attention embeddings z of ``nodes`` at times ``t``. Shapes: (Q,), (Q,) -> (Q, z)."""
        c = self.config
        h = memory[nodes]
        if c.num_neighbors == 0:
            return h
        nbr = s.nbr_id[nodes]  # (Q, K)
        valid = nbr >= 0
        has_any = valid.any(1)
        keys = torch.cat([memory[nbr.clamp(min=0)], s.nbr_feat[nodes], self.time_enc(t[:, None] - s.nbr_t[nodes])], -1)
        query = torch.cat([h, self.time_enc(torch.zeros_like(t))], -1)
        q_len, k_len, heads = nbr.shape[0], nbr.shape[1], c.num_heads
        q = self.w_q(query).view(q_len, 1, heads, -1)
        k = self.w_k(keys).view(q_len, k_len, heads, -1)
        v = self.w_v(keys).view(q_len, k_len, heads, -1)
        scores = (q * k).sum(-1) / math.sqrt(k.shape[-1])  # (Q, K, H)
        # A node without neighbours attends uniformly to its empty slots and the result is zeroed:
        # masking a whole row to -inf would give NaN gradients.
        mask = ~valid & has_any[:, None]
        attn = scores.masked_fill(mask[..., None], float("-inf")).softmax(1)
        attn = F.dropout(attn, c.dropout, self.training)
        a = self.w_o((attn[..., None] * v).sum(1).reshape(q_len, -1)) * has_any[:, None]
        return self.merge2(F.relu(self.merge1(torch.cat([a, h], -1))))

    def _score(self, s: TGNState, src: Tensor, dst: Tensor, t: Tensor, neg_dst: Tensor | None) -> Tensor:
        memory, _ = self._updated_memory(s)
        nodes = torch.cat([src, dst] if neg_dst is None else [src, dst, neg_dst])
        z = self._embed(memory, s, nodes, t.repeat(len(nodes) // len(src)).to(s.nbr_t.dtype))
        z_src, z_dst = z[:len(src)], z[len(src):].view(-1, len(src), z.shape[-1])
        pair = torch.cat([z_src.expand_as(z_dst), z_dst], -1)
        logits = self.dec2(F.relu(self.dec1(pair))).squeeze(-1)  # (1 or 2, B)
        return logits[0] if neg_dst is None else logits

    def forward(self, src: Tensor, dst: Tensor, t: Tensor, edge_feat: Tensor | None = None,
                batch: Tensor | None = None, neg_dst: Tensor | None = None) -> Tensor:
        """Link logits of chronological events, batch by batch, from the stored state.

        Events of batch ``b`` (``batch``: non-decreasing ids; None = one batch) are scored with the
        state after the stored one plus batches ``< b``. The stored state is not changed: call
        :meth:`observe` with the events afterwards. ``neg_dst``: also score ``(src, neg_dst)`` at ``t``.
        """
        feat = self._features(edge_feat, len(src))
        sizes = [len(src)] if batch is None else torch.unique_consecutive(batch, return_counts=True)[1].tolist()
        state, out, a = self.get_state(), [], 0
        for size in sizes:
            b = a + size
            neg = None if neg_dst is None else neg_dst[a:b]
            out.append(self._score(state, src[a:b], dst[a:b], t[a:b], neg))
            if b < len(src):
                state = self._advance(state, src[a:b], dst[a:b], t[a:b], feat[a:b])
            a = b
        return torch.cat(out, -1)


__all__ = ["TGN", "TGNConfig", "TGNState", "TimeEncoder"]
