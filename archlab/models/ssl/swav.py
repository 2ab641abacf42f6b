"""SwAV: Swapping Assignments between Views (Caron et al. 2020).

Instead of comparing features directly, each view is assigned a soft "code" over ``K`` learnable
prototypes, and each view must predict the code of the *other* view:

    z = g(f(x)) / |g(f(x))|,   scores = z C^T           (C: K unit-norm prototypes, [K, D])
    q = Sinkhorn(scores / eps)                          (codes, no gradient; Sec. 3.1, Eq. 3)
    p = softmax(scores / tau)                           (predictions)
    L = -1/2 mean_n [ q_2 . log p_1 + q_1 . log p_2 ]   (swapped prediction, Eq. 1)

Sinkhorn-Knopp (their Algorithm 1) finds the codes closest to ``exp(scores / eps)`` whose prototypes are
used equally often in the batch (the equipartition that rules out collapse): alternately rescale the
rows (prototypes) to sum to ``1 / K`` and the columns (examples) to sum to ``1 / B``; the result is
returned per example (each row of ``q`` sums to 1, each prototype gets ``B / K`` in total).
Prototypes are renormalised to unit length before every loss evaluation (Sec. A.1).

Shapes:
    x: the encoder's input ``[B, ...]`` -> ``forward`` gives the prototype scores ``[B, num_prototypes]``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...registry import register
from .base import EncoderConfig, SSLModel, build_encoder, mlp


@torch.no_grad()
def sinkhorn(scores: Tensor, eps: float, iterations: int) -> Tensor:
    """Equipartitioned soft assignments of ``B`` examples to ``K`` prototypes.

    Shapes:
        scores ``[B, K]`` -> codes ``[B, K]``: each example's row sums to 1 (exactly: the last step
        normalises examples), each prototype's column to ``B / K`` (approximately; tighter with more
        iterations)
    """
    q = torch.exp((scores - scores.max()) / eps).T                  # [K, B]; the shift cancels out
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k                         # each prototype: total 1 / K
        q /= q.sum(dim=0, keepdim=True) * b                         # each example: total 1 / B
    return (q * b).T


@dataclass
class SwAVConfig(EncoderConfig):
    proj_hidden: int = 128
    """hidden width of the projector"""
    proj_dim: int = 64
    """size of z (and of the prototypes)"""
    proj_batch_norm: bool = True
    """BatchNorm in the projector's hidden layer, as in the paper"""
    num_prototypes: int = 30
    """K: number of prototypes (3000 for ImageNet; a few times the number of classes for small data)"""
    temperature: float = 0.1
    """tau of the predicted softmax"""
    epsilon: float = 0.05
    """eps of the codes (the entropy regularisation of Sinkhorn-Knopp)"""
    sinkhorn_iterations: int = 3
    """Sinkhorn-Knopp iterations (3 in the paper)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.proj_hidden, self.proj_dim, self.sinkhorn_iterations) < 1 or self.num_prototypes < 2:
            raise ValueError("proj_hidden, proj_dim, sinkhorn_iterations >= 1 and num_prototypes >= 2 needed")
        if not 1e-3 <= self.temperature <= 100 or not 1e-3 <= self.epsilon <= 100:
            raise ValueError("temperature and epsilon must be in [0.001, 100]")


@register("swav", family="ssl")
class SwAV(SSLModel):
    """SwAV (Caron et al. 2020): online clustering onto prototypes, Sinkhorn codes, swapped prediction."""

    config_class = SwAVConfig

    def __init__(self, config: SwAVConfig) -> None:
        super().__init__(config)
        self.encoder, self.feature_dim = build_encoder(config)
        self.projector = mlp([self.feature_dim, config.proj_hidden, config.proj_dim], config.proj_batch_norm)
        self.prototypes = nn.Linear(config.proj_dim, config.num_prototypes, bias=False)

    def projection(self, x: Tensor) -> Tensor:
        return F.normalize(self.projector(self.encoder(x)), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.prototypes(self.projection(x))

    def ssl_loss(self, view1: Tensor, view2: Tensor) -> Tensor:
        cfg = self.config
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        s1, s2 = self.forward(torch.cat([view1, view2])).float().chunk(2)
        q1 = sinkhorn(s1.detach(), cfg.epsilon, cfg.sinkhorn_iterations)
        q2 = sinkhorn(s2.detach(), cfg.epsilon, cfg.sinkhorn_iterations)
        log_p1, log_p2 = F.log_softmax(s1 / cfg.temperature, dim=1), F.log_softmax(s2 / cfg.temperature, dim=1)
        return -0.5 * ((q2 * log_p1).sum(1).mean() + (q1 * log_p2).sum(1).mean())
