"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms", Algorithm 2).

For each task of a meta-batch, train a copy of the parameters with ``inner_steps`` plain SGD steps
on the support set (mini-batches of ``inner_batch`` examples, cycling through it in a random order),
then move the initialisation towards the average adapted weights:

    theta'_tau = SGD_k(theta, support_tau)
    theta <- theta + epsilon * mean_tau (theta'_tau - theta)

The loop steps every learner with the optimizer of ``[optim]`` on a meta-gradient; here that
gradient is the one of the surrogate ``1/2 || theta - stopgrad(theta') ||^2``, which is exactly
``theta - theta'``: with ``[optim] name = "sgd", lr = epsilon`` the update above is recovered (Adam
on the same direction is the variant the paper's code uses). The paper's inner optimizer is Adam;
this file uses SGD (``inner_lr``), which makes one inner step a scaled SGD step on the task loss
(tested). Evaluation fine-tunes a copy on the support set for ``test_inner_steps`` steps.

Shapes: ``forward(x)`` (B, C, H, W) -> (B, ways) logits with the meta-parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..registry import register
from .base import Conv4Config, FewShotLearner
from .conv4 import conv4_classifier


@dataclass
class ReptileConfig(Conv4Config):
    ways: int = 5
    """Outputs of the classifier head."""
    inner_lr: float = 0.05
    """Inner SGD step size."""
    inner_steps: int = 5
    """Inner SGD steps per task during meta-training (the paper's Omniglot setting: 5)."""
    inner_batch: int = 10
    """Support examples per inner step (0: the whole support set every step)."""
    test_inner_steps: int = 50
    """Inner SGD steps when evaluating (the paper: 50)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.ways <= 1000 or not 0 < self.inner_lr <= 100 or not 0 <= self.inner_batch <= 100_000:
            raise ValueError("need 2 <= ways <= 1000, 0 < inner_lr <= 100 and 0 <= inner_batch <= 100000")
        if not 1 <= self.inner_steps <= 1000 or not 1 <= self.test_inner_steps <= 10_000:
            raise ValueError("need 1 <= inner_steps <= 1000 and 1 <= test_inner_steps <= 10000")


@register("reptile", family="meta")
class Reptile(FewShotLearner):
    """Reptile: repeatedly fine-tune on a task, then move the initialisation towards the result."""

    config_class = ReptileConfig

    def __init__(self, config: ReptileConfig) -> None:
        super().__init__(config)
        c = config
        self.net = conv4_classifier(c.in_channels, c.hidden, c.image_size, c.ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def fine_tune(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
        """theta' after ``steps`` SGD steps on (x, y), as detached tensors (the learner is unchanged)."""
        params = {k: v.detach().clone().requires_grad_() for k, v in self.net.named_parameters()}
        b = self.config.inner_batch or len(x)
        order = torch.randperm(len(x), device=x.device)
        with torch.enable_grad():
            for s in range(steps):
                idx = order[(torch.arange(b, device=x.device) + s * b) % len(x)] if b < len(x) else order
                loss = F.cross_entropy(functional_call(self.net, params, (x[idx],)), y[idx])
                grads = torch.autograd.grad(loss, list(params.values()))
                params = {k: (p - self.config.inner_lr * g).detach().requires_grad_()
                          for (k, p), g in zip(params.items(), grads, strict=True)}
        return {k: v.detach() for k, v in params.items()}

    def meta_loss(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                  query_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        adapted = self.fine_tune(support_x, support_y, self.config.inner_steps)
        # d/d theta of 1/2 ||theta - theta'||^2 = theta - theta': the (negative) Reptile direction.
        surrogate = sum(0.5 * (p - adapted[k]).pow(2).sum() for k, p in self.net.named_parameters())
        with torch.no_grad():
            logits = functional_call(self.net, adapted, (query_x,))
        return surrogate, logits

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        adapted = self.fine_tune(support_x, support_y, self.config.test_inner_steps)
        with torch.no_grad():
            return functional_call(self.net, adapted, (query_x,))
