"""Attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", Sec. 3).

Rollout (attention_rollout.py) multiplies the layers' attention matrices, i.e. it sums the products of
weights over *all* paths. Attention flow treats the layered attention graph as a flow network instead:
one node per token per layer (``L + 1`` layers of ``T`` nodes), an edge from token ``j`` at layer ``l`` to
token ``i`` at layer ``l + 1`` with capacity ``A~_{l+1}[i, j]`` (the head-averaged attention plus the
identity for the residual path, rows renormalised -- the same matrices as rollout), and the attribution
of input token ``j`` to output token ``i`` is the **maximum flow** from ``(0, j)`` to ``(L, i)``. Each path
is limited by its weakest edge, so flow spreads attribution more evenly than rollout. The map of an image
classifier is the class token's flow from every patch: ``[B, 1, grid, grid]``.

Max flow by Edmonds-Karp (shortest augmenting paths, breadth-first) on the dense capacity matrix; it costs
one max-flow problem per patch and example, so it suits small models (the MNIST ViT: 7 x 17 nodes).
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import nn

from ..errors import ArchlabError
from .base import Target, register_method


def max_flow(capacity: list[list[float]], source: int, sink: int) -> float:
    """Maximum flow from ``source`` to ``sink`` in a network with ``capacity[u][v]`` (Edmonds-Karp)."""
    n = len(capacity)
    residual = [row[:] for row in capacity]
    neighbours = [[v for v in range(n) if capacity[u][v] > 0 or capacity[v][u] > 0] for u in range(n)]
    total = 0.0
    while True:
        parent = [-1] * n
        parent[source] = source
        queue = deque([source])
        while queue and parent[sink] < 0:
            u = queue.popleft()
            for v in neighbours[u]:
                if parent[v] < 0 and residual[u][v] > 1e-12:
                    parent[v] = u
                    queue.append(v)
        if parent[sink] < 0:
            return total
        push, v = math.inf, sink
        while v != source:
            push = min(push, residual[parent[v]][v])
            v = parent[v]
        v = sink
        while v != source:
            residual[parent[v]][v] -= push
            residual[v][parent[v]] += push
            v = parent[v]
        total += push


def flow_network(attentions: list[torch.Tensor]) -> list[list[float]]:
    """Capacities of the layered graph for one example: per-layer ``[H, T, T]`` weights (first layer first)."""
    t = attentions[0].shape[-1]
    n = (len(attentions) + 1) * t
    cap = [[0.0] * n for _ in range(n)]
    eye = torch.eye(t)
    for layer, att in enumerate(attentions):
        a = att.float().mean(0) + eye
        a = (a / a.sum(-1, keepdim=True)).tolist()
        for i in range(t):              # token i at layer + 1 reads token j at layer
            for j in range(t):
                cap[layer * t + j][(layer + 1) * t + i] = a[i][j]
    return cap


@register_method("attention_flow")
def attention_flow(model: nn.Module, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
    """Max flow from every patch (input layer) to the class token (last layer): ``[B, 1, grid, grid]``."""
    forward = getattr(model, "forward_with_attention", None)
    if forward is None:
        raise ArchlabError(f"{type(model).__name__} does not return attention weights (no forward_with_attention); "
                           "attention flow needs a transformer such as archlab's vit")
    with torch.no_grad():
        _, attentions = forward(inputs.detach())
    attentions = [a.detach().cpu() for a in attentions]
    depth, t = len(attentions), attentions[0].shape[-1]
    grid = math.isqrt(t - 1)
    if grid * grid != t - 1:
        raise ArchlabError(f"{t - 1} tokens after the class token do not form a square patch grid")
    maps = torch.zeros(inputs.shape[0], t - 1)
    for b in range(inputs.shape[0]):
        cap = flow_network([a[b] for a in attentions])
        for j in range(1, t):
            maps[b, j - 1] = max_flow(cap, j, depth * t)   # source: patch j at the input; sink: the class token
    return maps.view(-1, 1, grid, grid)
