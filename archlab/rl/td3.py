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
:meth:`TD3.update` is the reference (plain autograd); the default ``fast`` path
(:func:`archlab.rl.fast_offpolicy.td3_update`, hand-written backward passes) makes the same updates,
tested equal to it. Optimizers: the engine's, trainables ``actor`` and ``critic`` (SB3's Adam at 1e-3).

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

from . import fast_offpolicy as fast_path
from .offpolicy import OffPolicyAgent, OffPolicyConfig, polyak


@dataclasses.dataclass
class TD3Config(OffPolicyConfig):
    """TD3's hyperparameters (defaults: Stable-Baselines3's, plus rl-zoo's exploration noise)."""

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
    optim_defaults = {"name": "adam", "lr": 1e-3}  # SB3's TD3, actor and critics

    @classmethod
    def trainable_names(cls, cfg: TD3Config) -> tuple[str, ...]:
        return ("actor", "critic")

    def build_networks(self) -> None:
        cfg, dev = self.cfg, self.device
        # mu(s) = tanh(MLP(s)) in [-1, 1]^d (the tanh is applied outside the module)
        self.actor = self.mlp(1, [self.obs_dim, *cfg.net_arch, self.act_dim])
        # Q_1, Q_2: two MLPs [obs, action] -> net_arch -> 1, evaluated together
        self.critic = self.mlp(2, [self.obs_dim + self.act_dim, *cfg.net_arch, 1])
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # the engine's optimizers of [optim.actor] and [optim.critic]
        self.fast = cfg.fast
        if self.fast:
            fast_path.build_td3(self)  # over flat parameters
        else:
            self.actor_opt = self.make_optimizer("actor", self.actor)
            self.critic_opt = self.make_optimizer("critic", self.critic)
        self.actor_loss = torch.zeros((), device=dev)
        """The last actor loss (the actor is not updated every step)."""

    def networks(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target}

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
        if self.fast:
            return fast_path.td3_update(self, batch)
        cfg = self.cfg
        obs, next_obs = self.encode(batch["obs"]), self.encode(batch["next_obs"])
        actions, rewards, terminated = batch["actions"], batch["rewards"], batch["terminated"]

        with torch.no_grad():
            # target policy smoothing: a' = clip(mu'(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, sigma)
            eps = torch.randn(actions.shape, generator=self.gen, device=actions.device) * cfg.target_policy_noise
            eps = eps.clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
            next_a = (torch.tanh(self.actor_target(next_obs)[0]) + eps).clamp(-1.0, 1.0)
            # clipped double Q: y = r + gamma (1 - d) min_i Q'_i(s', a')
            next_q = self.critic_target(torch.cat((next_obs, next_a), -1))[..., 0]  # [2, B]
            y = rewards + cfg.gamma * (1.0 - terminated) * torch.amin(next_q, 0)

        # J_Q = sum_i E[(Q_i(s, a) - y)^2]
        q = self.critic(torch.cat((obs, actions), -1))[..., 0]  # [2, B]
        critic_loss = (q - y).pow(2).mean(1).sum()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        if (self.num_updates + 1) % cfg.policy_delay == 0:
            # deterministic policy gradient through Q_1: J = -E[Q_1(s, mu(s))]
            actor_loss = -self.critic(torch.cat((obs, torch.tanh(self.actor(obs)[0])), -1))[0, :, 0].mean()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            self.actor_loss = actor_loss.detach()
            polyak(self.critic_target, self.critic, cfg.tau)
            polyak(self.actor_target, self.actor, cfg.tau)
        return {"loss": critic_loss.detach(), "actor_loss": self.actor_loss}

    # -- checkpoints ----------------------------------------------------------------------------
    def train_state(self) -> dict[str, Any]:
        return {**super().train_state(), "actor_loss": self.actor_loss.clone()}

    def load_train_state(self, state: dict[str, Any]) -> None:
        super().load_train_state(state)
        self.actor_loss = state["actor_loss"].clone()
