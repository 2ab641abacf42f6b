"""Exact Shapley values (Shapley 1953, "A Value for n-Person Games"; for model explanation Štrumbelj &
Kononenko 2014 and Lundberg & Lee 2017).

Features are players, the coalition value is the score with the absent features at the baseline
(see :mod:`.coalitions`), and feature ``i`` receives its average marginal contribution over all
orders in which the players could join:

    phi_i = sum_{S subset of N \\ {i}}  |S|! (d - |S| - 1)! / d!  * ( v(S + {i}) - v(S) )

The only attribution satisfying *efficiency* (``sum_i phi_i = v(N) - v(empty) = S(x) - S(x')``),
*symmetry* (interchangeable players get equal shares), *dummy* (a player that never changes the value
gets 0) and *additivity*. Exact evaluation costs ``2^d`` model evaluations per example, so ``d`` (the
number of groups of ``feature_mask``) is limited to 20; use ``kernel_shap`` beyond.

With every coalition's value ``v(S)`` in hand, ``phi = v @ C`` for the fixed ``[2^d, d]`` matrix
``C[S, i] = w(|S| - 1)`` if ``i in S`` else ``-w(|S|)``, with ``w(k) = k! (d - k - 1)! / d!``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ArchlabError
from .base import Target, baseline_like, register_method
from .coalitions import groups, values

MAX_EXACT_FEATURES = 20


def all_coalitions(d: int) -> torch.Tensor:
    """Every subset of ``d`` players as a ``[2^d, d]`` 0/1 matrix (row ``s`` = the bits of ``s``)."""
    s = torch.arange(2**d)
    return ((s[:, None] >> torch.arange(d)) & 1).double()


def shapley_matrix(z: torch.Tensor) -> torch.Tensor:
    """``C`` with ``phi = v @ C`` for the coalitions ``z`` = ``all_coalitions(d)``."""
    d = z.shape[1]
    w = torch.tensor([math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d) for k in range(d)]
                     + [0.0], dtype=torch.float64)
    size = z.sum(1).long()
    return torch.where(z.bool(), w[(size - 1).clamp(min=0)][:, None], -w[size][:, None])


@register_method("shapley")
def shapley(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
            baselines: float | torch.Tensor | None = None, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact Shapley values of the feature groups, each spread over its group's features: shape of ``inputs``."""
    x = inputs.detach()
    mask, d = groups(x, feature_mask)
    if d > MAX_EXACT_FEATURES:
        raise ArchlabError(f"exact Shapley values need 2^d model evaluations; d = {d} > {MAX_EXACT_FEATURES}: "
                           "group features with feature_mask= or use method='kernel_shap'")
    z = all_coalitions(d)
    v = values(model, x, target, baseline_like(x, baselines), mask, z).double()   # [B, 2^d]
    phi = (v @ shapley_matrix(z)).to(x.dtype)                                       # [B, d]
    return spread(phi, mask)


def spread(phi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-group values ``[B, d]`` -> ``[B, *F]``, each group's value on every feature of the group, as
    Captum does (so a group's value is counted once per feature when summing the map)."""
    return phi.to(mask.device)[:, mask]
