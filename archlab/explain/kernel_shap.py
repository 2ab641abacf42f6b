"""KernelSHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions", Theorem 2).

Shapley values are the solution of a weighted linear regression over coalitions ``z in {0,1}^d``:

    min_phi  sum_z  pi(z) ( v(z) - phi_0 - sum_i z_i phi_i )^2,
    pi(z) = (d - 1) / ( C(d, |z|) |z| (d - |z|) )                 (the Shapley kernel)

with infinite weight on the empty and the full coalition, i.e. the constraints ``phi_0 = v(empty)``
and ``sum_i phi_i = v(N) - v(empty)`` (efficiency). The constraint eliminates ``phi_d``:

    v(z) - v(empty) - z_d (v(N) - v(empty))  =  sum_{i<d} (z_i - z_d) phi_i

which is solved by weighted least squares.

- ``n_samples >= 2^d - 2``: every proper coalition, weighted by ``pi`` -- the solution is then *exactly*
  the Shapley values (what ``shap.KernelExplainer`` does for small ``d``).
- otherwise: sizes ``k`` drawn with probability proportional to ``pi``'s total mass at that size,
  ``(d - 1) / (k (d - k))``, a uniform coalition of that size, each paired with its complement
  (antithetic sampling halves the variance, as in the shap package); every sample then has weight 1.

Evaluations: ``n_samples`` coalitions + 2 per example (all of them in one batch through the model).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Target, baseline_like, check_positive, register_method
from .coalitions import groups, values
from .shapley import all_coalitions, spread


def shapley_kernel(z: torch.Tensor) -> torch.Tensor:
    """``pi(z)`` for coalitions ``z`` ``[S, d]`` that are neither empty nor full."""
    d = z.shape[1]
    k = z.sum(1)
    binom = torch.tensor([math.comb(d, int(s)) for s in k.tolist()], dtype=torch.float64)
    return (d - 1) / (binom * k * (d - k))


def sample_coalitions(d: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` coalitions (an even number, pairs of complements) drawn from the Shapley kernel: ``[n, d]``."""
    sizes = torch.arange(1, d, dtype=torch.float64)
    p = (d - 1) / (sizes * (d - sizes))
    half = (n + 1) // 2
    k = torch.multinomial(p / p.sum(), half, replacement=True, generator=generator) + 1        # [half]
    order = torch.rand(half, d, generator=generator).argsort(1)                                  # random permutations
    z = (order < k[:, None]).double()                                                            # |z| = k, uniform
    return torch.cat([z, 1 - z])


def solve(z: torch.Tensor, v: torch.Tensor, v_empty: torch.Tensor, v_full: torch.Tensor,
          weights: torch.Tensor) -> torch.Tensor:
    """The constrained weighted least squares above, batched over examples: ``phi`` ``[B, d]``."""
    delta = v_full - v_empty                                          # [B]
    x = z[:, :-1] - z[:, -1:]                                         # [S, d-1]
    y = v - v_empty[:, None] - z[:, -1][None] * delta[:, None]        # [B, S]
    xw = x * weights[:, None]
    phi_rest = torch.linalg.solve(x.T @ xw, xw.T @ y.T).T             # [B, d-1]
    return torch.cat([phi_rest, (delta - phi_rest.sum(1))[:, None]], dim=1)


@register_method("kernel_shap")
def kernel_shap(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                baselines: float | torch.Tensor | None = None, feature_mask: torch.Tensor | None = None,
                n_samples: int = 512, generator: torch.Generator | None = None) -> torch.Tensor:
    """KernelSHAP estimates of the groups' Shapley values, spread over their features: shape of ``inputs``."""
    check_positive("n_samples", n_samples)
    x = inputs.detach()
    mask, d = groups(x, feature_mask)
    if d == 1:
        ends = values(model, x, target, baseline_like(x, baselines), mask, torch.tensor([[0.0], [1.0]]))
        return spread((ends[:, 1] - ends[:, 0])[:, None].to(x.dtype), mask)
    if d < 63 and n_samples >= 2**d - 2:
        z = all_coalitions(d)[1:-1]
        weights = shapley_kernel(z)
    else:
        z = sample_coalitions(d, n_samples, generator)
        weights = torch.ones(len(z), dtype=torch.float64)
    ends = torch.stack([torch.zeros(d), torch.ones(d)]).double()
    v = values(model, x, target, baseline_like(x, baselines), mask, torch.cat([ends, z])).double()
    phi = solve(z, v[:, 2:], v[:, 0], v[:, 1], weights)
    return spread(phi.to(x.dtype), mask)
