"""Advantage Actor-Critic (A2C): the synchronous, batched variant of A3C (Mnih et al. 2016,
https://arxiv.org/abs/1602.01783), as Stable-Baselines3 implements it.

One iteration = ``n_steps`` steps of each of ``n_envs`` env copies, then ONE gradient step on

    R_t   = r_t + gamma r_{t+1} + ... + gamma^(n-1) r_{t+n-1} + gamma^n V(s_{t+n})   (n-step return, up to
            the rollout's end; with gae_lambda < 1, GAE's lambda-return instead)
    A_t   = R_t - V(s_t)
    loss  = -E_t[A_t log pi_theta(a_t|s_t)] + vf_coef E_t[(R_t - V_theta(s_t))^2] - ent_coef E_t[H[pi_theta(.|s_t)]]

with RMSprop (alpha 0.99, eps 1e-5: SB3's default, PyTorch's RMSprop) or Adam, and the gradient norm
clipped to ``max_grad_norm``. Advantages are not normalized by default (SB3).

    agent = archlab.rl.A2C("CartPole-v1", n_envs=8, seed=0)
    agent.learn(500_000)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from . import fast as fast_path
from .policies import ActorCriticAgent, ActorCriticConfig, collect_rollout


@dataclasses.dataclass
class A2CConfig(ActorCriticConfig):
    """A2C hyperparameters; defaults are Stable-Baselines3's."""

    n_steps: int = 5
    """Steps per env copy per update (the batch holds ``n_steps * n_envs`` transitions)."""
    gae_lambda: float = 1.0
    """GAE lambda: 1 = plain n-step returns (A2C's original estimator)."""
    normalize_advantage: bool = False
    """Standardize the batch's advantages before the policy loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")


class A2C(ActorCriticAgent):
    """Synchronous advantage actor-critic; see the module docstring."""

    algo = "a2c"
    Config = A2CConfig
    cfg: A2CConfig
    optim_defaults = {"name": "rmsprop", "lr": 7e-4, "alpha": 0.99, "eps": 1e-5}  # SB3's A2C

    def build(self) -> None:
        self.build_rollout()

    def iteration(self) -> dict[str, Any]:
        cfg = self.cfg
        collect_rollout(self, self.buffer, cfg.gae_lambda)
        self.set_lr(self.optimizer, self.current_lr("policy"))
        data = self.buffer.tensors(self.device)
        actions = data["actions"].long() if self.spaces.discrete else data["actions"]
        adv = data["advantages"]
        if cfg.normalize_advantage and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        out = self.update(data["obs"], actions, adv, data["returns"])
        return {k: v.item() for k, v in out.items()} | {"lr": self.optimizer.param_groups[0]["lr"]}

    def update(self, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor,
               returns: torch.Tensor) -> dict[str, torch.Tensor]:
        """One gradient step on the rollout's (s_t, a_t, A_t, R_t); returns the losses (no graph).
        The fast path computes the same step (:func:`~archlab.rl.fast.a2c_update`)."""
        if self.fast is not None:
            return fast_path.a2c_update(self, obs, actions, adv, returns)
        cfg = self.cfg
        pi, values = self.model(obs)
        logp, entropy = self.model.log_prob_entropy(pi, actions)
        pg_loss = -(adv * logp).mean()                      # -E[A_t log pi(a_t|s_t)]
        vf_loss = F.mse_loss(values, returns)               # E[(V(s_t) - R_t)^2]
        entropy = entropy.mean()                            # E[H[pi(.|s_t)]]
        loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
        self.optimize(loss)
        return {"loss": loss.detach(), "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(),
                "entropy": entropy.detach()}
