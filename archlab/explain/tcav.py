"""TCAV: testing with concept activation vectors (Kim, Wattenberg, Gilmer, Cai, Wexler, Viégas & Sayres
2018, "Interpretability Beyond Feature Attribution", Sec. 3).

A *concept* is given by examples (images of horizontal strokes, of closed loops); the question is how
much a class prediction is sensitive to it at a layer ``l`` with activations ``f_l(x)``.

1. **CAV** (Sec. 3.2): a linear classifier separating the concept's activations from those of random
   examples; its unit normal ``v_C`` (pointing to the concept) is the concept activation vector. Here:
   L2-regularised logistic regression on standardised activations, trained full-batch with L-BFGS,
   mapped back to the unstandardised space.
2. **Conceptual sensitivity** (Eq. 1): the directional derivative of the class-``k`` logit along the
   CAV, ``S_{C,k,l}(x) = grad_{f_l} h_{l,k}(f_l(x)) . v_C``.
3. **TCAV score** (Eq. 2): the fraction of class-``k`` inputs with positive sensitivity.
4. **Significance** (Sec. 3.3): CAVs trained against ``repeats`` different random sets give a
   distribution of scores; random-vs-random CAVs give the null distribution; a two-sided Welch t-test
   between the two (p < 0.05 and a score on the right side of 0.5) says the concept matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ArchlabError
from .base import find_layer


def activations(model: nn.Module, layer: str | nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``f_l(x)`` flattened: ``[N, features]``."""
    module = find_layer(model, layer)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().flatten(1).cpu()))
    try:
        with torch.no_grad():
            for s in range(0, len(x), batch):
                model(x[s:s + batch])
    finally:
        handle.remove()
    return torch.cat(seen)


def concept_vector(concept: torch.Tensor, random: torch.Tensor, l2: float = 1e-2) -> torch.Tensor:
    """Unit normal of a logistic-regression boundary between ``concept`` and ``random`` activations."""
    a = torch.cat([concept, random]).double()
    y = torch.cat([torch.ones(len(concept)), torch.zeros(len(random))]).double()
    mean, std = a.mean(0), a.std(0).clamp(min=1e-8)
    z = (a - mean) / std
    w = torch.zeros(a.shape[1], dtype=torch.double, requires_grad=True)
    b = torch.zeros((), dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    v = w.detach() / std                      # the normal in the original activation space
    return (v / v.norm().clamp(min=1e-12)).float()


def sensitivities(model: nn.Module, layer: str | nn.Module, x: torch.Tensor, target: int,
                  cav: torch.Tensor) -> torch.Tensor:
    """``grad_{f_l} h_k . v_C`` for every input: ``[N]``."""
    module = find_layer(model, layer)
    seen: list[torch.Tensor] = []

    def keep(_m: nn.Module, _a: object, out: torch.Tensor) -> None:
        seen.append(out)

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            seen.clear()
            logits = model(x.detach().requires_grad_(True))
            (grad,) = torch.autograd.grad(logits[:, target].sum(), seen[0])
    finally:
        handle.remove()
    return grad.flatten(1) @ cav.to(grad.device, grad.dtype)


def score(model: nn.Module, layer: str | nn.Module, x: torch.Tensor, target: int, cav: torch.Tensor) -> float:
    """TCAV score: the fraction of ``x`` whose class-``target`` logit increases along the CAV."""
    return float((sensitivities(model, layer, x, target, cav) > 0).double().mean())


def welch_t_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sided Welch t-test: (t statistic, p-value), with the Student-t tail integrated numerically."""
    ta, tb = torch.tensor(a, dtype=torch.double), torch.tensor(b, dtype=torch.double)
    va, vb = ta.var() / len(ta), tb.var() / len(tb)
    if va + vb == 0:
        return (0.0, 1.0) if float(ta.mean()) == float(tb.mean()) else (math.inf, 0.0)
    t = float((ta.mean() - tb.mean()) / (va + vb).sqrt())
    df = float((va + vb) ** 2 / (va**2 / (len(ta) - 1) + vb**2 / (len(tb) - 1)))
    # P(|T| > |t|) = 1 - 2 * integral_0^|t| density; Simpson's rule on 2000 intervals
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    u = torch.linspace(0, abs(t), 2001, dtype=torch.double)
    dens = torch.exp(log_c - (df + 1) / 2 * torch.log1p(u**2 / df))
    coef = torch.ones(2001, dtype=torch.double)
    coef[1:-1:2], coef[2:-1:2] = 4, 2
    integral = float((coef * dens).sum() * (abs(t) / 2000) / 3)
    return t, max(0.0, 1 - 2 * integral)


@dataclass
class TCAVResult:
    scores: list[float]
    """TCAV scores of the concept CAVs (one per random set)."""
    random_scores: list[float]
    """TCAV scores of random-vs-random CAVs (the null distribution)."""
    t: float
    p_value: float

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def tcav(model: nn.Module, layer: str | nn.Module, inputs: torch.Tensor, target: int, concept: torch.Tensor,
         random_sets: list[torch.Tensor]) -> TCAVResult:
    """TCAV scores of ``concept`` for class ``target`` on ``inputs`` against each of ``random_sets`` (at
    least 3), the random-vs-random null (each random set against the next), and the t-test between them."""
    if len(random_sets) < 3:
        raise ArchlabError(f"TCAV needs at least 3 random sets for its significance test, got {len(random_sets)}")
    was_training = model.training
    model.eval()
    try:
        acts_c = activations(model, layer, concept)  # on the model's device; CAVs are fitted on the CPU
        acts_r = [activations(model, layer, r) for r in random_sets]
        scores = [score(model, layer, inputs, target, concept_vector(acts_c, r)) for r in acts_r]
        null = [score(model, layer, inputs, target, concept_vector(acts_r[i], acts_r[(i + 1) % len(acts_r)]))
                for i in range(len(acts_r))]
    finally:
        model.train(was_training)
    t, p = welch_t_test(scores, null)
    return TCAVResult(scores, null, t, p)
