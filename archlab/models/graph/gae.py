"""Graph auto-encoders (Kipf & Welling, NIPS 2016 Bayesian Deep Learning workshop, "Variational Graph
Auto-Encoders"): GAE and VGAE for link prediction.

Encoder, a two-layer GCN (their Eq. 2-4, with Â = D̃^-1/2 (A + I) D̃^-1/2):

    GAE:   Z = Â ReLU(Â X W0) W1
    VGAE:  H = ReLU(Â X W0),   μ = Â H W_μ,   log σ = Â H W_σ         (first layer shared)
           Z = μ + σ ⊙ ε,  ε ~ N(0, I)  while training;   Z = μ  at evaluation

Decoder, the inner product (their Eq. 1):  p(A_ij = 1 | z_i, z_j) = σ(z_i^T z_j).

VGAE's KL term against the prior N(0, I), per node:

    KL_i = -1/2 sum_d (1 + 2 log σ_id - μ_id² - σ_id²)

:meth:`VGAE.kl_loss` returns its mean over the nodes of the last :meth:`encode`; the link loop
adds it to the reconstruction loss scaled by 1/N, as the authors' code does. As in that code the
GCN layers have no bias and the loop trains without dropout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ...registry import register
from .base import GraphModel
from .gcn import GCNConv


@dataclass
class GAEConfig:
    in_channels: int = 16
    """Node feature size (filled in from the dataset by the link loop)."""
    hidden_channels: int = 32
    latent_channels: int = 16
    """Size of the embedding z of each node."""
    bias: bool = False
    """Bias in the GCN layers (the authors' layers have none)."""
    impl: Literal["sparse", "scatter"] = "sparse"
    """GCNConv implementation: cached CSR Â (``sparse``) or generic message passing (``scatter``)."""

    def __post_init__(self) -> None:
        if min(self.in_channels, self.hidden_channels, self.latent_channels) < 1:
            raise ValueError("in_channels, hidden_channels and latent_channels must be >= 1")


class _AutoEncoder(GraphModel):
    """Encoder to node embeddings plus the inner-product decoder; subclasses define :meth:`encode`."""

    config_class = GAEConfig
    accepts_sparse = True
    # The decoder predicts edges, not classes: only the feature size comes from the dataset.
    data_fields: ClassVar[dict[str, str]] = {"in_channels": "num_features"}

    def __init__(self, config: GAEConfig) -> None:
        super().__init__(config)
        c = config
        self.conv1 = GCNConv(c.in_channels, c.hidden_channels, c.bias, c.impl)

    def encode(self, x: Tensor, edge_index: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Node embeddings Z (sampled while training for VGAE, the mean at evaluation).

        Shapes:
            x: (N, in_channels) dense or sparse CSR; edge_index: (2, E) -> (N, latent_channels)
        """
        return self.encode(x, edge_index)

    @staticmethod
    def decode(z: Tensor, pairs: Tensor, sigmoid: bool = True) -> Tensor:
        """Edge probabilities σ(z_i^T z_j) of node pairs (logits z_i^T z_j with ``sigmoid=False``).

        Shapes:
            z: (N, D); pairs: (2, P) node ids -> (P,)
        """
        logits = (z[pairs[0]] * z[pairs[1]]).sum(-1)
        return torch.sigmoid(logits) if sigmoid else logits


@register("gae", family="graph")
class GAE(_AutoEncoder):
    """Graph auto-encoder: two-layer GCN encoder, inner-product decoder (Kipf & Welling 2016).

    Shapes:
        x: (N, in_channels); edge_index: (2, E) -> z: (N, latent_channels)
    """

    def __init__(self, config: GAEConfig) -> None:
        super().__init__(config)
        c = config
        self.conv2 = GCNConv(c.hidden_channels, c.latent_channels, c.bias, c.impl)

    def encode(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)


@register("vgae", family="graph")
class VGAE(_AutoEncoder):
    """Variational graph auto-encoder: GCN mean and log-std heads over a shared first layer.

    Shapes:
        x: (N, in_channels); edge_index: (2, E) -> z: (N, latent_channels)
    """

    def __init__(self, config: GAEConfig) -> None:
        super().__init__(config)
        c = config
        self.conv_mu = GCNConv(c.hidden_channels, c.latent_channels, c.bias, c.impl)
        self.conv_logstd = GCNConv(c.hidden_channels, c.latent_channels, c.bias, c.impl)
        self._mu: Tensor | None = None
        self._logstd: Tensor | None = None

    def encode(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = F.relu(self.conv1(x, edge_index))
        mu, logstd = self.conv_mu(h, edge_index), self.conv_logstd(h, edge_index)
        self._mu, self._logstd = mu, logstd  # for kl_loss, which belongs to this very pass
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * logstd.exp()  # reparameterization: gradients reach μ and σ

    def kl_loss(self) -> Tensor:
        """Mean over nodes of KL(N(μ_i, σ_i²) || N(0, I)) for the last :meth:`encode`."""
        if self._mu is None or self._logstd is None:
            raise RuntimeError("kl_loss needs a forward pass first")
        mu, logstd = self._mu, self._logstd
        return -0.5 * (1 + 2 * logstd - mu.pow(2) - logstd.exp().pow(2)).sum(-1).mean()


__all__ = ["GAE", "GAEConfig", "VGAE"]
