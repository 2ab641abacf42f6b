"""Rényi-DP accountant of the sampled Gaussian mechanism (the privacy cost of DP-SGD).

One DP-SGD step adds ``N(0, sigma^2 C^2)`` noise to a sum of per-example gradients clipped to norm ``C``,
over a batch in which every example took part with probability ``q`` (Poisson sampling). Mironov,
Talwar & Zhang 2019 ("Rényi Differential Privacy of the Sampled Gaussian Mechanism") give its Rényi
divergence of order ``alpha``, ``eps_RDP(alpha) = log(A_alpha) / (alpha - 1)``, with, for integer alpha
(their Sec. 3.2),

    A_alpha = sum_{k=0}^{alpha} C(alpha, k) (1 - q)^{alpha - k} q^k exp((k^2 - k) / (2 sigma^2))

and for fractional alpha (their Sec. 3.3) the two convergent series ``A_alpha = A_0 + A_1``,

  A_0 = sum_{i>=0} C(alpha, i) q^i (1 - q)^{alpha - i} exp((i^2 - i) / (2 sigma^2)) erfc((i - z0) / (sqrt(2) sigma)) / 2
  A_1 = sum_{i>=0} C(alpha, i) q^{alpha - i} (1 - q)^i exp((j^2 - j) / (2 sigma^2)) erfc((z0 - j) / (sqrt(2) sigma)) / 2
        with j = alpha - i and z0 = sigma^2 log(1/q - 1) + 1/2,

where ``C(alpha, i)`` is the generalised binomial coefficient (its sign alternates once ``i > alpha``).
RDP composes by addition over steps; the (eps, delta) guarantee is the best over the orders of
Balle et al. 2020 (Theorem 21):

    eps = min_alpha  T * eps_RDP(alpha) + log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1)

Everything is computed in log space (sums of exponentials by log-add / log-subtract).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

ORDERS: tuple[float, ...] = tuple([1 + x / 10 for x in range(1, 100)] + list(range(12, 64)))
"""Rényi orders searched by default: 1.1, 1.2, ..., 10.9 and 12, 13, ..., 63."""


def _log_add(a: float, b: float) -> float:
    """log(e^a + e^b)."""
    lo, hi = min(a, b), max(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(e^a - e^b) for a >= b."""
    if b == -math.inf:
        return a
    if a <= b:
        return -math.inf  # the series terms cancel exactly: nothing left
    return a + math.log1p(-math.exp(b - a))


def _log_erfc(x: float) -> float:
    """log(erfc(x)); past x = 20 (erfc underflows near 27) the asymptotic series
    erfc(x) = exp(-x^2) / (x sqrt(pi)) * (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6) + ...), whose next term is below 1e-10."""
    if x < 20:
        return math.log(math.erfc(x))
    r = 1 / (2 * x * x)
    return -x * x - math.log(x) - 0.5 * math.log(math.pi) + math.log1p(-r + 3 * r * r - 15 * r ** 3)


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    for k in range(alpha + 1):
        log_binom = math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
        term = log_binom + k * math.log(q) + (alpha - k) * math.log(1 - q) + (k * k - k) / (2 * sigma ** 2)
        log_a = _log_add(log_a, term)
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    log_a0 = log_a1 = -math.inf
    log_binom, sign = 0.0, 1.0  # C(alpha, 0) = 1; then C(alpha, i+1) = C(alpha, i) (alpha - i) / (i + 1)
    i = 0
    while True:
        j = alpha - i
        log_s0 = (log_binom + i * math.log(q) + j * math.log(1 - q) + (i * i - i) / (2 * sigma ** 2)
                  + math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma)))
        log_s1 = (log_binom + j * math.log(q) + i * math.log(1 - q) + (j * j - j) / (2 * sigma ** 2)
                  + math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma)))
        if sign > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        if max(log_s0, log_s1) < -40:  # the remaining terms shrink geometrically
            return _log_add(log_a0, log_a1)
        log_binom += math.log(abs(alpha - i)) - math.log(i + 1)
        sign *= 1.0 if alpha - i > 0 else -1.0
        i += 1


@functools.lru_cache(maxsize=256)
def _rdp_one_step(q: float, sigma: float, orders: tuple[float, ...]) -> tuple[float, ...]:
    out = []
    for alpha in orders:
        if q == 0:
            r = 0.0
        elif sigma == 0:
            r = math.inf
        elif q == 1:
            r = alpha / (2 * sigma ** 2)  # the plain Gaussian mechanism
        else:
            log_a = _log_a_int(q, sigma, int(alpha)) if float(alpha).is_integer() else _log_a_frac(q, sigma, alpha)
            r = log_a / (alpha - 1)
        out.append(r)
    return tuple(out)


def rdp(sample_rate: float, noise_multiplier: float, steps: int, orders: Sequence[float] = ORDERS) -> list[float]:
    """RDP of ``steps`` sampled Gaussian steps at each order: ``steps * log(A_alpha) / (alpha - 1)``."""
    return [steps * r for r in _rdp_one_step(float(sample_rate), float(noise_multiplier), tuple(orders))]


def epsilon(*, sample_rate: float, noise_multiplier: float, steps: int, delta: float,
            orders: Sequence[float] = ORDERS) -> float:
    """The (eps, delta)-DP epsilon of DP-SGD after ``steps`` steps with Poisson sampling rate
    ``sample_rate`` and noise ``noise_multiplier * C`` (best over ``orders``; inf without noise)."""
    if not 0 <= sample_rate <= 1 or noise_multiplier < 0 or steps < 0 or not 0 < delta < 1:
        raise ValueError("need 0 <= sample_rate <= 1, noise_multiplier >= 0, steps >= 0 and 0 < delta < 1")
    best = math.inf
    for alpha, r in zip(orders, rdp(sample_rate, noise_multiplier, steps, orders), strict=True):
        eps = r + math.log((alpha - 1) / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        if not math.isnan(eps):
            best = min(best, eps)
    return best
