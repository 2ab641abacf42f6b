"""Continuous-time dynamic graphs as event streams: the container, a chronological split, negative
sampling, and a seeded synthetic stream whose structure a memory-based model can learn.

An event ``k`` is an interaction ``src[k] -> dst[k]`` at time ``t[k]`` with features
``edge_feat[k]``; streams are sorted by time. Link prediction on a stream (Rossi et al. 2020,
"Temporal Graph Networks", Sec. 5) asks, for each event, whether ``(src, dst)`` interacts at ``t``
given everything before; negatives replace ``dst`` by a random node.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class EventStream:
    """Events sorted by time.

    Shapes:
        src, dst: (E,) int64 node ids in [0, num_nodes); t: (E,) float32, non-decreasing;
        edge_feat: (E, D) float32 (D may be 0)
    """

    src: Tensor
    dst: Tensor
    t: Tensor
    edge_feat: Tensor
    num_nodes: int

    def __post_init__(self) -> None:
        e = self.src.shape[0]
        if self.src.shape != (e,) or self.dst.shape != (e,) or self.t.shape != (e,) or self.edge_feat.shape[0] != e:
            raise ValueError("src, dst, t and edge_feat must have the same number of events")
        if self.edge_feat.dim() != 2:
            raise ValueError(f"edge_feat must be (E, D), got {tuple(self.edge_feat.shape)}")
        if e and bool((self.t[1:] < self.t[:-1]).any()):
            raise ValueError("events must be sorted by time")

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def edge_dim(self) -> int:
        return self.edge_feat.shape[1]

    def __getitem__(self, index: slice) -> EventStream:
        """A contiguous (hence still chronological) part of the stream."""
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("EventStream supports contiguous slices only")
        return EventStream(self.src[index], self.dst[index], self.t[index], self.edge_feat[index], self.num_nodes)

    def to(self, device: torch.device | str) -> EventStream:
        return EventStream(self.src.to(device), self.dst.to(device), self.t.to(device), self.edge_feat.to(device),
                           self.num_nodes)

    def batches(self, batch_size: int) -> list[EventStream]:
        """Consecutive chunks of ``batch_size`` events (the last may be shorter)."""
        return [self[a:a + batch_size] for a in range(0, len(self), batch_size)]

    def chronological_split(self, val_fraction: float = 0.15,
                            test_fraction: float = 0.15) -> tuple[EventStream, EventStream, EventStream]:
        """Train / val / test by time, as TGN's code splits: with ``t_val``, ``t_test`` the
        ``1 - val - test`` and ``1 - test`` quantiles of the timestamps, train is ``t <= t_val``,
        val ``t_val < t <= t_test``, test ``t > t_test`` (events at one timestamp never straddle a split)."""
        if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
            raise ValueError(f"need val_fraction, test_fraction >= 0 with sum < 1, got {val_fraction}, {test_fraction}")
        t = self.t.double()
        q = torch.tensor([1 - val_fraction - test_fraction, 1 - test_fraction], dtype=torch.float64)
        t_val, t_test = torch.quantile(t, q).tolist()
        a = int((t <= t_val).sum())
        b = int((t <= t_test).sum())
        return self[:a], self[a:b], self[b:]


def random_destinations(count: int, num_nodes: int, gen: torch.Generator) -> Tensor:
    """Negative destinations: ``count`` nodes drawn uniformly (the negative sampler of TGN's code
    draws from the destinations seen in the data; in these streams every node is one). Shape (count,)."""
    return torch.randint(0, num_nodes, (count,), generator=gen)


def synthetic_event_stream(num_nodes: int = 500, num_events: int = 20000, num_communities: int = 5,
                           p_repeat: float = 0.5, p_community: float = 0.8, recency: int = 3,
                           period: float = 2000.0, amplitude: float = 0.8, edge_dim: int = 4,
                           feature_noise: float = 1.0, seed: int = 0) -> EventStream:
    """A stream with memory-dependent structure, deterministic in ``seed``.

    * Nodes belong to ``num_communities`` communities (``node % num_communities``) and have a
      log-normal activity level.
    * Events arrive at rate 1 (exponential gaps). The source's community is drawn with weight
      ``1 + amplitude * sin(2π t / period + 2π c / C)`` (communities take turns being active), the
      source within it by activity.
    * With probability ``p_repeat`` (if the source has a past) the destination is one of the source's
      last ``recency`` partners, uniformly -- *who* interacted recently, which only a model that
      remembers identities can use; otherwise with probability ``p_community`` an activity-weighted
      node of the source's community, else a uniform node.
    * Features: ``f[c(src)] + f[c(dst)] + feature_noise * N(0, I)`` with a random vector ``f[c]`` per
      community (``edge_dim`` may be 0).
    """
    if num_nodes < 2 * num_communities or num_communities < 1:
        raise ValueError("need num_communities >= 1 and at least two nodes per community")
    rng = np.random.default_rng(seed)
    comm = np.arange(num_nodes) % num_communities
    activity = rng.lognormal(0.0, 1.0, num_nodes)
    members = [np.flatnonzero(comm == c) for c in range(num_communities)]
    weights = [activity[m] / activity[m].sum() for m in members]

    t = np.cumsum(rng.exponential(1.0, num_events))
    phase = 2 * np.pi * (t[:, None] / period + np.arange(num_communities)[None, :] / num_communities)
    comm_w = 1 + amplitude * np.sin(phase)
    comm_w /= comm_w.sum(1, keepdims=True)
    src_comm = (comm_w.cumsum(1) < rng.random((num_events, 1))).sum(1).clip(max=num_communities - 1)
    src = np.empty(num_events, dtype=np.int64)
    peer = np.empty(num_events, dtype=np.int64)  # an activity-weighted member of the source's community
    for c in range(num_communities):
        idx = np.flatnonzero(src_comm == c)
        src[idx] = rng.choice(members[c], size=len(idx), p=weights[c])
        peer[idx] = rng.choice(members[c], size=len(idx), p=weights[c])
    # The next member of the community stands in when the draw hit the source itself.
    clash = np.flatnonzero(peer == src)
    for k in clash:
        m = members[comm[src[k]]]
        peer[k] = m[(np.searchsorted(m, src[k]) + 1) % len(m)]
    anyone = (src + rng.integers(1, num_nodes, num_events)) % num_nodes  # uniform over the other nodes
    u = rng.random(num_events)
    pick = rng.integers(0, recency, num_events)

    history = [deque(maxlen=recency) for _ in range(num_nodes)]
    dst = np.empty(num_events, dtype=np.int64)
    for k in range(num_events):
        s, past = src[k], history[src[k]]
        if past and u[k] < p_repeat:
            d = past[pick[k] % len(past)]
        elif u[k] < p_repeat + (1 - p_repeat) * p_community:
            d = peer[k]
        else:
            d = anyone[k]
        dst[k] = d
        past.append(d)
        history[d].append(s)

    f = rng.normal(0.0, 1.0, (num_communities, edge_dim))
    feat = f[comm[src]] + f[comm[dst]] + feature_noise * rng.normal(0.0, 1.0, (num_events, edge_dim))
    return EventStream(torch.from_numpy(src), torch.from_numpy(dst), torch.from_numpy(t).float(),
                       torch.from_numpy(feat).float(), num_nodes)


__all__ = ["EventStream", "random_destinations", "synthetic_event_stream"]
