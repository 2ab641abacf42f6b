"""BYOL: Bootstrap Your Own Latent (Grill et al. 2020) -- no negatives at all.

An online network (encoder ``f``, projector ``g``, predictor ``q``) learns to predict the projection a
slowly moving target network (``f'``, ``g'``: an exponential moving average of the online weights)
gives to the *other* view; the asymmetry (predictor, stop-gradient, EMA) keeps it from collapsing:

    p_1 = q(g(f(view 1))),  z'_2 = g'(f'(view 2))          (and the same with the views swapped)
    L = (2 - 2 cos(p_1, z'_2)) + (2 - 2 cos(p_2, z'_1))     (Eq. 2 and the symmetrised loss, Sec. 3.1)
    theta' <- tau theta' + (1 - tau) theta                  (after each optimizer step)
    tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2        (Sec. 3.2: tau rises from tau_base to 1)

Shapes:
    x: the encoder's input ``[B, ...]`` -> ``forward`` gives ``p`` ``[B, proj_dim]``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...registry import register
from .base import EncoderConfig, SSLModel, build_encoder, frozen_copy, mlp
from .losses import byol_loss, momentum_update


def ema_rate(base: float, progress: float) -> float:
    """BYOL's cosine schedule: ``1 - (1 - base) (cos(pi progress) + 1) / 2`` (``base`` at 0, 1 at the end)."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@dataclass
class BYOLConfig(EncoderConfig):
    proj_hidden: int = 256
    """hidden width of the projector and of the predictor (4096 in the paper)"""
    proj_dim: int = 64
    """output size of projector and predictor (256 in the paper)"""
    batch_norm: bool = True
    """BatchNorm in the hidden layers of projector and predictor, as in the paper"""
    momentum: float = 0.99
    """tau_base of the target's moving average (0.996 in the paper)"""
    cosine_momentum: bool = True
    """raise tau from tau_base to 1 over the run with the cosine schedule; false: constant tau_base"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.proj_hidden, self.proj_dim) < 1:
            raise ValueError("proj_hidden and proj_dim must be >= 1")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")


@register("byol", family="ssl")
class BYOL(SSLModel):
    """BYOL (Grill et al. 2020): online network + predictor regress an EMA target's projection."""

    config_class = BYOLConfig

    def __init__(self, config: BYOLConfig) -> None:
        super().__init__(config)
        self.encoder, self.feature_dim = build_encoder(config)
        self.projector = mlp([self.feature_dim, config.proj_hidden, config.proj_dim], config.batch_norm)
        self.predictor = mlp([config.proj_dim, config.proj_hidden, config.proj_dim], config.batch_norm)
        self.target_encoder = frozen_copy(self.encoder)
        self.target_projector = frozen_copy(self.projector)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.projection(x))

    def trained_modules(self) -> nn.Module:
        return nn.ModuleList([self.encoder, self.projector, self.predictor])

    def ssl_loss(self, view1: Tensor, view2: Tensor) -> Tensor:
        p1, p2 = self.forward(torch.cat([view1, view2])).float().chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_encoder(torch.cat([view1, view2]))).float().chunk(2)
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    def after_step(self, progress: float) -> dict[str, float]:
        cfg = self.config
        tau = ema_rate(cfg.momentum, progress) if cfg.cosine_momentum else cfg.momentum
        momentum_update(self.target_encoder, self.encoder, tau)
        momentum_update(self.target_projector, self.projector, tau)
        return {"ema": tau}
