"""Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications",
arXiv:1812.05905): off-policy maximum-entropy actor-critic for continuous actions.

The agent maximizes ``E[sum_t r_t + alpha H(pi(.|s_t))]``. Per gradient step, on a replay minibatch:

- temperature (automatic entropy tuning, eq. 18): ``J(alpha) = E[-alpha (log pi(a|s) + H_target)]``
  with ``H_target = -dim(A)``, learned as ``log alpha`` (as SB3 / softlearning);
- critics (eq. 5, twin Q as in TD3 against overestimation):
  ``y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s'))``, ``a' ~ pi(.|s')``,
  ``J_Q = 1/2 sum_i E[(Q_i(s, a) - y)^2]``;
- actor (eq. 7/12, reparameterized ``a = tanh(mu + sigma eps)``):
  ``J_pi = E[alpha log pi(a|s) - min_i Q_i(s, a)]``;
- targets: ``theta'_i <- (1 - tau) theta'_i + tau theta_i`` every ``target_update_interval`` steps.

Within a step, as in Stable-Baselines3: every loss uses alpha from before this step's temperature
update, and the critics are updated before the actor, whose loss reads the *updated* critics.
:meth:`SAC.update` is the reference (plain autograd); the default ``fast`` path
(:func:`archlab.rl.fast_offpolicy.sac_update`: no autograd, the networks' gradients written by hand
and the squashed Gaussian's in closed form) makes the same updates, tested equal to it. Optimizers:
the engine's, trainables ``actor``, ``critic`` and ``temperature`` (``[optim.NAME]``; SB3's Adam at 3e-4).

    agent = archlab.rl.SAC("Pendulum-v1", learning_rate=1e-3, seed=0)
    agent.learn(20_000)
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from . import fast_offpolicy as fast_path
from .networks import LOG_STD_MAX, LOG_STD_MIN, mean_log_std, squashed_sample  # noqa: F401
from .offpolicy import OffPolicyAgent, OffPolicyConfig, polyak


@dataclasses.dataclass
class SACConfig(OffPolicyConfig):
    """SAC's hyperparameters (defaults: Stable-Baselines3's)."""

    ent_coef: str | float = "auto"
    """Temperature alpha: a number (fixed), ``auto`` (learned, starting at 1) or ``auto_<init>``."""
    target_entropy: str | float = "auto"
    """Entropy target of the learned temperature; ``auto`` is ``-dim(A)``."""
    target_update_interval: int = 1
    """Gradient steps between Polyak updates of the target critics."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.ent_coef, str):
            if self.ent_coef != "auto" and not self.ent_coef.startswith("auto_"):
                raise ValueError(f"ent_coef must be a number, 'auto' or 'auto_<init>', got {self.ent_coef!r}")
            try:
                init = float(self.ent_coef[5:]) if self.ent_coef.startswith("auto_") else 1.0
            except ValueError:
                raise ValueError(f"ent_coef {self.ent_coef!r}: the value after 'auto_' is not a number") from None
            if not init > 0:
                raise ValueError(f"ent_coef {self.ent_coef!r}: the initial value must be > 0")
        elif not self.ent_coef >= 0:
            raise ValueError(f"ent_coef must be >= 0, got {self.ent_coef}")
        if isinstance(self.target_entropy, str) and self.target_entropy != "auto":
            raise ValueError(f"target_entropy must be a number or 'auto', got {self.target_entropy!r}")
        if self.target_update_interval < 1:
            raise ValueError(f"target_update_interval must be >= 1, got {self.target_update_interval}")


class SAC(OffPolicyAgent):
    """Soft Actor-Critic with twin critics, target critics and automatic entropy tuning."""

    algo = "sac"
    Config = SACConfig
    cfg: SACConfig
    optim_defaults = {"name": "adam", "lr": 3e-4}  # SB3's SAC, for all three

    @classmethod
    def trainable_names(cls, cfg: SACConfig) -> tuple[str, ...]:
        """``actor``, ``critic`` (both critics) and, with a learned temperature, ``temperature`` (log alpha)."""
        return ("actor", "critic", "temperature") if isinstance(cfg.ent_coef, str) else ("actor", "critic")

    def build_networks(self) -> None:
        cfg, dev = self.cfg, self.device
        # pi(a|s) = tanh(N(mu(s), sigma(s)^2)): one MLP obs -> net_arch -> [mu, log sigma]
        self.actor = self.mlp(1, [self.obs_dim, *cfg.net_arch, 2 * self.act_dim])
        # Q_1, Q_2: two MLPs [obs, action] -> net_arch -> 1, evaluated together
        self.critic = self.mlp(2, [self.obs_dim + self.act_dim, *cfg.net_arch, 1])
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.target_entropy = float(-self.act_dim if cfg.target_entropy == "auto" else cfg.target_entropy)
        self.auto_alpha = isinstance(cfg.ent_coef, str)
        if self.auto_alpha:
            init = float(cfg.ent_coef[5:]) if cfg.ent_coef.startswith("auto_") else 1.0
            self.log_alpha = nn.Parameter(torch.tensor(math.log(init), device=dev))
        else:
            self.alpha = float(cfg.ent_coef)
        # the engine's optimizers of [optim.actor], [optim.critic] and [optim.temperature]
        self.fast = cfg.fast
        if self.fast:
            fast_path.build_sac(self)  # over flat parameters
        else:
            self.actor_opt = self.make_optimizer("actor", self.actor)
            self.critic_opt = self.make_optimizer("critic", self.critic)
            if self.auto_alpha:
                self.alpha_opt = self.make_optimizer("temperature", [self.log_alpha])

    def networks(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = super().optimizers()
        if self.auto_alpha:
            opts["temperature"] = self.alpha_opt
        return opts

    # -- acting ---------------------------------------------------------------------------------
    def explore(self, obs: torch.Tensor) -> np.ndarray:
        mean, log_std = mean_log_std(self.actor(obs)[0])
        u = mean + log_std.exp() * torch.randn(mean.shape, generator=self.gen, device=mean.device)
        return torch.tanh(u).cpu().numpy()

    def policy_action(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        mean, log_std = mean_log_std(self.actor(obs)[0])
        if deterministic:
            return torch.tanh(mean)
        return squashed_sample(mean, log_std, self.gen)[0]

    # -- learning -------------------------------------------------------------------------------
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        if self.fast:
            return fast_path.sac_update(self, batch)
        cfg = self.cfg
        obs, next_obs = self.encode(batch["obs"]), self.encode(batch["next_obs"])
        actions, rewards, terminated = batch["actions"], batch["rewards"], batch["terminated"]
        # this step's losses use alpha from before this step's temperature update (as SB3)
        alpha = self.log_alpha.detach().exp() if self.auto_alpha else self.alpha

        # y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
        with torch.no_grad():
            next_a, next_logp, _ = squashed_sample(*mean_log_std(self.actor(next_obs)[0]), self.gen)
            next_q = self.critic_target(torch.cat((next_obs, next_a), -1))[..., 0]  # [2, B]
            y = rewards + cfg.gamma * (1.0 - terminated) * (torch.amin(next_q, 0) - alpha * next_logp)

        # a ~ pi(.|s), reparameterized (a differentiable function of the actor's output)
        a_pi, logp, _ = squashed_sample(*mean_log_std(self.actor(obs)[0]), self.gen)

        if self.auto_alpha:
            # J(alpha) = E[-log alpha (log pi(a|s) + H_target)]   (eq. 18, on log alpha as SB3)
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.alpha_opt.zero_grad()
            alpha_loss.backward()
            self.alpha_opt.step()

        # J_Q = 1/2 sum_i E[(Q_i(s, a) - y)^2]   (eq. 5, both critics)
        q = self.critic(torch.cat((obs, actions), -1))[..., 0]  # [2, B]
        critic_loss = 0.5 * (q - y).pow(2).mean(1).sum()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        # J_pi = E[alpha log pi(a|s) - min_i Q_i(s, a)] through the updated critics   (eq. 7/12)
        q_pi = self.critic(torch.cat((obs, a_pi), -1))[..., 0]  # [2, B]
        actor_loss = (alpha * logp - torch.amin(q_pi, 0)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()  # (also leaves gradients in the critics: cleared before their next step)
        self.actor_opt.step()

        if (self.num_updates + 1) % cfg.target_update_interval == 0:
            polyak(self.critic_target, self.critic, cfg.tau)
        return {"loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), "ent_coef": alpha}

    # -- checkpoints ----------------------------------------------------------------------------
    def train_state(self) -> dict[str, Any]:
        state = super().train_state()
        if self.auto_alpha:
            state["log_alpha"] = self.log_alpha.detach().clone()
        return state

    def load_train_state(self, state: dict[str, Any]) -> None:
        super().load_train_state(state)
        if self.auto_alpha:
            with torch.no_grad():
                self.log_alpha.copy_(state["log_alpha"])
