"""Random graph generators for tests, examples and scaling benchmarks."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .ops import coalesce, remove_self_loops, to_undirected


def stochastic_block_model(block_sizes: list[int], p_in: float, p_out: float, seed: int = 0,
                           directed: bool = False) -> tuple[Tensor, Tensor]:
    """Sample a stochastic block model: nodes in block ``b`` (contiguous ids), edge ``{u, v}`` present with
    probability ``p_in`` inside a block and ``p_out`` across blocks, independently.

    Sampling is O(E), not O(N²): for each block pair the number of edges is drawn from its binomial
    distribution and the endpoints uniformly, duplicates merged (for sparse graphs the difference to
    exact Bernoulli sampling is negligible, and the expected edge count is kept). Returns
    ``(edge_index (2, E) without self loops, both directions unless directed; labels (N,) block ids)``.
    """
    gen = torch.Generator().manual_seed(seed)
    counts_rng = np.random.default_rng(seed)
    sizes = torch.tensor(block_sizes)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
    n = int(sizes.sum())
    parts = []
    for a in range(len(block_sizes)):
        for b in range(a if not directed else 0, len(block_sizes)):
            p = p_in if a == b else p_out
            pairs = block_sizes[a] * block_sizes[b]
            if not directed and a == b:
                pairs = block_sizes[a] * (block_sizes[a] - 1) // 2
            if p <= 0 or pairs <= 0:
                continue
            count = int(counts_rng.binomial(pairs, p))
            src = starts[a] + torch.randint(0, block_sizes[a], (count,), generator=gen)
            dst = starts[b] + torch.randint(0, block_sizes[b], (count,), generator=gen)
            parts.append(torch.stack([src, dst]))
    edge_index = torch.cat(parts, dim=1) if parts else torch.zeros(2, 0, dtype=torch.long)
    edge_index, _ = remove_self_loops(edge_index)
    edge_index = coalesce(edge_index, n)[0] if directed else to_undirected(edge_index, n)
    labels = torch.repeat_interleave(torch.arange(len(block_sizes)), sizes)
    return edge_index, labels


def sbm_for_edges(num_edges: int, num_blocks: int = 4, avg_degree: float = 10.0, p_ratio: float = 10.0,
                  seed: int = 0) -> tuple[Tensor, Tensor]:
    """An SBM sized to have about ``num_edges`` directed edges (both directions counted) at the given
    average degree, with within-block edges ``p_ratio`` times likelier than across. For scaling runs."""
    n = max(num_blocks * 2, int(round(num_edges / avg_degree)))
    size = n // num_blocks
    sizes = [size] * num_blocks
    n = size * num_blocks
    # expected degree = p_in (size - 1) + p_out (n - size); p_in = p_ratio * p_out
    p_out = avg_degree / (p_ratio * (size - 1) + (n - size))
    return stochastic_block_model(sizes, min(1.0, p_ratio * p_out), p_out, seed)
