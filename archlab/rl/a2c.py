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

from .policies import ActorCriticAgent, ActorCriticConfig, collect_rollout


@dataclasses.dataclass
class A2CConfig(ActorCriticConfig):
    """A2C hyperparameters; defaults are Stable-Baselines3's."""

    learning_rate: float = 7e-4
    """Optimizer step size."""
    n_steps: int = 5
    """Steps per env copy per update (the batch holds ``n_steps * n_envs`` transitions)."""
    gae_lambda: float = 1.0
    """GAE lambda: 1 = plain n-step returns (A2C's original estimator)."""
    optimizer: str = "rmsprop"
    """``rmsprop`` (alpha 0.99, as SB3) or ``adam``."""
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

    def build(self) -> None:
        self.build_rollout()

    def iteration(self) -> dict[str, Any]:
        cfg, model = self.cfg, self.model
        collect_rollout(self, model, self.buffer, cfg.gae_lambda)
        self.set_lr(self.optimizer, self.current_lr())
        data = self.buffer.tensors(self.device)
        actions = data["actions"].long() if self.spaces.discrete else data["actions"]
        adv, returns = data["advantages"], data["returns"]
        if cfg.normalize_advantage and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)

        ev = model.evaluate(data["obs"], actions, cfg.ent_coef != 0.0)
        n = len(adv)
        pg_loss = -(adv * ev.logp).mean()                   # -E[A_t log pi(a_t|s_t)]
        err = ev.values - returns
        vf_loss = err.square().mean()                       # E[(V(s_t) - R_t)^2]
        loss = pg_loss + cfg.vf_coef * vf_loss
        if ev.entropy is not None:
            loss = loss - cfg.ent_coef * ev.entropy.mean()
        # The loss's gradient with respect to log pi, V and H; the model backpropagates it.
        self.gradient_step(ev, adv * (-1.0 / n), err * (2.0 * cfg.vf_coef / n), -cfg.ent_coef / n)
        stats = {"loss": loss.item(), "policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                 "lr": self.optimizer.param_groups[0]["lr"]}
        if ev.entropy is not None:
            stats["entropy"] = ev.entropy.mean().item()
        return stats
