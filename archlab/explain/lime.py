"""LIME (Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?": Explaining the Predictions of Any
Classifier", Sec. 3).

Explain the model near ``x`` by a simple surrogate fitted on perturbations of ``x``. In the
interpretable space ``z in {0,1}^d`` (feature groups kept or set to the baseline, see
:mod:`.coalitions`), LIME draws ``n_samples`` coalitions, each feature kept with probability 1/2,
weighs each by its proximity to ``x`` (the all-ones coalition)

    pi_x(z) = exp( -D(1, z)^2 / sigma^2 ),     D = cosine distance (Sec. 5.1; ``kernel_width`` = sigma)

and fits a weighted ridge regression ``g(z) = b + w^T z`` (Eq. 2 with ``Omega`` = an L2 penalty ``alpha``;
the intercept is not penalised). The coefficients ``w`` are the attributions. With ``alpha = 0`` and a
model linear in the kept features, ``w_i`` is exactly the contribution ``S(x) - S(x with i removed)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ArchlabError
from .base import Target, baseline_like, check_positive, register_method
from .coalitions import groups, values
from .shapley import spread


def weighted_ridge(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """Coefficients ``w`` of ``min sum_s pi_s (y_bs - b_b - w_b^T z_s)^2 + alpha |w_b|^2``, per example ``[B, d]``.

    The intercept is removed by centring ``z`` and ``y`` on their ``pi``-weighted means.
    """
    p = weights / weights.sum()
    zc = z - p @ z                                            # [S, d]
    yc = y - (y @ p)[:, None]                                 # [B, S]
    gram = zc.T @ (zc * weights[:, None]) + alpha * torch.eye(z.shape[1], dtype=z.dtype)
    return torch.linalg.lstsq(gram, (zc * weights[:, None]).T @ yc.T).solution.T


@register_method("lime")
def lime(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
         baselines: float | torch.Tensor | None = None, feature_mask: torch.Tensor | None = None,
         n_samples: int = 512, kernel_width: float = 0.25, alpha: float = 1.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Weighted ridge coefficients of a local linear surrogate, spread over each group: shape of ``inputs``."""
    check_positive("n_samples", n_samples)
    if not (kernel_width > 0 and alpha >= 0):
        raise ArchlabError(f"kernel_width must be > 0 and alpha >= 0, got {kernel_width}, {alpha}")
    x = inputs.detach()
    mask, d = groups(x, feature_mask)
    z = (torch.rand(n_samples, d, generator=generator) < 0.5).double()
    z[0] = 1.0                                                 # x itself, as in the reference implementation
    kept = z.sum(1)
    distance = 1 - kept / (kept.sqrt() * d**0.5).clamp(min=1e-12)        # cosine distance to the all-ones vector
    weights = torch.exp(-distance**2 / kernel_width**2)
    v = values(model, x, target, baseline_like(x, baselines), mask, z).double()
    return spread(weighted_ridge(z, v, weights, alpha).to(x.dtype), mask)
