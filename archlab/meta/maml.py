"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine 2017), and its first-order variant FOMAML.

A classifier theta (the 4-block conv net and a linear head of ``ways`` outputs) is adapted to each
task by a few gradient steps on the support set; the meta-objective is the query loss of the adapted
parameters (their Algorithm 2):

    theta'_0 = theta
    theta'_{s+1} = theta'_s - alpha * grad_{theta'_s} L_support(theta'_s)     s = 0 .. inner_steps-1
    meta loss   = L_query(theta'_S)
    meta-gradient = d L_query(theta'_S) / d theta                              (through every inner step)

The inner loop runs on a dict of parameter tensors with :func:`torch.func.functional_call`; with
``create_graph=True`` the inner gradients stay differentiable, so ``meta_loss.backward()`` gives the
full second-order meta-gradient (Hessian-vector products included). ``first_order = true`` (FOMAML,
their Sec. 5.2) detaches the inner gradients: the meta-gradient becomes grad L_query evaluated at
theta', i.e. the second-order term is dropped.

BatchNorm always uses the statistics of the batch it sees (no running averages), as in the authors'
code: the same at meta-training and test time. At evaluation ``test_inner_steps`` steps adapt a copy
of the parameters; the learner itself never changes.

Shapes: ``forward(x)`` (B, C, H, W) -> (B, ways) logits with the meta-parameters theta.
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
class MAMLConfig(Conv4Config):
    ways: int = 5
    """Outputs of the classifier head (N of N-way episodes)."""
    inner_lr: float = 0.4
    """alpha, the inner-loop SGD step size (Finn et al. 2017, Omniglot: 0.4)."""
    inner_steps: int = 1
    """Inner SGD steps during meta-training (Omniglot: 1)."""
    test_inner_steps: int = 3
    """Inner SGD steps when evaluating (Omniglot: 3)."""
    first_order: bool = False
    """FOMAML: drop the second-order term (no differentiation through the inner gradients)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.ways <= 1000 or not 0 < self.inner_lr <= 100:
            raise ValueError("need 2 <= ways <= 1000 and 0 < inner_lr <= 100")
        if not 1 <= self.inner_steps <= 100 or not 1 <= self.test_inner_steps <= 1000:
            raise ValueError("need 1 <= inner_steps <= 100 and 1 <= test_inner_steps <= 1000")


@register("maml", family="meta")
class MAML(FewShotLearner):
    """MAML / FOMAML: meta-learn an initialisation that few inner SGD steps adapt to a new task."""

    config_class = MAMLConfig

    def __init__(self, config: MAMLConfig) -> None:
        super().__init__(config)
        c = config
        self.net = conv4_classifier(c.in_channels, c.hidden, c.image_size, c.ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int, create_graph: bool) -> dict[str, torch.Tensor]:
        """theta' after ``steps`` inner SGD steps on (x, y). ``create_graph``: keep the graph of the
        inner gradients (second-order MAML); otherwise they are constants (FOMAML, evaluation)."""
        params = dict(self.net.named_parameters())
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(self.net, params, (x,)), y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {name: p - self.config.inner_lr * g for (name, p), g in zip(params.items(), grads, strict=True)}
        return params

    def meta_loss(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                  query_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_ways(support_y)
        adapted = self.adapt(support_x, support_y, self.config.inner_steps, create_graph=not self.config.first_order)
        logits = functional_call(self.net, adapted, (query_x,))
        return F.cross_entropy(logits, query_y), logits

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        self._check_ways(support_y)
        with torch.enable_grad():
            adapted = self.adapt(support_x, support_y, self.config.test_inner_steps, create_graph=False)
        with torch.no_grad():
            return functional_call(self.net, {k: v.detach() for k, v in adapted.items()}, (query_x,))

    def _check_ways(self, support_y: torch.Tensor) -> None:
        if int(support_y.max()) >= self.config.ways:
            ways = int(support_y.max()) + 1
            raise ValueError(f"a {ways}-way episode needs model.ways >= {ways}, got {self.config.ways}")
