"""Variational autoencoder with a Bernoulli or Gaussian decoder (Kingma & Welling 2014, "Auto-Encoding
Variational Bayes"), and its beta-VAE weighting (Higgins et al. 2017).

Encoder q(z | x) = N(mu(x), diag sigma^2(x)), decoder p(x | z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i))
for binary images (``likelihood = "bernoulli"``) or prod_i N(x_i; f(z)_i, s_i^2) for continuous data
(``"gaussian"``; their Appendix C.2; s_i a learned per-pixel scale, so -log p(x | z) is a density in nats
and may be negative), prior p(z) = N(0, I). The default sizes are the one-stochastic-layer model of Burda et al. 2016
("Importance Weighted Autoencoders", Sec. 5): 784-200-200-50 with tanh hidden units, mirrored in the
decoder.

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))                       (Kingma & Welling eq. 3)
            ~ log p(x | mu + sigma * e) - KL,   e ~ N(0, I)                   reparameterisation, one sample
    KL      = 1/2 sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1)               (their Appendix B)
    loss    = -(log p(x | z) - beta * KL)                                     beta-VAE; beta = 1 is the ELBO

    L_k(x) = log 1/k sum_{i=1..k} p(x, z_i) / q(z_i | x),  z_i ~ q(z | x)     (Burda et al. eq. 8)

L_1 is the ELBO; L_k <= L_{k+1} <= log p(x) in expectation, so -L_5000 is the test NLL bound papers
report (nats per image).

Shapes: ``forward(x)``: x (B, 1, 28, 28) or (B, 784) in [0, 1] -> (logits or means (B, 784), mu (B, latent),
logvar (B, latent)); in training mode z is sampled, in eval mode z = mu. ``sample(n)`` -> decoder means
(n, 1, 28, 28); ``decode(z)`` -> logits (Bernoulli) or means (Gaussian) (B, 784).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import register
from ..base import ArchModel

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus}


def mlp(dims: list[int], activation: str) -> nn.Sequential:
    """Linear layers through ``dims`` with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) summed over the last dimension: (..., D) -> (...), in nats (broadcasting)."""
    logits, x = torch.broadcast_tensors(logits, x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def gaussian_log_likelihood(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_scale)^2) summed over the last dimension: (..., D) -> (...), nats (broadcasting)."""
    mean, x = torch.broadcast_tensors(mean, x)
    return (-0.5 * ((x - mean) * torch.exp(-log_scale)).pow(2) - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example: (B, J) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)


@dataclass
class VAEConfig:
    input_dim: int = 784
    """Pixels per image (flattened)."""
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W) for ``sample``; its product must be ``input_dim``."""
    hidden: list[int] = field(default_factory=lambda: [200, 200])
    """Hidden layer widths of the encoder (the decoder mirrors them)."""
    latent_dim: int = 50
    """Dimension of z."""
    activation: str = "tanh"
    """Hidden activation: tanh (Burda et al.), relu or softplus."""
    beta: float = 1.0
    """Weight of the KL term in the training loss (beta-VAE); 1 is the ELBO."""
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    """Decoder distribution: Bernoulli logits (binary pixels) or Gaussian means with learned per-pixel scales."""

    def __post_init__(self) -> None:
        if not 1 <= self.input_dim <= 10**6 or not 1 <= self.latent_dim <= 65536:
            raise ValueError("need 1 <= input_dim <= 1e6 and 1 <= latent_dim <= 65536")
        if not self.hidden or not all(1 <= h <= 65536 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty list of widths in [1, 65536], got {self.hidden}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if math.prod(self.image_shape) != self.input_dim:
            raise ValueError(f"image_shape {self.image_shape} does not hold input_dim={self.input_dim} pixels")
        if not 0 <= self.beta <= 1000:
            raise ValueError(f"beta must be in [0, 1000], got {self.beta}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}")


@register("vae", family="generative")
class VAE(ArchModel):
    """MLP VAE with a diagonal Gaussian encoder and a Bernoulli (binary images) or Gaussian decoder."""

    config_class = VAEConfig
    can_sample: ClassVar[bool] = True

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = mlp([c.input_dim, *c.hidden], c.activation)
        self.encoder.append(_ACTIVATIONS[c.activation]())
        self.to_stats = nn.Linear(c.hidden[-1], 2 * c.latent_dim)  # -> (mu, log sigma^2)
        self.decoder = mlp([c.latent_dim, *reversed(c.hidden), c.input_dim], c.activation)
        if c.likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(c.input_dim))  # log s_i, one per pixel

    def log_likelihood(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) from the decoder's output (..., D) for x (..., D): (...) nats."""
        if self.config.likelihood == "gaussian":
            return gaussian_log_likelihood(out, self.log_scale, x)
        return bernoulli_log_likelihood(out, x)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder distribution's mean from its output: sigmoid(logits) or the Gaussian mean."""
        return out if self.config.likelihood == "gaussian" else out.sigmoid()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, ...) -> mu, logvar, each (B, latent)."""
        mu, logvar = self.to_stats(self.encoder(x.flatten(1))).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., latent) -> Bernoulli logits (..., input_dim)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if self.training else mu
        return self.decode(z), mu, logvar

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example training terms (B,), nats: ``loss`` (-log p(x|z) + beta KL), ``rec``, ``kl``, ``elbo``."""
        x = x.flatten(1)
        mu, logvar = self.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        rec = -self.log_likelihood(self.decode(z), x)
        kl = gaussian_kl(mu, logvar)
        return {"loss": rec + self.config.beta * kl, "rec": rec, "kl": kl, "elbo": -(rec + kl)}

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """log p(x, z_i) - log q(z_i | x) for k samples z_i ~ q(z | x): (B, ...) -> (k, B)."""
        x = x.flatten(1)
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        e = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
        z = mu + std * e
        log_q = (-0.5 * e.pow(2) - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        return self.log_likelihood(self.decode(z), x) + log_prior - log_q

    def iwae_bound(self, x: torch.Tensor, k: int, chunk: int = 500) -> torch.Tensor:
        """L_k(x) per example (B,) in nats, drawing the k samples ``chunk`` at a time."""
        parts = [self.log_weights(x, min(chunk, k - i)) for i in range(0, k, chunk)]
        return torch.logsumexp(torch.cat(parts), dim=0) - math.log(k)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images of decoder means (n, *image_shape), z ~ N(0, I)."""
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(next(self.parameters()).device)
        return self.mean(self.decode(z)).view(n, *self.config.image_shape)

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means of latent codes: (n, latent) -> (n, *image_shape)."""
        return self.mean(self.decode(z)).view(len(z), *self.config.image_shape)

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean mu(x) (B, latent): the code interpolations walk between."""
        return self.encode(x)[0]

    @classmethod
    def example_input(cls, config: VAEConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.rand(batch_size, *config.image_shape)
