"""Multinomial logistic regression (softmax regression).

The simplest classifier: one affine map from the flattened input to class scores,

    z = W x + b,        p(y = k | x) = softmax(z)_k = exp(z_k) / sum_j exp(z_j)

trained by minimising the cross-entropy ``-log p(y | x)``, which is convex in ``(W, b)``. The model
returns the logits ``z``; the softmax lives in the loss (``F.cross_entropy``) for numerical stability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...nn import InitScheme, init_weights
from ...registry import register
from ..base import ArchModel


@dataclass
class LogisticConfig:
    in_features: int = 40
    """number of input features after flattening (40 = one MNIST-1D sequence, 784 = a 28x28 image)"""
    num_classes: int = 10
    """number of classes K (output logits)"""
    init: InitScheme = "default"
    """weight initialisation scheme (see archlab.nn.init)"""

    def __post_init__(self) -> None:
        if self.in_features < 1 or self.num_classes < 2:
            raise ValueError("in_features must be >= 1 and num_classes >= 2")


@register("logistic", family="classic")
class LogisticRegression(ArchModel):
    """Multinomial logistic regression: logits = W flatten(x) + b.

    Shapes:
        x: ``[B, *]`` with ``prod(*) == in_features`` -> logits ``[B, num_classes]``
    """

    config_class = LogisticConfig

    def __init__(self, config: LogisticConfig) -> None:
        super().__init__(config)
        self.linear = nn.Linear(config.in_features, config.num_classes)
        init_weights(self, config.init)

    @classmethod
    def example_input(cls, config: LogisticConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))
