"""Wasserstein autoencoder with the MMD penalty (Tolstikhin, Bousquet, Gelly & Schoelkopf 2018,
"Wasserstein Auto-Encoders", Algorithm 2, WAE-MMD).

A deterministic encoder Q(z | x) and decoder G(z); instead of a per-example KL (VAE), the *aggregate*
code distribution q_Z of a batch is pulled to the prior p_Z = N(0, s^2 I) by a maximum mean
discrepancy:

    loss = 1/n sum_i c(x_i, G(z_i)) + lambda MMD_k(q_Z, p_Z)                       (their eq. 4)
    MMD_k = 1/(n(n-1)) sum_{i!=j} k(z~_i, z~_j) + 1/(n(n-1)) sum_{i!=j} k(z_i, z_j)
            - 2/n^2 sum_{i,j} k(z~_i, z_j),         z_i = Q(x_i),  z~_i ~ p_Z      (unbiased U-statistic)
    k(x, y) = sum_{s in S} C s / (C s + ||x - y||^2),   C = 2 d_z s^2               inverse multiquadratics

with S = {0.1, 0.2, 0.5, 1, 2, 5, 10} (their Sec. 4: the IMQ kernel at several scales; heavier tails
than an RBF, so codes far from the prior still get a gradient). The cost c is the Bernoulli
cross-entropy in nats (the paper uses squared error; cross-entropy keeps the numbers comparable with
the family's other models). MNIST setting of the paper: d_z = 8, lambda = 10, s = 1.

``terms`` returns the batch's MMD broadcast to every image (its mean is the MMD), so the elbo loop's
per-image mean is the loss above. Encoder / decoder: :func:`.conv_autoencoder.conv_encoder` / ``conv_decoder``.

Shapes: x (B, C, H, W) in [0, 1] -> logits (B, C, H, W), z (B, latent); ``sample(n)`` -> (n, C, H, W)
Bernoulli means of G(z~), z~ ~ p_Z.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...registry import register
from .conv_autoencoder import ConvAutoencoder, check_image_shape

SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def imq_mmd(z: torch.Tensor, z_prior: torch.Tensor, base: float) -> torch.Tensor:
    """Unbiased MMD^2 between the rows of z and z_prior (n, d each, n >= 2) under the sum of inverse
    multiquadratic kernels C s / (C s + |x - y|^2), s in :data:`SCALES`, C = ``base``; a scalar."""
    n = len(z)
    both = torch.cat([z, z_prior]).float()
    d2 = torch.cdist(both, both).pow(2)
    k = sum(base * s / (base * s + d2) for s in SCALES)
    off = 1 - torch.eye(n, device=z.device)
    k_qq, k_pp, k_qp = k[:n, :n], k[n:, n:], k[:n, n:]
    return ((k_qq * off).sum() + (k_pp * off).sum()) / (n * (n - 1)) - 2 * k_qp.mean()


@dataclass
class WAEConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); H and W divisible by 4."""
    channels: int = 32
    """Channels of the first convolution (the second has twice as many)."""
    latent_dim: int = 8
    """d_z (8 for MNIST in the paper)."""
    lam: float = 10.0
    """lambda, the weight of the MMD penalty."""
    prior_std: float = 1.0
    """s: p_Z = N(0, s^2 I)."""

    def __post_init__(self) -> None:
        check_image_shape(self.image_shape)
        if not 1 <= self.channels <= 4096 or not 1 <= self.latent_dim <= 65536:
            raise ValueError("need 1 <= channels <= 4096 and 1 <= latent_dim <= 65536")
        if not 0 <= self.lam <= 1e6 or not 0 < self.prior_std <= 1e3:
            raise ValueError("need 0 <= lam <= 1e6 and 0 < prior_std <= 1e3")


@register("wae", family="generative")
class WAE(ConvAutoencoder):
    """WAE-MMD: the conv autoencoder's deterministic encoder / decoder, IMQ-kernel MMD to a Gaussian prior."""

    config_class = WAEConfig
    can_sample: ClassVar[bool] = True

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image terms (B,): ``rec`` (nats), ``mmd`` (the batch's, on every row), ``loss`` = rec + lambda mmd.
        The prior draws come from the global generator (the loop seeds it)."""
        c = self.config
        x = x.view(len(x), *c.image_shape)
        logits, z = self(x)
        rec = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)
        if len(x) < 2:
            mmd = torch.zeros((), device=x.device)
        else:
            z_prior = torch.randn(z.shape, device=z.device) * c.prior_std
            mmd = imq_mmd(z, z_prior, 2 * c.latent_dim * c.prior_std ** 2)
        mmd = mmd.expand(len(x))
        return {"loss": rec + c.lam * mmd, "rec": rec, "mmd": mmd}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images of Bernoulli means (n, C, H, W), z ~ N(0, s^2 I)."""
        z = torch.randn(n, self.config.latent_dim, generator=generator) * self.config.prior_std
        return self.decode_images(z.to(next(self.parameters()).device))
