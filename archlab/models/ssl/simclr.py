"""SimCLR: a Simple framework for Contrastive Learning of visual Representations (Chen et al. 2020).

Two random views of each of ``N`` examples go through the same encoder ``f`` and projector ``g``; the
NT-Xent loss (their Eq. 1, :func:`~archlab.models.ssl.losses.nt_xent`) pulls each view's projection
towards its partner's and away from the other ``2N - 2``:

    h = f(x~),  z = g(h) = W2 ReLU(W1 h)           (Sec. 2.1: the loss is on z, the probe on h)
    L = NT-Xent(z(view 1), z(view 2); tau)

Both views form one batch of ``2N``, so BatchNorm layers (if any) normalise over both together.

Shapes:
    x: the encoder's input ``[B, ...]`` -> ``forward`` gives ``z`` ``[B, proj_dim]``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...registry import register
from .base import EncoderConfig, SSLModel, build_encoder, mlp
from .losses import nt_xent


@dataclass
class SimCLRConfig(EncoderConfig):
    proj_hidden: int = 128
    """hidden width of the projector g"""
    proj_dim: int = 64
    """output size of the projector (where the loss is computed)"""
    proj_batch_norm: bool = False
    """BatchNorm in the projector's hidden layer (SimCLR v2 style)"""
    temperature: float = 0.5
    """tau of NT-Xent: lower sharpens the softmax over negatives"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.proj_hidden, self.proj_dim) < 1:
            raise ValueError("proj_hidden and proj_dim must be >= 1")
        if not 1e-3 <= self.temperature <= 100:
            raise ValueError(f"temperature must be in [0.001, 100], got {self.temperature}")


@register("simclr", family="ssl")
class SimCLR(SSLModel):
    """SimCLR (Chen et al. 2020): shared encoder + MLP projector, NT-Xent over two views."""

    config_class = SimCLRConfig

    def __init__(self, config: SimCLRConfig) -> None:
        super().__init__(config)
        self.encoder, self.feature_dim = build_encoder(config)
        self.projector = mlp([self.feature_dim, config.proj_hidden, config.proj_dim], config.proj_batch_norm)

    def ssl_loss(self, view1: Tensor, view2: Tensor) -> Tensor:
        z1, z2 = self.projection(torch.cat([view1, view2])).float().chunk(2)
        return nt_xent(z1, z2, self.config.temperature)
