"""Differential privacy: DP-SGD (per-example clipping + Gaussian noise) and its Rényi-DP accountant.

``archlab.privacy.epsilon(sample_rate=q, noise_multiplier=sigma, steps=T, delta=delta)`` is the epsilon of
T DP-SGD steps; see :mod:`archlab.privacy.rdp` and :mod:`archlab.privacy.dpsgd`."""

from .dpsgd import DPSGD, clip_per_sample, per_sample_grads, poisson_batch
from .rdp import ORDERS, epsilon, rdp

__all__ = ["DPSGD", "ORDERS", "clip_per_sample", "epsilon", "per_sample_grads", "poisson_batch", "rdp"]
