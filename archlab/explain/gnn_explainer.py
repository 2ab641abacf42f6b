"""GNNExplainer (Ying, Bourgeois, You, Zitnik & Leskovec 2019, "GNNExplainer: Generating Explanations
for Graph Neural Networks") for node classification, and the fidelity of an explanation.

A GNN's prediction for node ``v`` depends on its computation graph (the ``L``-hop neighbourhood).
GNNExplainer learns a soft mask over the edges, ``sigma(M) in (0, 1)^E``, and one over the feature
columns, ``sigma(F) in (0, 1)^D``, that keep the prediction while keeping little (Sec. 4.1-4.2):

    min_{M, F}  -log P_Phi(Y = c | G_s = (x * sigma(F), edges weighted by sigma(M)))
                + a_e sum_e sigma(M_e) + b_e mean_e H(sigma(M_e))
                + a_f mean_j sigma(F_j) + b_f mean_j H(sigma(F_j))

``c`` is the model's prediction on the full graph (or ``target``), ``H(p) = -p log p - (1-p) log(1-p)``
pushes the masks towards 0 or 1. Defaults as the paper's reference code and PyG (Adam, lr 0.01, 100
epochs, a_e = 0.005, b_e = 1, a_f = 1, b_f = 0.1). The masks are learned on the computation graph only
(the edges whose weight the prediction has a gradient in, with their nodes; the prediction there is
checked equal to the full graph's); edges outside it are reported as 0.

The model is called ``model(x, edge_index, edge_weight)`` and must be differentiable in
``edge_weight`` (archlab's GCN with ``impl="scatter"``; its cached sparse path treats the weights as
data -- :func:`differentiable` rebuilds such a model on the scatter path with the same weights).

**Fidelity** (Yuan, Yu, Gui & Ji 2022, "Explainability in Graph Neural Networks: A Taxonomic Survey",
Sec. 6) of the ``k`` highest-ranked edges:

    fidelity+ = P(c | G) - P(c | G without those edges)      (high: the explanation was necessary)
    fidelity- = P(c | G) - P(c | only those edges)          (low: the explanation is sufficient)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ArchlabError


@dataclass
class Explanation:
    """Edge mask ``[E]`` and feature mask ``[D]`` in [0, 1] for one node, and the class they explain."""

    node: int
    target: int
    edge_mask: torch.Tensor
    feature_mask: torch.Tensor


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-15, 1 - 1e-15)
    return -p * p.log() - (1 - p) * (1 - p).log()


def differentiable(model: nn.Module) -> nn.Module:
    """``model`` itself, or -- for an archlab model whose config has ``impl="sparse"`` (edge weights
    cached as data) -- the same model rebuilt with ``impl="scatter"`` and the same weights."""
    config = getattr(model, "config", None)
    if getattr(config, "impl", None) != "sparse":
        return model
    import dataclasses

    rebuilt = type(model)(dataclasses.replace(config, impl="scatter"))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.train(model.training)


def gnn_explainer(model: nn.Module, x: torch.Tensor, edge_index: torch.Tensor, node: int, target: int | None = None,
                  *, epochs: int = 100, lr: float = 0.01, edge_size: float = 0.005, edge_ent: float = 1.0,
                  feat_size: float = 1.0, feat_ent: float = 0.1, seed: int = 0) -> Explanation:
    """Learn the edge and feature masks that explain ``model``'s prediction for ``node``."""
    n, d = x.shape
    if not 0 <= node < n:
        raise ArchlabError(f"node must be in [0, {n - 1}], got {node}")
    if epochs < 1 or not lr > 0:
        raise ArchlabError(f"epochs must be >= 1 and lr > 0, got {epochs}, {lr}")
    was_training = model.training
    model.eval()
    try:
        x = x.detach().to_dense() if x.is_sparse or x.layout == torch.sparse_csr else x.detach()
        e = edge_index.shape[1]
        ones = torch.ones(e, requires_grad=True)
        out = model(x, edge_index, ones)
        c = int(out.argmax(-1)[node]) if target is None else int(target)
        grad = (torch.autograd.grad(out.log_softmax(-1)[node, c], ones, allow_unused=True)[0]
                if out.requires_grad else None)
        if grad is None:
            raise ArchlabError(f"{type(model).__name__} gives no gradient to edge weights; GNNExplainer needs "
                               "model(x, edge_index, edge_weight) differentiable in edge_weight")
        # The computation graph: the edges the prediction depends on. Optimise on that subgraph only
        # (the same prediction, checked) -- a few hundred edges instead of the whole graph.
        used = grad != 0
        nodes = torch.unique(torch.cat([edge_index[:, used].flatten(), torch.tensor([node])]))
        relabel = torch.full((n,), -1, dtype=torch.long)
        relabel[nodes] = torch.arange(len(nodes))
        sub_x, sub_edges, sub_node = x[nodes], relabel[edge_index[:, used]], int(relabel[node])
        with torch.no_grad():
            same = torch.allclose(model(sub_x, sub_edges)[sub_node], out[node].detach(), atol=1e-5, rtol=1e-4)
        if not same:  # the model is not local in the edges it differentiates through: use the whole graph
            sub_x, sub_edges, sub_node, used = x, edge_index, node, torch.ones(e, dtype=torch.bool)
        gen = torch.Generator().manual_seed(seed)
        # the reference code's initialisation: N(1, std) for the edges, N(0.1, 0.1) for the features
        std = nn.init.calculate_gain("relu") * (2.0 / (2 * len(sub_x))) ** 0.5
        edge_logit = (1.0 + std * torch.randn(sub_edges.shape[1], generator=gen)).requires_grad_(True)
        feat_logit = (0.1 + 0.1 * torch.randn(d, generator=gen)).requires_grad_(True)
        opt = torch.optim.Adam([edge_logit, feat_logit], lr=lr)
        for _ in range(epochs):
            opt.zero_grad()
            em, fm = edge_logit.sigmoid(), feat_logit.sigmoid()
            logp = model(sub_x * fm, sub_edges, em).log_softmax(-1)[sub_node, c]
            loss = (-logp + edge_size * em.sum() + edge_ent * _entropy(em).mean()
                    + feat_size * fm.mean() + feat_ent * _entropy(fm).mean())
            loss.backward()
            opt.step()
        edge_mask = torch.zeros(e)
        edge_mask[used] = edge_logit.detach().sigmoid()
        return Explanation(node, c, edge_mask, feat_logit.detach().sigmoid())
    finally:
        model.train(was_training)


@torch.no_grad()
def fidelity(model: nn.Module, x: torch.Tensor, edge_index: torch.Tensor, node: int, target: int,
             edge_mask: torch.Tensor, k: int) -> tuple[float, float]:
    """``(fidelity+, fidelity-)`` of the ``k`` edges with the largest mask values (module docstring)."""
    p = model(x, edge_index).softmax(-1)[node, target]
    top = torch.zeros(edge_index.shape[1], dtype=torch.bool)
    top[edge_mask.argsort(descending=True, stable=True)[:k]] = True
    without = model(x, edge_index[:, ~top]).softmax(-1)[node, target]
    only = model(x, edge_index[:, top]).softmax(-1)[node, target]
    return float(p - without), float(p - only)
