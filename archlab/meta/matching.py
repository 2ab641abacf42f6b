"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016), without full-context
embeddings (the "Matching Nets" rows of their Table 1 without "Fine Tuned"/"FCE").

A query's label distribution is an attention-weighted sum of the support labels (their Eq. 1-2),
with attention a softmax over cosine similarities of the embeddings f = g = the 4-block conv net:

    a(x, x_i) = softmax_i( s * cos(f(x), g(x_i)) )
    P(y | x, S) = sum_i a(x, x_i) onehot(y_i)                          (Q, ways)
    J = -log P(y* | x, S)

The paper's attention is a softmax over plain cosines (``scale`` s = 1, the default). Cosines lie in [-1, 1], so with
20 ways the attention can never be sharper than about e^2 between the best and the worst support example, and the
NLL stays high; ``scale`` > 1 is the fixed inverse temperature that later work puts on cosine classifiers (e.g. the
scale of Chen et al. 2019's cosine baseline), an option here, not the paper's model.

``predict`` returns log P (so ``cross_entropy`` on it -- a log-softmax of log-probabilities that
already sum to one -- equals the NLL above). Shapes: ``forward(x)`` (B, C, H, W) -> (B, D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import register
from .base import Conv4Config, FewShotLearner
from .conv4 import conv4


@dataclass
class MatchingNetConfig(Conv4Config):
    scale: float = 1.0
    """s, the inverse temperature on the cosine similarities (1: the paper's softmax over plain cosines)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.scale <= 1000:
            raise ValueError(f"scale must be in (0, 1000], got {self.scale}")


@register("matching_net", family="meta")
class MatchingNet(FewShotLearner):
    """Matching Networks: attention over the support set by cosine similarity of embeddings."""

    config_class = MatchingNetConfig

    def __init__(self, config: MatchingNetConfig) -> None:
        super().__init__(config)
        self.encoder = conv4(config.in_channels, config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        ways = int(support_y.max()) + 1
        z = self(torch.cat([support_x, query_x]))
        s, q = F.normalize(z[: len(support_x)], dim=1), F.normalize(z[len(support_x):], dim=1)
        attention = torch.softmax(self.config.scale * (q @ s.T), dim=1)     # (Q, S)
        probs = attention @ F.one_hot(support_y, ways).to(attention.dtype)  # (Q, ways)
        return probs.clamp_min(1e-12).log()
