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
1.5 ``target_kl``. ``learning_rate`` and ``clip_range`` can decay linearly to 0 over the run
(rl-zoo's ``lin_`` values): ``lr_schedule = "linear"``, ``clip_schedule = "linear"``.

    agent = archlab.rl.PPO("CartPole-v1", n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8,
                           gamma=0.98, n_epochs=20, learning_rate=1e-3, lr_schedule="linear",
                           clip_schedule="linear", seed=0)
    agent.learn(100_000)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

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
        if not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0, got {self.clip_range}")
        if self.clip_schedule not in ("constant", "linear"):
            raise ValueError(f"clip_schedule must be 'constant' or 'linear', got {self.clip_schedule!r}")
        if self.clip_range_vf is not None and not self.clip_range_vf > 0:
            raise ValueError(f"clip_range_vf must be > 0 (or None), got {self.clip_range_vf}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl must be > 0 (or None), got {self.target_kl}")


def clipped_surrogate(logp: torch.Tensor, values: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      returns: torch.Tensor, old_values: torch.Tensor, clip: float, clip_vf: float | None,
                      vf_coef: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's objective over a minibatch (eq. 7 and 9, signs flipped to a loss) and its gradient:

        r_t    = exp(log pi(a_t|s_t) - log pi_old(a_t|s_t))
        L^CLIP = mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)
        V'_t   = V(s_t), or V_old(s_t) + clip(V(s_t) - V_old(s_t), -eps_vf, eps_vf) with value clipping
        L^VF   = mean_t (V'_t - R_t)^2
        loss   = -L^CLIP + vf_coef L^VF

        d loss / d log pi_t = -A_t r_t [r_t A_t <= clip(r_t) A_t] / B      (the clipped branch is constant)
        d loss / d V_t      = 2 vf_coef (V'_t - R_t) [|V_t - V_old_t| <= eps_vf] / B

    Returns ``(-L^CLIP, L^VF, loss, d loss/d log pi, d loss/d V)``; all inputs ``[B]``."""
    n = logp.shape[0]
    ratio = torch.exp(logp - old_logp)
    surr1 = adv * ratio
    surr2 = adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    pg_loss = -torch.minimum(surr1, surr2).mean()
    if clip_vf is None:
        err = values - returns
        err_grad = err
    else:
        delta = values - old_values
        err = old_values + delta.clamp(-clip_vf, clip_vf) - returns
        err_grad = err * (delta.abs() <= clip_vf)
    vf_loss = err.square().mean()
    d_logp = surr1 * (surr1 <= surr2) * (-1.0 / n)
    d_values = err_grad * (2.0 * vf_coef / n)
    return pg_loss, vf_loss, pg_loss + vf_coef * vf_loss, d_logp, d_values


class PPO(ActorCriticAgent):
    """Proximal Policy Optimization (clip); see the module docstring."""

    algo = "ppo"
    Config = PPOConfig
    cfg: PPOConfig

    def build(self) -> None:
        self.build_rollout()

    def iteration(self) -> dict[str, Any]:
        cfg, model = self.cfg, self.model
        collect_rollout(self, model, self.buffer, cfg.gae_lambda)
        # Schedules read the progress after the rollout, as SB3 does.
        self.set_lr(self.optimizer, self.current_lr())
        frac = self.progress_remaining() if cfg.clip_schedule == "linear" else 1.0
        clip, clip_vf = cfg.clip_range * frac, (cfg.clip_range_vf or 0.0) * frac

        data = self.buffer.tensors(self.device)
        obs, actions, old_logp = data["obs"], data["actions"], data["log_probs"]
        adv, returns, old_values = data["advantages"], data["returns"], data["values"]
        if self.spaces.discrete:
            actions = actions.long()
        n = len(adv)
        bs = min(cfg.batch_size, n)
        full_batch = bs == n
        if full_batch and cfg.normalize_advantage and n > 1:  # the same every epoch: normalize once
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        want_entropy = cfg.ent_coef != 0.0
        stop = False
        for _ in range(cfg.n_epochs):
            # One minibatch holding the whole rollout needs no shuffling: the mean is order-free.
            perm = None if full_batch else torch.randperm(n, generator=self.gen).to(self.device)
            for start in range(0, n, bs):
                if perm is None:
                    b_obs, b_act, b_old, b_adv, b_ret, b_val = obs, actions, old_logp, adv, returns, old_values
                else:
                    idx = perm[start:start + bs]
                    b_obs, b_act, b_old, b_adv = obs[idx], actions[idx], old_logp[idx], adv[idx]
                    b_ret, b_val = returns[idx], old_values[idx]
                    if cfg.normalize_advantage and len(idx) > 1:
                        b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
                ev = model.evaluate(b_obs, b_act, want_entropy)
                if cfg.target_kl is not None:
                    # KL(pi_old || pi) ~ E[(r - 1) - log r] (Schulman's k3 estimator; SB3 issue #417)
                    log_ratio = ev.logp - b_old
                    if float((log_ratio.exp() - 1.0 - log_ratio).mean()) > 1.5 * cfg.target_kl:
                        stop = True
                        break
                pg_loss, vf_loss, loss, d_logp, d_values = clipped_surrogate(
                    ev.logp, ev.values, b_old, b_adv, b_ret, b_val, clip,
                    clip_vf if cfg.clip_range_vf is not None else None, cfg.vf_coef)
                if want_entropy:
                    loss = loss - cfg.ent_coef * ev.entropy.mean()                 # - c2 S[pi](s_t)
                # The gradient of the loss with respect to log pi, V and H; the model backpropagates it.
                self.gradient_step(ev, d_logp, d_values, -cfg.ent_coef / len(d_logp))
            if stop:
                break

        # Statistics of the last minibatch (one .item() each, once per iteration).
        with torch.no_grad():
            ent = ev.entropy if ev.entropy is not None else model.log_prob_entropy(model(b_obs)[0], b_act)[1]
            log_ratio = ev.logp - b_old
            ratio = log_ratio.exp()
            clip_frac = ((ratio - 1.0).abs() > clip).float().mean()
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
        stats = {"loss": loss.item(), "policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                 "entropy": ent.mean().item(), "approx_kl": approx_kl.item(), "clip_fraction": clip_frac.item(),
                 "lr": self.optimizer.param_groups[0]["lr"], "clip_range": clip}
        if not self.spaces.discrete:
            stats["std"] = model.log_std.exp().mean().item()
        return stats
