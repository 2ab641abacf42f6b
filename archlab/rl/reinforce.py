"""REINFORCE (Williams 1992) with a learned value baseline: Monte-Carlo policy gradient on whole episodes.

One iteration = play until ``n_episodes`` episodes have finished (over all ``n_envs`` env copies),
then ONE gradient step on those episodes' steps:

    G_t   = sum_{k >= t} gamma^(k-t) r_k                                  (the discounted return-to-go)
    A_t   = G_t - V(s_t)                                                  (baseline: Sutton & Barto 13.4)
    loss  = -E_t[ A_t log pi_theta(a_t|s_t) ]  +  vf_coef * E_t[ (G_t - V_theta(s_t))^2 ]  -  ent_coef * E_t[ H ]

with ``A_t`` standardized over the batch (``normalize_advantage``) and ``V`` detached in ``A_t``.
An episode cut by a time limit (truncated, not terminated) is completed with the value of its last
observation, ``G_T-1 = r_T-1 + gamma V(s_T)`` (partial-episode bootstrapping, Pardo et al. 2018),
so the 500-step cap of CartPole does not look like a failure.

Episodes still running when an update happens continue under the new policy; their earlier steps were
sampled by the previous one (with ``n_envs = 1`` every episode is played by a single policy).

    agent = archlab.rl.REINFORCE("CartPole-v1", n_envs=8, n_episodes=8, learning_rate=1e-3, seed=0)
    agent.learn(300_000)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import fast as fast_path
from .policies import ActorCriticAgent, ActorCriticConfig, env_actions


@dataclasses.dataclass
class REINFORCEConfig(ActorCriticConfig):
    """REINFORCE hyperparameters."""

    n_episodes: int = 8
    """Finished episodes per gradient step."""
    baseline: bool = True
    """Subtract the learned value V(s_t) from the return (False: plain REINFORCE, no critic loss)."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this (``None``: no clipping)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_episodes < 1:
            raise ValueError(f"n_episodes must be >= 1, got {self.n_episodes}")


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma G_{t+1}, backwards over one episode's rewards ``[T]`` -> ``[T]``."""
    out = np.empty(len(rewards), np.float32)
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


class REINFORCE(ActorCriticAgent):
    """Monte-Carlo policy gradient with a value baseline; see the module docstring."""

    algo = "reinforce"
    Config = REINFORCEConfig
    cfg: REINFORCEConfig

    def build(self) -> None:
        self.build_model()
        # The running episode of every env copy: lists of per-step observations, actions, rewards.
        self.traj: list[dict[str, list[np.ndarray]]] = [self._empty() for _ in range(self.cfg.n_envs)]
        # Env steps per iteration (the engine's unit) vary with episode lengths; this is their lower
        # bound (every episode at least one step long), so a step budget converted with it is never short.
        n = self.cfg.n_envs
        self.iteration_steps = n * -(-self.cfg.n_episodes // n)

    @staticmethod
    def _empty() -> dict[str, list[np.ndarray]]:
        return {"obs": [], "actions": [], "rewards": []}

    @torch.inference_mode()
    def collect(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Step the envs until ``n_episodes`` episodes end; returns their (obs, actions, returns)."""
        model, gamma = self.model, self.cfg.gamma
        forward = self.rollout_forward()
        episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        obs = self.start()
        while len(episodes) < self.cfg.n_episodes:
            pi, _ = forward(self.tensor(obs))
            sampled = model.sample(pi, self.gen)[0]
            actions = sampled.cpu().numpy()
            next_obs, rew, term, trunc, info = self.env_step(env_actions(sampled, self.spaces))
            for i, tr in enumerate(self.traj):
                tr["obs"].append(obs[i])
                tr["actions"].append(actions[i])
                tr["rewards"].append(rew[i])
                if term[i] or trunc[i]:
                    rewards = np.asarray(tr["rewards"], np.float32)
                    if not term[i]:  # truncated: bootstrap from the value of the last observation
                        rewards[-1] += gamma * float(forward(self.tensor(info["final_obs"][i][None]))[1][0])
                    episodes.append((np.stack(tr["obs"]), np.stack(tr["actions"]), discounted_returns(rewards, gamma)))
                    self.traj[i] = self._empty()
            obs = next_obs
        return episodes

    def iteration(self) -> dict[str, Any]:
        episodes = self.collect()
        self.set_lr(self.optimizer, self.current_lr("policy"))
        obs = self.tensor(np.concatenate([e[0] for e in episodes]))
        actions = self.tensor(np.concatenate([e[1] for e in episodes]))
        returns = self.tensor(np.concatenate([e[2] for e in episodes]))
        if self.spaces.discrete:
            actions = actions.long()
        out = self.update(obs, actions, returns)
        return {k: v.item() for k, v in out.items()} | {"batch_steps": len(returns),
                                                        "lr": self.optimizer.param_groups[0]["lr"]}

    def update(self, obs: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
        """One gradient step on the finished episodes' (s_t, a_t, G_t); returns the losses (no graph).
        The fast path computes the same step (:func:`~archlab.rl.fast.reinforce_update`)."""
        if self.fast is not None:
            return fast_path.reinforce_update(self, obs, actions, returns)
        cfg = self.cfg
        pi, values = self.model(obs)
        logp, entropy = self.model.log_prob_entropy(pi, actions)
        adv = returns - values.detach() if cfg.baseline else returns         # A_t = G_t - V(s_t), a constant
        if cfg.normalize_advantage and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = -(adv * logp).mean()                                       # -E[A_t log pi(a_t|s_t)]
        entropy = entropy.mean()
        loss = pg_loss - cfg.ent_coef * entropy
        out = {"policy_loss": pg_loss.detach(), "entropy": entropy.detach()}
        if cfg.baseline:
            vf_loss = F.mse_loss(values, returns)                            # E[(V(s_t) - G_t)^2]
            loss = loss + cfg.vf_coef * vf_loss
            out["value_loss"] = vf_loss.detach()
        self.optimize(loss)
        return {"loss": loss.detach(), **out}

    # -- checkpoints: the unfinished episodes are part of the state ----------------------------------
    def train_state(self) -> dict[str, Any]:
        state = super().train_state()
        state["traj"] = [{k: torch.from_numpy(np.asarray(v, dtype=self._dtype(k))) for k, v in tr.items()}
                         for tr in self.traj]
        return state

    def _dtype(self, key: str) -> Any:
        if key == "obs":
            return np.int64 if self.spaces.n_obs else np.float32
        if key == "actions":
            return np.int64 if self.spaces.discrete else np.float32
        return np.float32

    def load_train_state(self, state: dict[str, Any]) -> None:
        super().load_train_state(state)
        self.traj = [{k: list(np.asarray(v)) for k, v in tr.items()} for tr in state["traj"]]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["env"]["snapshots"] is None or state["obs"] is None:
            # The envs could not be restored and started new episodes: the saved ones cannot finish.
            self.traj = [self._empty() for _ in range(self.cfg.n_envs)]
