"""Integrated Gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks").

The attribution of feature ``i`` is the path integral of the gradient along the straight line from a
baseline ``x'`` (an input that carries "no signal", e.g. a black image) to the input ``x`` (Eq. 1):

    IG_i(x) = (x_i - x'_i) * integral_0^1  dF(x' + a (x - x')) / dx_i  da

By the fundamental theorem of calculus for path integrals the attributions are *complete*
(Proposition 1): ``sum_i IG_i(x) = F(x) - F(x')``. The integral is approximated by a quadrature rule
with ``n_steps`` nodes ``a_k`` and weights ``w_k`` (``sum_k w_k = 1``):

    IG_i(x) ~ (x_i - x'_i) * sum_k w_k * dF(x' + a_k (x - x')) / dx_i

- ``riemann_left`` / ``riemann_right`` / ``riemann_middle``: ``a_k = k/n``, ``(k+1)/n``, ``(k+1/2)/n``,
  ``w_k = 1/n`` (the paper's Eq. 3 is the right sum);
- ``riemann_trapezoid``: ``a_k = k/(n-1)``, end weights halved;
- ``gausslegendre`` (the default, as in Captum): Gauss-Legendre nodes on [0, 1], exact for polynomials
  of degree ``2n - 1`` along the path, so it usually needs far fewer steps than a Riemann sum.

The rule is chosen with ``rule=`` (Captum's ``method=``, a name taken here by ``attribute``'s own
``method``). All ``n_steps`` points of all examples go through the model in chunks of ``internal_batch_size`` rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ArchlabError
from .base import Target, baseline_like, check_positive, gradient, register_method, repeat_target, select

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(rule: str, n_steps: int) -> tuple[list[float], list[float]]:
    """Nodes ``a_k`` in [0, 1] and weights ``w_k`` (summing to 1) of a rule with ``n_steps`` points."""
    check_positive("n_steps", n_steps)
    n = n_steps
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)  # on [-1, 1], weights sum to 2
        return (0.5 * (nodes + 1)).tolist(), (0.5 * weights).tolist()
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ArchlabError("riemann_trapezoid needs n_steps >= 2")
        weights = [1 / (n - 1)] * n
        weights[0] = weights[-1] = 1 / (2 * (n - 1))
        return [k / (n - 1) for k in range(n)], weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}.get(rule)
    if offset is None:
        raise ArchlabError(f"unknown integration rule {rule!r}; choose one of {', '.join(RULES)}")
    return [(k + offset) / n for k in range(n)], [1 / n] * n


@register_method("integrated_gradients")
def integrated_gradients(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                         baselines: float | torch.Tensor | None = None, n_steps: int = 50,
                         rule: str = "gausslegendre", internal_batch_size: int | None = None,
                         layer: str | nn.Module | None = None, fast: bool = True) -> torch.Tensor:
    """``(x - x') * sum_k w_k grad F(x' + a_k (x - x'))``, shape of ``inputs`` -- or, with ``layer``, the
    same integral in the space of that layer's output (see :func:`layer_integrated_gradients`).

    ``fast`` (default): when the input goes first into one affine layer, the equal computation of
    integrated_gradients_fast.py (that layer run twice instead of ``n_steps`` times); ``fast=False``: this
    reference always."""
    if layer is not None:
        return layer_integrated_gradients(model, inputs, target, layer=layer, baselines=baselines, n_steps=n_steps,
                                          rule=rule)
    alphas, weights = quadrature(rule, n_steps)
    x = inputs.detach()
    base = baseline_like(x, baselines)
    b = x.shape[0]
    a = torch.tensor(alphas, dtype=x.dtype, device=x.device).view(-1, *([1] * x.dim()))
    w = torch.tensor(weights, dtype=x.dtype, device=x.device).view(-1, *([1] * x.dim()))
    chunk = internal_batch_size or n_steps * b
    check_positive("internal_batch_size", chunk)
    if fast:
        from .integrated_gradients_fast import first_affine_layer, integrated_gradients_first_layer

        first = first_affine_layer(model, x)
        if first is not None:
            return integrated_gradients_first_layer(model, x, base, target, first, alphas, weights, chunk)
    path = (base + a * (x - base)).reshape(n_steps * b, *x.shape[1:])   # step-major: rows k*B .. k*B+B-1
    targets = repeat_target(target, n_steps)
    grads = []
    for start in range(0, path.shape[0], chunk):
        t = targets
        if isinstance(t, torch.Tensor):
            t = t[start:start + chunk]
        grads.append(gradient(model, path[start:start + chunk], t))
    total = (torch.cat(grads).view(n_steps, *x.shape) * w).sum(0)
    return (x - base) * total


def layer_integrated_gradients(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                               layer: str | nn.Module, baselines: float | torch.Tensor | None = None,
                               n_steps: int = 50, rule: str = "gausslegendre") -> torch.Tensor:
    """Integrated Gradients of a layer's output (Captum's ``LayerIntegratedGradients``): the path runs from
    the layer's output for the baseline input ``h'`` to its output for the input ``h``, the rest of the
    model on top, ``(h - h') * sum_k w_k dF/dh (h' + a_k (h - h'))``; shape of the layer's output.

    This is how token models are explained: ``inputs`` are token ids (no gradient), ``layer`` the embedding,
    ``baselines`` a baseline token id (e.g. padding); the attribution of a token is the sum over its
    embedding dimensions. Completeness holds in the layer's space: the sum is ``F(x) - F(x')``.
    """
    from .base import find_layer, forward_hooks

    module = find_layer(model, layer)
    alphas, weights = quadrature(rule, n_steps)
    x = inputs.detach()
    base = baseline_like(x, baselines) if x.is_floating_point() else (
        torch.full_like(x, int(baselines or 0)) if not isinstance(baselines, torch.Tensor)
        else torch.broadcast_to(baselines.to(x.dtype), x.shape).clone())
    seen: list[torch.Tensor] = []

    def keep(_m: nn.Module, _a: object, out: torch.Tensor) -> None:
        seen.append(out.detach())

    with forward_hooks([module], keep), torch.no_grad():
        model(x)
        model(base)
    h, h0 = seen
    b = x.shape[0]
    a = torch.tensor(alphas, dtype=h.dtype, device=h.device).view(-1, *([1] * h.dim()))
    w = torch.tensor(weights, dtype=h.dtype, device=h.device).view(-1, *([1] * h.dim()))
    path = (h0 + a * (h - h0)).reshape(n_steps * b, *h.shape[1:]).requires_grad_(True)

    def replace(_m: nn.Module, _a: object, _out: torch.Tensor) -> torch.Tensor:
        return path

    with forward_hooks([module], replace), torch.enable_grad():
        scores = select(model(x.repeat(n_steps, *([1] * (x.dim() - 1)))), repeat_target(target, n_steps))
        (grads,) = torch.autograd.grad(scores.sum(), path)
    return (h - h0) * (grads.view(n_steps, *h.shape) * w).sum(0)
