"""Position information for attention, which is otherwise permutation-invariant.

* :class:`SinusoidalEncoding` -- fixed (Vaswani et al. 2017, sec. 3.5):
  ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``, added to the embeddings.
* :class:`LearnedPositionalEmbedding` -- one trained vector per position (GPT-2, BERT, ViT), added.
* :class:`RotaryEmbedding` -- RoFormer (Su et al. 2021): rotate each pair of query/key channels by
  the angle ``p * theta_i``, ``theta_i = base^(-2i/d)``, so that ``q_m . k_n`` depends on ``m - n`` only.
* :class:`RelativePositionBias` -- T5 (Raffel et al. 2020, sec. 2.1): a learned scalar per head and
  per *bucket* of the relative distance ``j - i``, added to the attention logits. Buckets are exact for
  small distances and logarithmic up to ``max_distance``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``[n_positions, dim]`` table of the fixed encoding (module docstring); ``dim`` even."""
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dimension, got {dim}")
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    inv = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(n_positions, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table


class SinusoidalEncoding(nn.Module):
    """Adds the fixed sinusoidal table. Shapes: x ``[B, T, dim]`` -> ``[B, T, dim]``."""

    def __init__(self, dim: int, max_len: int = 4096) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return x + self.table[offset:offset + x.shape[1]].to(x.dtype)


class LearnedPositionalEmbedding(nn.Embedding):
    """A trained vector per position (``weight``: ``[max_len, dim]``), added to the input.

    Shapes: x ``[B, T, dim]`` -> ``[B, T, dim]``."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__(max_len, dim)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:  # type: ignore[override]
        t = x.shape[1]
        if offset + t > self.num_embeddings:
            raise ValueError(f"sequence of {offset + t} positions is longer than the {self.num_embeddings} learned")
        return x + self.weight[offset:offset + t]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension (the 90 degree rotation of each channel pair)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on ``[B, H, T, D]`` queries and keys (channel ``i`` pairs with
    ``i + D/2``, the GPT-NeoX / LLaMA layout):

        x' = x * cos(p * theta) + rotate_half(x) * sin(p * theta)

    ``offset`` is the absolute position of the first of the T positions (the KV-cache length)."""

    def __init__(self, head_dim: int, base: float = 10000.0, max_len: int = 4096) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.arange(max_len, dtype=torch.float32)[:, None] * inv[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        t = q.shape[-2]
        cos = self.cos[offset:offset + t].to(q.dtype)
        sin = self.sin[offset:offset + t].to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """Bucket index of each relative distance ``j - i`` (T5): with ``bidirectional`` half the buckets
    are for keys after the query; within a direction, distances below ``n/2`` get their own bucket and
    the rest share logarithmically wider buckets up to ``max_distance`` (beyond it: the last bucket)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        dist = relative_position.abs()
    else:
        dist = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    small = dist < max_exact
    large = max_exact + (torch.log(dist.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(small, dist, large)


class RelativePositionBias(nn.Module):
    """T5's learned relative position bias (module docstring); parameter ``relative_attention_bias``:
    ``[num_buckets, n_head]``.

    Shapes: -> bias ``[1, n_head, Tq, Tk]`` for queries at positions ``offset .. offset+Tq-1``."""

    def __init__(self, n_head: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True) -> None:
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, n_head)

    def forward(self, tq: int, tk: int, offset: int = 0) -> torch.Tensor:
        device = self.relative_attention_bias.weight.device
        i = torch.arange(tq, device=device)[:, None] + offset
        j = torch.arange(tk, device=device)[None, :]
        buckets = relative_position_bucket(j - i, self.bidirectional, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]
