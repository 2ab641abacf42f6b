"""Elastic Weight Consolidation (Kirkpatrick et al. 2017, PNAS, Eq. 3) and Online EWC (Schwarz et al.
2018, "Progress & Compress", Sec. 2.2).

After task k the diagonal of the Fisher information at the learned parameters theta*_k is estimated
from the task's training examples,

    F_k,i = 1/N sum_n ( d log p(yhat_n | x_n, theta) / d theta_i )^2  at theta*_k

with yhat_n the model's own prediction (the choice of van de Ven & Tolias' code; the expectation over
the predictive distribution is the exact Fisher, the predicted label its usual approximation), every
example's gradient taken on its own (per-sample gradients with ``torch.func.vmap``; ``fisher_samples``
caps the examples). Later tasks add the quadratic penalty

    EWC:         lambda/2 sum_k sum_i F_k,i (theta_i - theta*_k,i)^2           one term per old task
    Online EWC:  lambda/2 sum_i Ftilde_i (theta_i - theta*_i)^2,  Ftilde <- gamma Ftilde + F_k, theta* <- theta*_k
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .base import Method, MethodContext, parameters, register_method


def diagonal_fisher(model: nn.Module, x: torch.Tensor, active: torch.Tensor,
                    chunk: int = 128) -> dict[str, torch.Tensor]:
    """Mean over the rows of ``x`` of the squared per-sample gradient of log p(predicted unit | x),
    the softmax over the ``active`` units; one tensor per trainable parameter."""
    params = {k: v.detach() for k, v in parameters(model).items()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def log_likelihood(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (xi[None],))[0, active]
        return F.log_softmax(logits, dim=0).gather(0, yi[None])[0]

    per_sample = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    was_training = model.training
    model.eval()
    for start in range(0, len(x), chunk):
        xs = x[start:start + chunk]
        with torch.no_grad():  # the predicted unit (position within ``active``) of every example
            predicted = model(xs)[:, active].argmax(1)
        for k, g in per_sample(params, xs, predicted).items():
            fisher[k] += g.pow(2).sum(0)
    model.train(was_training)
    return {k: v / len(x) for k, v in fisher.items()}


@register_method("ewc")
class EWC(Method):
    """EWC: a quadratic penalty per old task, weighted by that task's diagonal Fisher."""

    online = False

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.fishers: list[dict[str, torch.Tensor]] = []
        self.anchors: list[dict[str, torch.Tensor]] = []

    def penalty(self) -> torch.Tensor:
        total = torch.zeros((), device=self.ctx.device)
        params = parameters(self.model)
        for fisher, anchor in zip(self.fishers, self.anchors, strict=True):
            for k, p in params.items():
                total = total + (fisher[k] * (p - anchor[k]).pow(2)).sum()
        return 0.5 * self.cfg.ewc_lambda * total

    def loss(self, x: torch.Tensor, target: torch.Tensor, task: int) -> tuple[torch.Tensor, dict[str, float]]:
        ce, pen = self.current_loss(x, target, task), self.penalty()
        return ce + pen, {"penalty": float(pen.detach())}

    def end_task(self, task: int) -> None:
        idx = self.stream.index["train"][task]
        if self.cfg.fisher_samples:
            gen = torch.Generator().manual_seed(self.ctx.seed + 7919 * (task + 1))
            idx = idx[torch.randperm(len(idx), generator=gen)[: self.cfg.fisher_samples]]
        x, _ = self.stream.batch("train", task, idx)
        fisher = diagonal_fisher(self.model, x.to(self.ctx.device), self.stream.active(task, task).to(self.ctx.device))
        anchor = {k: v.detach().clone() for k, v in parameters(self.model).items()}
        if self.online and self.fishers:
            fisher = {k: self.cfg.ewc_gamma * self.fishers[0][k] + fisher[k] for k in fisher}
            self.fishers, self.anchors = [fisher], [anchor]
        else:
            self.fishers.append(fisher)
            self.anchors.append(anchor)

    def state_dict(self) -> dict[str, Any]:
        return {"fishers": self.fishers, "anchors": self.anchors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fishers, self.anchors = list(state["fishers"]), list(state["anchors"])


@register_method("online_ewc")
class OnlineEWC(EWC):
    """Online EWC: one running Fisher (decayed by gamma) anchored at the latest task's parameters."""

    online = True
