"""Twin Delayed DDPG (Fujimoto et al. 2018, "Addressing Function Approximation Error in
Actor-Critic Methods", arXiv:1802.09477): a deterministic policy ``mu(s)`` trained through a
learned Q-function, with three fixes to DDPG's overestimation and variance:

- clipped double Q-learning (sec. 4.2, eq. 10): ``y = r + gamma (1 - d) min_{i=1,2} Q'_i(s', a')``;
- target policy smoothing (sec. 5.3, eq. 14):
  ``a' = clip(mu'(s') + clip(eps, -c, c), -1, 1)``, ``eps ~ N(0, sigma)``;
- delayed policy updates (sec. 5.2): the actor and all target networks are updated once every
  ``policy_delay`` critic updates; the actor follows the deterministic policy gradient through
  ``Q_1`` only: ``J = -E[Q_1(s, mu(s))]``.

Exploration adds ``N(0, action_noise^2)`` to ``mu(s)`` in the ``[-1, 1]`` action space and clips.
The critic loss is ``sum_i E[(Q_i(s, a) - y)^2]`` (SB3's; the paper's is the same per critic).

    agent = archlab.rl.TD3("Pendulum-v1", seed=0)
    agent.learn(20_000)
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from .offpolicy import Flat, OffPolicyAgent, OffPolicyConfig


@dataclasses.dataclass
class TD3Config(OffPolicyConfig):
    """TD3's hyperparameters (defaults: Stable-Baselines3's, plus rl-zoo's exploration noise)."""

    learning_rate: float = 1e-3
    """Adam step size of the actor and the critics."""
    net_arch: list[int] = dataclasses.field(default_factory=lambda: [400, 300])
    """Hidden layer widths of the actor and of each critic (the paper's 400, 300)."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    target_policy_noise: float = 0.2
    """Std of the Gaussian noise added to the target action (target policy smoothing)."""
    target_noise_clip: float = 0.5
    """The smoothing noise is clipped to [-target_noise_clip, target_noise_clip]."""
    action_noise: float = 0.1
    """Std of the Gaussian exploration noise, in the [-1, 1] action scale (0: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy_delay < 1:
            raise ValueError(f"policy_delay must be >= 1, got {self.policy_delay}")
        for name in ("target_policy_noise", "target_noise_clip", "action_noise"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class TD3(OffPolicyAgent):
    """TD3: deterministic tanh actor, twin critics, target actor and critics."""

    algo = "td3"
    Config = TD3Config
    cfg: TD3Config

    def build_networks(self) -> None:
        cfg, dev = self.cfg, self.device
        # mu(s) = tanh(MLP(s)) in [-1, 1]^d (the tanh is applied outside the module)
        self.actor = self.mlp(1, [self.obs_dim, *cfg.net_arch, self.act_dim])
        # Q_1, Q_2: two MLPs [obs, action] -> net_arch -> 1, evaluated together
        self.critic = self.mlp(2, [self.obs_dim + self.act_dim, *cfg.net_arch, 1])
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_flat = Flat(self.actor, cfg.learning_rate)
        self.critic_flat = Flat(self.critic, cfg.learning_rate)
        self.actor_target_flat = Flat(self.actor_target)
        self.critic_target_flat = Flat(self.critic_target)
        self.actor_loss = torch.zeros((), device=dev)
        """The last actor loss (the actor is not updated every step)."""

    def networks(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Adam]:
        return {"actor": self.actor_flat.opt, "critic": self.critic_flat.opt}

    # -- acting ---------------------------------------------------------------------------------
    def explore(self, obs: torch.Tensor) -> np.ndarray:
        a = torch.tanh(self.actor(obs)[0]).cpu().numpy()
        if self.cfg.action_noise > 0:
            a = np.clip(a + self.rng.normal(0.0, self.cfg.action_noise, a.shape), -1.0, 1.0).astype(np.float32)
        return a

    def policy_action(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        return torch.tanh(self.actor(obs)[0])  # deterministic policy (SB3's TD3 ignores ``deterministic`` too)

    # -- learning -------------------------------------------------------------------------------
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        cfg, crit = self.cfg, self.critic
        obs, next_obs = self.encode(batch["obs"]), self.encode(batch["next_obs"])
        actions, rewards, terminated = batch["actions"], batch["rewards"], batch["terminated"]
        B = obs.shape[0]

        with torch.no_grad():
            # target policy smoothing: a' = clip(mu'(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, sigma)
            eps = torch.randn(actions.shape, generator=self.gen, device=actions.device)
            eps = eps.mul_(cfg.target_policy_noise).clamp_(-cfg.target_noise_clip, cfg.target_noise_clip)
            next_a = torch.tanh(self.actor_target.run(next_obs)[0]).add_(eps).clamp_(-1.0, 1.0)
            # clipped double Q: y = r + gamma (1 - d) min_i Q'_i(s', a')
            next_q = self.critic_target.run(torch.cat((next_obs, next_a), -1))[..., 0]  # [2, B]
            y = rewards + cfg.gamma * (1.0 - terminated) * torch.amin(next_q, 0)

        # J_Q = sum_i E[(Q_i(s, a) - y)^2]  =>  dJ_Q/dQ_i = 2 (Q_i - y) / B
        td = crit.run(torch.cat((obs, actions), -1))[..., 0] - y  # [2, B]
        critic_loss = td.pow(2).mean(1).sum()
        crit.backward_run(td.mul_(2.0 / B).unsqueeze(-1))
        self.critic_flat.opt.step()

        if (self.num_updates + 1) % cfg.policy_delay == 0:
            # deterministic policy gradient through Q_1 (weights constant): J = -E[Q_1(s, mu(s))]
            a = torch.tanh(self.actor.run(obs)[0])
            q1 = crit.run(torch.cat((obs, a), -1), n=1)[0, :, 0]
            dq = torch.full((1, B, 1), -1.0 / B, device=obs.device)
            da = crit.backward_run(dq, weight_grads=False, input_grad=True)[:, self.obs_dim:]
            # through the tanh: d tanh(o)/do = 1 - tanh(o)^2
            self.actor.backward_run((da * (1.0 - a * a)).unsqueeze(0))
            self.actor_flat.opt.step()
            self.actor_loss = -q1.mean()
            self.critic_target_flat.polyak_from(self.critic_flat, cfg.tau)
            self.actor_target_flat.polyak_from(self.actor_flat, cfg.tau)
        return {"loss": critic_loss, "actor_loss": self.actor_loss}

    # -- checkpoints ----------------------------------------------------------------------------
    def train_state(self) -> dict[str, Any]:
        return {**super().train_state(), "actor_loss": self.actor_loss.clone()}

    def load_train_state(self, state: dict[str, Any]) -> None:
        super().load_train_state(state)
        self.actor_loss = state["actor_loss"].clone()
