"""Prototypical Networks (Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot Learning").

An embedding f_phi (the 4-block conv net) maps images to vectors; each class's prototype is the mean
embedding of its support examples, and a query is classified by a softmax over negative squared
Euclidean distances to the prototypes (their Eq. 1-2):

    c_k = 1/|S_k| sum_{x_i in S_k} f(x_i)                              prototypes   (ways, D)
    p(y = k | x) = softmax_k( -|| f(x) - c_k ||^2 )                    query logits (Q, ways)
    J = -log p(y = k* | x)  averaged over the queries                  episode loss

Shapes: ``forward(x)`` (B, C, H, W) -> embeddings (B, D); ``predict`` -> (Q, ways) logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register
from .base import Conv4Config, FewShotLearner
from .conv4 import conv4


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean embedding per class: (S, D), (S,) -> (ways, D)."""
    sums = torch.zeros(ways, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=ways).clamp(min=1).to(embeddings.dtype)
    return sums / counts[:, None]


@dataclass
class ProtoNetConfig(Conv4Config):
    pass


@register("protonet", family="meta")
class ProtoNet(FewShotLearner):
    """Prototypical Networks: classify queries by squared distance to class-mean embeddings."""

    config_class = ProtoNetConfig

    def __init__(self, config: ProtoNetConfig) -> None:
        super().__init__(config)
        self.encoder = conv4(config.in_channels, config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        ways = int(support_y.max()) + 1
        # One pass over support and queries together, as in the authors' code (BatchNorm sees both).
        z = self(torch.cat([support_x, query_x]))
        centres = prototypes(z[: len(support_x)], support_y, ways)
        return -torch.cdist(z[len(support_x):], centres).pow(2)
