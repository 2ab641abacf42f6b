"""Client-level differential privacy for federated averaging: DP-FedAvg (McMahan, Ramage, Talwar & Zhang 2018).

Learning Differentially Private Recurrent Language Models (ICLR 2018), Algorithm 1, with every client
weighted equally (w_k = 1). Round t:

    S_t    <- every client independently with probability q          (Poisson: what the accountant assumes)
    for k in S_t:  Delta_k <- ClientUpdate(k, x_t);  Delta_k <- Delta_k * min(1, S / ||Delta_k||)
    Delta  <- sum_{k in S_t} Delta_k / (q K)                        the fixed-denominator estimator
    Delta  <- Delta + N(0, sigma^2 I),   sigma = z S / (q K)
    x_{t+1} <- server_optimizer(x_t, Delta)

One client changes ``sum Delta_k`` by at most S, so each round is a sampled Gaussian mechanism with
noise multiplier z over *clients*: after T rounds the guarantee is
``archlab.privacy.epsilon(sample_rate=q, noise_multiplier=z, steps=T, delta=delta)`` for
user-level (epsilon, delta)-DP. ``||Delta_k||`` is the norm over every averaged tensor of the model.
"""

from __future__ import annotations

import torch


def clip_update(update: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """``update * min(1, max_norm / ||update||)`` with the norm over all tensors together."""
    norm = torch.stack([v.norm() for v in update.values()]).norm()
    factor = min(1.0, max_norm / max(float(norm), 1e-12))
    return {k: v * factor for k, v in update.items()}


def noisy_mean(total: dict[str, torch.Tensor], sample_rate: float, clients: int, max_norm: float,
               noise_multiplier: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``(total + N(0, (z S)^2 I)) / (q K)``: the fixed-denominator mean of clipped updates, privatized."""
    denom = sample_rate * clients
    std = noise_multiplier * max_norm
    return {k: (v + std * torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device)) / denom
            for k, v in total.items()}
