"""An RL controller for architecture search: REINFORCE with a moving-average baseline, after Zoph & Le
2017, "Neural Architecture Search with Reinforcement Learning" (ICLR), Sec. 3.2.

The controller is a policy over the genotype's positions. Here it is a factorized categorical (one
logit vector ``theta_i`` of shape ``(choices[i],)`` per position; Zoph & Le's LSTM makes each decision
conditional on the previous ones -- on a 5-position space with 100 queries the factorized policy is
the smaller learner, and the update is the same)::

    pi(a) = prod_i softmax(theta_i)[a_i]
    R     = score(a)                                   # the validation accuracy of the sampled architecture
    grad  = (R - b) * grad_theta sum_i log pi_i(a_i)   # REINFORCE, one sample per update
    b    <- decay * b + (1 - decay) * R                # exponential moving-average baseline (b_0 = R_0)

``theta`` is updated by Adam ascending ``grad``. Samples outside the space (``contains`` false) are
redrawn before they are queried, so the controller samples from ``pi`` restricted to valid genotypes;
the gradient uses the unrestricted ``log pi`` (a simplification: the restriction's normaliser is not
differentiated). Deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ArchlabError
from .categorical import MAX_TRIES, CategoricalSpace, Genotype


@dataclass
class ControllerConfig:
    lr: float = 0.05
    """Adam's learning rate on the logits."""
    baseline_decay: float = 0.9
    """decay of the moving-average baseline b (Zoph & Le 2017 use an exponential moving average)."""
    entropy_weight: float = 0.0
    """optional entropy bonus added to the objective (0: plain REINFORCE)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or not 0.0 <= self.baseline_decay < 1.0 or self.entropy_weight < 0:
            raise ArchlabError(
                f"rl controller: need lr > 0, 0 <= baseline_decay < 1, entropy_weight >= 0; got {self}"
            )


class RLController:
    """Ask/tell REINFORCE controller. ``ask()`` samples from the policy; ``tell(g, score)`` does one
    policy-gradient step with advantage ``score - b`` and then moves the baseline."""

    def __init__(self, space: CategoricalSpace, seed: int, config: ControllerConfig | None = None) -> None:
        self.space = space
        self.config = config or ControllerConfig()
        self.rng = np.random.default_rng(seed)
        self.logits = [torch.zeros(n, dtype=torch.float64, requires_grad=True) for n in space.choices]
        self.optimizer = torch.optim.Adam(self.logits, lr=self.config.lr)
        self.baseline: float | None = None

    def probabilities(self) -> list[np.ndarray]:
        """The current policy: one probability vector per position."""
        with torch.no_grad():
            return [torch.softmax(t, 0).numpy() for t in self.logits]

    def ask(self) -> Genotype:
        probs = self.probabilities()
        for _ in range(MAX_TRIES):
            g = tuple(int(self.rng.choice(len(p), p=p)) for p in probs)
            if self.space.contains(g):
                return g
        raise ArchlabError(f"rl controller: no valid genotype in {MAX_TRIES} draws from the policy")

    def tell(self, genotype: Genotype, score: float) -> None:
        score = float(score)
        if self.baseline is None:
            self.baseline = score
        advantage = score - self.baseline
        log_probs = [torch.log_softmax(t, 0) for t in self.logits]
        log_pi = sum(lp[a] for lp, a in zip(log_probs, genotype, strict=True))
        objective = advantage * log_pi
        if self.config.entropy_weight:
            entropy = -sum((lp.exp() * lp).sum() for lp in log_probs)
            objective = objective + self.config.entropy_weight * entropy
        self.optimizer.zero_grad()
        (-objective).backward()
        self.optimizer.step()
        self.baseline = self.config.baseline_decay * self.baseline + (1 - self.config.baseline_decay) * score
