"""Uniform neighbour sampling for mini-batch training on large graphs (GraphSAGE, Hamilton et al. 2017,
Algorithm 2).

Starting from the seed nodes, hop ``k`` gives every node first reached at hop ``k - 1`` (the
*frontier*) up to ``fanouts[k]`` of its incoming neighbours, drawn uniformly without replacement
(all of them when it has fewer). The union of the sampled edges is a small subgraph on which a
``len(fanouts)``-layer model computes exactly the seeds' outputs it would compute on the sampled
computation tree.

Vectorized: the graph is stored once as CSR by target; a hop draws one random key per candidate
edge of the frontier, sorts by (frontier node, key) and keeps the first ``fanout`` of each segment,
which is a uniform sample without replacement (up to ties of two 31-bit keys, which stable sorting
breaks by edge order: a bias below 1e-9 per pair). Randomness comes from a private
:class:`torch.Generator`, so ``state_dict`` / ``load_state_dict`` make a resumed run draw the same
subgraphs as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class SampledSubgraph:
    """A sampled neighbourhood.

    Shapes:
        nodes: (N_sub,) global node ids; the seeds come first, in the given order
        edge_index: (2, E_sub) local ids into ``nodes``, edges sampled neighbour -> node
    """

    nodes: Tensor
    edge_index: Tensor


class NeighborSampler:
    """Samples ``fanouts[k]`` incoming neighbours per node at hop ``k`` (see the module docstring).

    Works on CPU (the graph is copied there once); move the result to the model's device.

    Shapes:
        edge_index: (2, E) source row 0, target row 1; seeds: (B,) distinct global ids
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, fanouts: list[int], seed: int = 0) -> None:
        if any(f < 1 for f in fanouts):
            raise ValueError(f"fanouts must be >= 1, got {list(fanouts)}")
        self.num_nodes, self.fanouts = num_nodes, list(fanouts)
        edge_index = edge_index.cpu()
        order = torch.argsort(edge_index[1], stable=True)
        self.sources = edge_index[0, order]  # neighbours of node i: sources[rowptr[i]:rowptr[i + 1]]
        self.rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        self.rowptr[1:] = torch.bincount(edge_index[1], minlength=num_nodes).cumsum(0)
        self.generator = torch.Generator().manual_seed(seed)
        # global id -> local id of the subgraph being built, -1 elsewhere; reset after each sample
        self._local = torch.full((num_nodes,), -1, dtype=torch.long)

    def _sample_hop(self, frontier: Tensor, fanout: int) -> tuple[Tensor, Tensor]:
        """Sampled edges into ``frontier``: ``(sources (global ids), targets (positions in frontier))``."""
        start = self.rowptr[frontier]
        count = self.rowptr[frontier + 1] - start
        total = int(count.sum())
        segment = torch.repeat_interleave(torch.arange(len(frontier)), count)  # frontier position per candidate
        offset = torch.arange(total) - torch.repeat_interleave(count.cumsum(0) - count, count)
        position = start[segment] + offset  # candidate edges, frontier segments back to back
        if total and int(count.max()) > fanout:
            # One integer sort by (segment, random key) shuffles every segment in place: its first `fanout`
            # entries are a uniform sample without replacement.
            keys = torch.randint(0, 2**31, (total,), generator=self.generator)
            order = torch.sort((segment << 31) | keys, stable=True)[1]
        else:  # no node has more than `fanout` neighbours: keep them all
            order = torch.arange(total)
        keep = order[offset < fanout]  # offset is the rank within the segment after sorting
        return self.sources[position[keep]], segment[keep]

    def sample(self, seeds: Tensor) -> SampledSubgraph:
        """The ``len(fanouts)``-hop sampled neighbourhood of ``seeds`` (distinct global ids)."""
        seeds = seeds.cpu().long()
        local = self._local
        local[seeds] = torch.arange(len(seeds))
        if int(local[seeds].eq(torch.arange(len(seeds))).sum()) != len(seeds):
            local[seeds] = -1
            raise ValueError("seeds must be distinct node ids")
        nodes, sources, targets = [seeds], [], []
        frontier, count = seeds, len(seeds)
        for fanout in self.fanouts:
            if len(frontier) == 0:
                break
            src, pos = self._sample_hop(frontier, fanout)
            new = torch.unique(src[local[src] < 0])  # first reached now: the next frontier
            local[new] = torch.arange(count, count + len(new))
            count += len(new)
            sources.append(local[src])
            targets.append(local[frontier[pos]])
            nodes.append(new)
            frontier = new
        all_nodes = torch.cat(nodes)
        local[all_nodes] = -1
        if sources:
            edge_index = torch.stack([torch.cat(sources), torch.cat(targets)])
        else:
            edge_index = torch.zeros(2, 0, dtype=torch.long)
        return SampledSubgraph(nodes=all_nodes, edge_index=edge_index)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


__all__ = ["NeighborSampler", "SampledSubgraph"]
