"""MoCo v2: Momentum Contrast with an MLP head (He et al. 2020; Chen, Fan, Girshick & He 2020).

A query encoder ``f_q`` (encoder + projector, trained) and a key encoder ``f_k`` (its slow copy, never
back-propagated) embed two views of each example. The key of the other view is the positive; the
negatives are the keys of earlier batches, kept in a FIFO queue of ``queue_size`` entries, so the
dictionary is much larger than a batch:

    q = f_q(view 1),  k = f_k(view 2)                 (k: no gradient)
    L = InfoNCE(q, k+ = k, negatives = queue; tau)    (MoCo Eq. 1)
    enqueue k, dequeue the oldest                     (Sec. 3.2, "dictionary as a queue")
    theta_k <- m theta_k + (1 - m) theta_q            (Eq. 2; after each optimizer step)

``symmetric = true`` also uses view 2 as query and view 1 as key (the symmetrised loss of the MoCo v3
paper) and enqueues both keys. The queue and its write position are buffers, so checkpoints and saved
models carry them.

Shapes:
    x: the encoder's input ``[B, ...]`` -> ``forward`` gives ``q`` ``[B, proj_dim]``; queue ``[queue_size, proj_dim]``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...registry import register
from .base import EncoderConfig, SSLModel, build_encoder, frozen_copy, mlp
from .losses import info_nce, momentum_update


@dataclass
class MoCoConfig(EncoderConfig):
    proj_hidden: int = 128
    """hidden width of the MLP head (the v2 change over v1's linear head)"""
    proj_dim: int = 64
    """size of queries and keys"""
    proj_batch_norm: bool = False
    """BatchNorm in the head's hidden layer"""
    temperature: float = 0.2
    """tau of InfoNCE (0.2 in MoCo v2)"""
    queue_size: int = 4096
    """negatives kept (65536 for ImageNet in the paper; a few thousand suffice for small datasets)"""
    momentum: float = 0.99
    """m of the key encoder's update (0.999 in the paper, whose runs are much longer)"""
    symmetric: bool = False
    """also contrast view 2 against view 1 (two losses, both keys enqueued)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.proj_hidden, self.proj_dim, self.queue_size) < 1 or self.queue_size > 10**6:
            raise ValueError("proj_hidden, proj_dim >= 1 and 1 <= queue_size <= 1e6 needed")
        if not 1e-3 <= self.temperature <= 100:
            raise ValueError(f"temperature must be in [0.001, 100], got {self.temperature}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")


@register("moco", family="ssl")
class MoCo(SSLModel):
    """MoCo v2 (Chen et al. 2020): momentum key encoder, a FIFO queue of negative keys, InfoNCE."""

    config_class = MoCoConfig

    def __init__(self, config: MoCoConfig) -> None:
        super().__init__(config)
        self.encoder, self.feature_dim = build_encoder(config)
        self.projector = mlp([self.feature_dim, config.proj_hidden, config.proj_dim], config.proj_batch_norm)
        self.key_encoder = frozen_copy(self.encoder)
        self.key_projector = frozen_copy(self.projector)
        # Random unit vectors until real keys replace them (the reference code starts the same way).
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def trained_modules(self) -> nn.Module:
        return nn.ModuleList([self.encoder, self.projector])

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        return F.normalize(self.key_projector(self.key_encoder(x)).float(), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` over the oldest entries (FIFO ring buffer)."""
        size, ptr = len(self.queue), int(self.queue_ptr)
        slots = (ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[slots[-size:]] = keys[-size:].to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + len(keys)) % size)

    def ssl_loss(self, view1: Tensor, view2: Tensor) -> Tensor:
        tau = self.config.temperature
        negatives = self.queue.clone()  # the loss reads the queue as it was before this batch's keys
        q1 = self.projection(view1).float()
        k2 = self.keys(view2)
        loss = info_nce(q1, k2, negatives, tau)
        new_keys = [k2]
        if self.config.symmetric:
            q2, k1 = self.projection(view2).float(), self.keys(view1)
            loss = (loss + info_nce(q2, k1, negatives, tau)) / 2
            new_keys.append(k1)
        if self.training:
            for k in new_keys:
                self.enqueue(k)
        return loss

    def after_step(self, progress: float) -> dict[str, float]:
        momentum_update(self.key_encoder, self.encoder, self.config.momentum)
        momentum_update(self.key_projector, self.projector, self.config.momentum)
        return {}
