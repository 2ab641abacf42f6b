"""Proximal Policy Optimization (Schulman et al. 2017, https://arxiv.org/abs/1707.06347), clip variant,
as Stable-Baselines3 implements it.

One iteration = collect ``n_steps`` steps of each of ``n_envs`` env copies with the current policy
pi_old, compute advantages with GAE (Schulman et al. 2016), then ``n_epochs`` passes over the rollout
in shuffled minibatches of ``batch_size``, each a gradient step on

    r_t(theta)  = pi_theta(a_t|s_t) / pi_old(a_t|s_t)
    L^CLIP      = E_t[ min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ]                 (eq. 7)
    L^VF        = E_t[ (V_theta(s_t) - R_t)^2 ]         R_t = A_t + V_old(s_t) (lambda-return)
    loss        = -L^CLIP + vf_coef * L^VF - ent_coef * E_t[ H[pi_theta(.|s_t)] ]     (eq. 9, signs flipped)

with optional value clipping ``V = V_old + clip(V_theta - V_old, -eps_vf, eps_vf)`` (``clip_range_vf``)
and optional early stopping of the epochs once the approximate KL(pi_old || pi_theta) exceeds
1.5 ``target_kl``. The learning rate and ``clip_range`` can decay linearly to 0 over the run
(rl-zoo's ``lin_`` values): ``[optim] schedule = "linear"`` (plain API: ``lr_schedule="linear"``) and
``clip_schedule = "linear"``. The optimizer (``[optim]``, trainable ``policy``) defaults to SB3's Adam,
lr 3e-4, eps 1e-5.

    agent = archlab.rl.PPO("CartPole-v1", n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8,
                           gamma=0.98, n_epochs=20, learning_rate=1e-3, lr_schedule="linear",
                           clip_schedule="linear", seed=0)
    agent.learn(100_000)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from . import fast as fast_path
from .policies import ActorCriticAgent, ActorCriticConfig, collect_rollout


@dataclasses.dataclass
class PPOConfig(ActorCriticConfig):
    """PPO hyperparameters; defaults are Stable-Baselines3's."""

    n_steps: int = 2048
    """Steps per env copy per rollout (the rollout holds ``n_steps * n_envs`` transitions)."""
    batch_size: int = 64
    """Minibatch size of the gradient steps."""
    n_epochs: int = 10
    """Passes over each rollout."""
    gae_lambda: float = 0.95
    """GAE lambda: 1 = Monte-Carlo advantages, 0 = one-step TD errors."""
    clip_range: float = 0.2
    """epsilon of the clipped surrogate objective."""
    clip_schedule: str = "constant"
    """``constant`` or ``linear`` (clip_range and clip_range_vf decay to 0 over the run, rl-zoo ``lin_``)."""
    clip_range_vf: float | None = None
    """Clip the value function's change per rollout to this (``None``: no value clipping)."""
    target_kl: float | None = None
    """Stop a rollout's epochs early once the approximate KL exceeds 1.5 target_kl (``None``: never)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_steps < 1 or self.batch_size < 1 or self.n_epochs < 1:
            raise ValueError(f"n_steps, batch_size and n_epochs must be >= 1, got "
                             f"{self.n_steps}, {self.batch_size}, {self.n_epochs}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if not 0 < self.clip_range <= 1e3:
            raise ValueError(f"clip_range must be in (0, 1000], got {self.clip_range}")
        if not 0 <= self.ent_coef <= 1e3 or not 0 <= self.vf_coef <= 1e3:
            raise ValueError(f"ent_coef and vf_coef must be in [0, 1000], got {self.ent_coef}, {self.vf_coef}")
        if self.clip_schedule not in ("constant", "linear"):
            raise ValueError(f"clip_schedule must be 'constant' or 'linear', got {self.clip_schedule!r}")
        if self.clip_range_vf is not None and not self.clip_range_vf > 0:
            raise ValueError(f"clip_range_vf must be > 0 (or None), got {self.clip_range_vf}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl must be > 0 (or None), got {self.target_kl}")


def approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """KL(pi_old || pi) ~ E[(r - 1) - log r], r = pi / pi_old (Schulman's k3 estimator; SB3 issue #417)."""
    return (log_ratio.exp() - 1.0 - log_ratio).mean()


class PPO(ActorCriticAgent):
    """Proximal Policy Optimization (clip); see the module docstring."""

    algo = "ppo"
    Config = PPOConfig
    cfg: PPOConfig

    def build(self) -> None:
        self.build_rollout()

    def iteration(self) -> dict[str, Any]:
        cfg, model = self.cfg, self.model
        collect_rollout(self, self.buffer, cfg.gae_lambda)
        # Schedules read the progress after the rollout, as SB3 does.
        self.set_lr(self.optimizer, self.current_lr("policy"))
        frac = self.progress_remaining() if cfg.clip_schedule == "linear" else 1.0
        clip = cfg.clip_range * frac
        clip_vf = None if cfg.clip_range_vf is None else cfg.clip_range_vf * frac

        data = self.buffer.tensors(self.device)
        if self.spaces.discrete:
            data["actions"] = data["actions"].long()
        n = len(data["advantages"])
        bs = min(cfg.batch_size, n)
        full_batch = bs == n
        if full_batch and cfg.normalize_advantage and n > 1:  # the same every epoch: normalize once
            adv = data["advantages"]
            data["advantages"] = (adv - adv.mean()) / (adv.std() + 1e-8)
        keys = ("obs", "actions", "log_probs", "advantages", "returns", "values")
        out: dict[str, torch.Tensor] = {}
        stop = False
        for _ in range(cfg.n_epochs):
            # One minibatch holding the whole rollout needs no shuffling: the mean is order-free.
            perm = None if full_batch else torch.randperm(n, generator=self.gen).to(self.device)
            for start in range(0, n, bs):
                if perm is None:
                    b = {k: data[k] for k in keys}
                else:
                    idx = perm[start:start + bs]
                    b = {k: data[k][idx] for k in keys}
                    if cfg.normalize_advantage and len(idx) > 1:
                        adv = b["advantages"]
                        b["advantages"] = (adv - adv.mean()) / (adv.std() + 1e-8)
                step = self.update(b, clip, clip_vf)
                if step is None:  # the policy moved too far from pi_old: stop this rollout's epochs
                    stop = True
                    break
                out, last = step, b
            if stop:
                break

        # Statistics of the last minibatch stepped on (one .item() each, once per iteration).
        with torch.no_grad():
            ent = model.log_prob_entropy(model(last["obs"])[0], last["actions"])[1]  # under the new policy
            log_ratio = out["logp"] - last["log_probs"]
            clip_frac = ((log_ratio.exp() - 1.0).abs() > clip).float().mean()
        stats = {"loss": out["loss"].item(), "policy_loss": out["policy_loss"].item(),
                 "value_loss": out["value_loss"].item(), "entropy": ent.mean().item(),
                 "approx_kl": approx_kl(log_ratio).item(), "clip_fraction": clip_frac.item(),
                 "lr": self.optimizer.param_groups[0]["lr"], "clip_range": clip}
        if not self.spaces.discrete:
            stats["std"] = model.log_std.exp().mean().item()
        return stats

    def update(self, b: dict[str, torch.Tensor], clip: float, clip_vf: float | None) -> dict[str, torch.Tensor] | None:
        """One gradient step on the minibatch ``b`` (the rollout buffer's fields) with clip range
        ``clip`` (and ``clip_vf`` for the value, ``None``: no value clipping). Returns the losses and
        ``logp`` (no graph) for the statistics; ``None``, without a step, once the
        approximate KL exceeds 1.5 ``target_kl``. The fast path computes the same step
        (:func:`~archlab.rl.fast.ppo_update`)."""
        if self.fast is not None:
            return fast_path.ppo_update(self, b, clip, clip_vf)
        cfg = self.cfg
        pi, values = self.model(b["obs"])
        logp, entropy = self.model.log_prob_entropy(pi, b["actions"])
        log_ratio = logp - b["log_probs"]                                    # log r_t(theta)
        if cfg.target_kl is not None and float(approx_kl(log_ratio.detach())) > 1.5 * cfg.target_kl:
            return None
        ratio, adv = log_ratio.exp(), b["advantages"]
        # L^CLIP = E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)]                     (eq. 7)
        pg_loss = -torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv).mean()
        if clip_vf is not None:  # V = V_old + clip(V_theta - V_old, -eps_vf, eps_vf)
            values = b["values"] + (values - b["values"]).clamp(-clip_vf, clip_vf)
        vf_loss = F.mse_loss(values, b["returns"])                          # L^VF = E_t[(V(s_t) - R_t)^2]
        loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy.mean()   # eq. 9, signs flipped
        self.optimize(loss)
        return {"loss": loss.detach(), "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(),
                "logp": logp.detach()}
