"""Factories for ``archlab bench attention``: one causal attention call (forward + backward through q, k, v)
for each variant of :mod:`archlab.nn.attention`, at a given sequence length.

All variants get the same ``[batch, heads, seq_len, head_dim]`` fp32 inputs; the projections around attention
are left out so that only the score/softmax/value work is timed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from archlab.nn.attention import attention, linear_attention, sliding_window_attention, sparse_attention


def _inputs(batch: int, heads: int, seq_len: int, head_dim: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, heads, seq_len, head_dim, generator=g).requires_grad_() for _ in range(3)]


def _factory(fn: Callable[..., torch.Tensor]) -> Callable[..., Callable[[], None]]:
    def make(batch: int = 1, heads: int = 4, seq_len: int = 1024, head_dim: int = 64, threads: int = 2,
             window: int = 256, block: int = 128, summary: int = 8, **_: object) -> Callable[[], None]:
        torch.set_num_threads(threads)
        q, k, v = _inputs(batch, heads, seq_len, head_dim)
        opts = {"window": window, "block": block, "summary": summary}

        def run() -> None:
            out = fn(q, k, v, **opts)
            out.sum().backward()
            for t in (q, k, v):
                t.grad = None

        return run

    return make


dense_eager = _factory(lambda q, k, v, **o: attention(q, k, v, causal=True, backend="eager"))
dense_sdpa = _factory(lambda q, k, v, **o: attention(q, k, v, causal=True))
sliding_window = _factory(lambda q, k, v, **o: sliding_window_attention(q, k, v, o["window"], causal=True))
sparse = _factory(lambda q, k, v, **o: sparse_attention(q, k, v, o["block"], o["summary"], causal=True))
linear = _factory(lambda q, k, v, **o: linear_attention(q, k, v, causal=True))
