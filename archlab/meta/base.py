"""What every few-shot learner offers the episodic loop.

A learner is a registered model (family ``meta``) with two episode-level methods:

- ``meta_loss(support_x, support_y, query_x, query_y) -> (loss, query_logits)``: a scalar whose
  gradient with respect to the learner's parameters is the method's meta-gradient for this episode
  (ProtoNets and Matching Nets: the query loss; MAML: the query loss after the inner loop; Reptile:
  a surrogate whose gradient is the Reptile direction). The loop averages it over the meta-batch and
  steps the ``[optim]`` optimizer on it.
- ``predict(support_x, support_y, query_x) -> query_logits`` (ways columns): classification of new
  episodes at evaluation time (no parameter of the learner changes).

Labels are ``0..ways-1``. Shapes: support_x (S, C, H, W), support_y (S,), query_x (Q, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.base import ArchModel


@dataclass
class Conv4Config:
    """Fields every learner on the 4-block network shares."""

    in_channels: int = 1
    """Image channels (Omniglot: 1)."""
    image_size: int = 28
    """Side of the square input images."""
    hidden: int = 64
    """Filters per convolution block."""

    def __post_init__(self) -> None:
        if not 1 <= self.in_channels <= 64 or not 16 <= self.image_size <= 512 or not 1 <= self.hidden <= 4096:
            raise ValueError("need 1 <= in_channels <= 64, 16 <= image_size <= 512 and 1 <= hidden <= 4096")


class FewShotLearner(ArchModel):
    """Base class of the learners (see the module docstring)."""

    def meta_loss(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                  query_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.predict(support_x, support_y, query_x)
        return F.cross_entropy(logits, query_y), logits

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def example_input(cls, config: Conv4Config, batch_size: int = 2) -> torch.Tensor:
        return torch.rand(batch_size, config.in_channels, config.image_size, config.image_size)
