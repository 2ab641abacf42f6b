"""Explaining a graph classifier's prediction for one whole graph: edge occlusion, node-feature
attributions, and the fidelity of an explanatory subgraph.

A graph classifier ``f(X, A) -> [C]`` (GIN, MPNN ...) scores a whole graph. Two views of *why*:

**Edge occlusion** (Zeiler & Fergus 2014's occlusion, applied to edges; the "remove one edge" baseline of
Yuan et al. 2022's survey). For every undirected edge ``{u, v}`` (both directions removed together):

    I(u, v) = L_c(G) - L_c(G without {u, v}),     L_c = log P(c) - log(1 - P(c)) = s_c - logsumexp_{c' != c} s_c'

(``c``: the explained class, ``s``: the model's scores). The log-odds rather than the probability itself:
a well-trained classifier is often saturated (``P(c) = 0.9999``), where removing one edge moves the
probability by ~1e-5 for every edge and the ranking drowns in rounding; the log-odds keep the ordering
(they are a monotone function of ``P(c)``) and stay readable. Positive: the edge supports ``c``; the
explanatory subgraph is the ``k`` edges of largest ``I``. It needs no gradient through edge weights, so
it works for any model taking ``(x, edge_index)`` -- GIN's sum aggregation has no edge weights to mask,
which rules out GNNExplainer's soft edge mask there. One batched forward pass over the ``|E|/2``
occluded graphs.

**Node-feature attributions**: any gradient method of :mod:`archlab.explain` applied to
:class:`GraphClassifier`, which makes the node features ``X [N, F]`` of one graph the input ``[1, N, F]``
(interpolation steps and noise samples become a batch of copies of the graph); a node's importance is
the sum over its features. With Integrated Gradients and a zero baseline they sum to
``f_c(X) - f_c(0)`` (completeness).

**Fidelity** of the top-``k`` edges (Yuan, Yu, Gui & Ji 2022, "Explainability in Graph Neural Networks: A
Taxonomic Survey", Sec. 6), as for nodes in :mod:`archlab.explain.gnn_explainer`:

    fidelity+ = P(c | G) - P(c | G without those edges)      (high: the explanation was necessary)
    fidelity- = P(c | G) - P(c | only those edges)          (low: the explanation is sufficient)

Shapes: x ``[N, F]``, edge_index ``[2, E]`` (int64), edge_attr ``[E, D]`` or None.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..errors import ArchlabError


def undirected_pairs(edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pairs [P, 2], pair_of_edge [E])``: the distinct undirected edges ``(min, max)`` and, for each
    directed edge, the index of its pair (both directions of an edge share one)."""
    lo, hi = edge_index.min(0).values, edge_index.max(0).values
    pairs, inverse = torch.unique(torch.stack([lo, hi], 1), dim=0, return_inverse=True)
    return pairs, inverse


class GraphClassifier(nn.Module):
    """``x [B, N, F] -> scores [B, C]``: ``model`` on ``B`` copies of one graph (its edges fixed), merged
    block-diagonally into one batch. Passes ``edge_attr`` and ``num_graphs`` when the model takes them."""

    def __init__(self, model: nn.Module, edge_index: torch.Tensor, edge_attr: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model, self.edge_index, self.edge_attr = model, edge_index, edge_attr
        params = inspect.signature(model.forward).parameters
        if "batch" not in params:
            raise ArchlabError(f"{type(model).__name__} takes no `batch` vector: graph-level explanations need a "
                               "graph classifier model(x, edge_index, batch=...)")
        self.takes_attr, self.takes_count = "edge_attr" in params, "num_graphs" in params
        self.train(model.training)  # a wrapper left in train mode would put the model back in it after eval_mode

    def scores(self, xs: list[torch.Tensor], edges: list[torch.Tensor],
               attrs: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Scores ``[len(xs), C]`` of the graphs ``(xs[i], edges[i], attrs[i])`` in one batched call."""
        sizes = torch.tensor([len(x) for x in xs])
        offsets = torch.cumsum(sizes, 0) - sizes
        ei = torch.cat([e + int(o) for e, o in zip(edges, offsets, strict=True)], dim=1)
        kwargs: dict = {"batch": torch.repeat_interleave(torch.arange(len(xs)), sizes)}
        if self.takes_count:
            kwargs["num_graphs"] = len(xs)
        if self.takes_attr and attrs is not None and attrs[0] is not None:
            kwargs["edge_attr"] = torch.cat(attrs)  # type: ignore[arg-type]
        return self.model(torch.cat(xs), ei, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.scores(list(x), [self.edge_index] * b, [self.edge_attr] * b)


def log_odds(scores: torch.Tensor, target: int) -> torch.Tensor:
    """``log P(target) - log(1 - P(target))`` of softmax scores ``[B, C]``, computed from the scores: ``[B]``."""
    others = torch.cat([scores[:, :target], scores[:, target + 1:]], dim=1)
    return scores[:, target] - torch.logsumexp(others, dim=1)


@torch.no_grad()
def edge_occlusion(model: nn.Module, x: torch.Tensor, edge_index: torch.Tensor, target: int,
                   edge_attr: torch.Tensor | None = None, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pairs [P, 2], importance [P])``: the drop in the log-odds of ``target`` when each undirected edge is
    removed (module docstring)."""
    if edge_index.shape[1] == 0:
        return torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)
    wrapped = GraphClassifier(model, edge_index, edge_attr)
    p = log_odds(wrapped.scores([x], [edge_index], [edge_attr]), target)[0]
    pairs, inverse = undirected_pairs(edge_index)
    drops = []
    for s in range(0, len(pairs), chunk):
        ids = range(s, min(s + chunk, len(pairs)))
        keep = [inverse != i for i in ids]
        scores = wrapped.scores([x] * len(keep), [edge_index[:, k] for k in keep],
                                [None if edge_attr is None else edge_attr[k] for k in keep])
        drops.append(p - log_odds(scores, target))
    return pairs, torch.cat(drops)


@torch.no_grad()
def graph_fidelity(model: nn.Module, x: torch.Tensor, edge_index: torch.Tensor, target: int,
                   pair_scores: torch.Tensor, k: int, edge_attr: torch.Tensor | None = None) -> tuple[float, float]:
    """``(fidelity+, fidelity-)`` of the ``k`` undirected edges with the largest ``pair_scores`` (ordered
    as :func:`undirected_pairs`; module docstring)."""
    wrapped = GraphClassifier(model, edge_index, edge_attr)
    _, inverse = undirected_pairs(edge_index)
    top = torch.zeros(len(pair_scores), dtype=torch.bool)
    top[pair_scores.argsort(descending=True, stable=True)[:k]] = True
    chosen = top[inverse]
    masks = [torch.ones_like(chosen), ~chosen, chosen]
    probs = wrapped.scores([x] * 3, [edge_index[:, m] for m in masks],
                           [None if edge_attr is None else edge_attr[m] for m in masks]).softmax(-1)[:, target]
    return float(probs[0] - probs[1]), float(probs[0] - probs[2])


def spring_layout(edge_index: torch.Tensor, n: int, iterations: int = 200, seed: int = 0) -> torch.Tensor:
    """Node positions ``[n, 2]`` in [-1, 1] by Fruchterman & Reingold's force-directed placement (1991):
    every pair repels by ``k^2 / d``, every edge attracts by ``d^2 / k``, and a weak pull ``d / k`` towards
    the centre keeps nodes without edges from drifting off; steps capped by a cooling temperature."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1
    if n < 2:
        return pos.float() * 0
    k = (4.0 / n) ** 0.5
    adj = torch.zeros(n, n, dtype=torch.float64)
    adj[edge_index[0], edge_index[1]] = 1.0
    adj = ((adj + adj.T) > 0).double()
    temp = 0.2
    for _ in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]                      # [n, n, 2]
        dist = delta.norm(dim=-1).clamp(min=1e-3)
        force = k * k / dist**2 - adj * dist / k                       # along delta / dist, per unit length
        force.fill_diagonal_(0)
        disp = (delta * force[..., None]).sum(1) - 0.1 * pos * pos.norm(dim=-1, keepdim=True) / k
        length = disp.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        pos = pos + disp / length * length.clamp(max=temp)
        temp = max(temp * 0.98, 0.002)
    pos = pos - pos.mean(0)
    return (pos / pos.abs().max().clamp(min=1e-9)).float()
