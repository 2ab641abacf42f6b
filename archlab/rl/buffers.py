"""Experience storage shared by the algorithms: a replay buffer (off-policy) and a rollout buffer
with generalized advantage estimation (on-policy).

Both keep NumPy arrays (environment data arrive as NumPy) and hand out torch tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def compute_gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_values: np.ndarray,
                gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16), backwards in time.

        delta_t = r_t + gamma * V(s_{t+1}) * (1 - d_t) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - d_t) * A_{t+1}
        R_t     = A_t + V(s_t)                         (the value target, "lambda-return")

    ``d_t`` is 1 when the episode *terminated* at step t (the next observation belongs to a new
    episode). Truncation is handled by the caller, who adds ``gamma * V(final_obs)`` to ``r_t``.

    Shapes: rewards, values, dones ``[T, n_envs]``; last_values ``[n_envs]`` (V of the observation
    after the last step) -> advantages, returns ``[T, n_envs]``.
    """
    T = rewards.shape[0]
    adv = np.zeros_like(rewards, dtype=np.float32)
    last = np.zeros(rewards.shape[1:], dtype=np.float32)
    for t in reversed(range(T)):
        next_v = last_values if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_v * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


class RolloutBuffer:
    """``n_steps`` x ``n_envs`` transitions of the current policy (PPO, A2C).

    Fields: obs ``[T, N, *obs_shape]``, actions ``[T, N, *act_shape]``, rewards, values, log_probs,
    dones ``[T, N]``; after :meth:`finish`: advantages and returns ``[T, N]``."""

    def __init__(self, n_steps: int, n_envs: int, obs_shape: tuple[int, ...], act_shape: tuple[int, ...],
                 obs_dtype: Any = np.float32, act_dtype: Any = np.float32) -> None:
        self.T, self.N = n_steps, n_envs
        self.obs = np.zeros((n_steps, n_envs, *obs_shape), obs_dtype)
        self.actions = np.zeros((n_steps, n_envs, *act_shape), act_dtype)
        self.rewards = np.zeros((n_steps, n_envs), np.float32)
        self.values = np.zeros((n_steps, n_envs), np.float32)
        self.log_probs = np.zeros((n_steps, n_envs), np.float32)
        self.dones = np.zeros((n_steps, n_envs), np.float32)
        self.advantages = np.zeros((n_steps, n_envs), np.float32)
        self.returns = np.zeros((n_steps, n_envs), np.float32)
        self.t = 0

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, done: np.ndarray,
            value: np.ndarray, log_prob: np.ndarray) -> None:
        t = self.t
        self.obs[t], self.actions[t], self.rewards[t] = obs, action, reward
        self.dones[t], self.values[t], self.log_probs[t] = done, value, log_prob
        self.t += 1

    @property
    def full(self) -> bool:
        return self.t == self.T

    def finish(self, last_values: np.ndarray, gamma: float, lam: float) -> None:
        self.advantages, self.returns = compute_gae(self.rewards, self.values, self.dones, last_values, gamma, lam)
        self.t = 0

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Every field flattened over (time, env): ``[T * N, ...]``."""
        flat = {k: getattr(self, k) for k in ("obs", "actions", "values", "log_probs", "advantages", "returns")}
        return {k: torch.as_tensor(v.reshape(self.T * self.N, *v.shape[2:]), device=device) for k, v in flat.items()}


class ReplayBuffer:
    """A ring buffer of transitions (s, a, r, s', terminated) for off-policy learning (DQN, SAC, TD3).

    ``next_obs`` of a transition whose episode was truncated is the true last observation (from
    ``info["final_obs"]``) and ``terminated`` is 0, so the target still bootstraps from it.
    Checkpoints hold the filled part, so a resumed run samples exactly what an uninterrupted run would.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], act_shape: tuple[int, ...],
                 obs_dtype: Any = np.float32, act_dtype: Any = np.float32) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, *obs_shape), obs_dtype)
        self.next_obs = np.zeros((capacity, *obs_shape), obs_dtype)
        self.actions = np.zeros((capacity, *act_shape), act_dtype)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray) -> None:
        """Add a batch of ``n`` transitions (one per env copy)."""
        n = len(obs)
        # A slice when the batch does not wrap around: several times cheaper than fancy indexing.
        end = self.pos + n
        idx = slice(self.pos, end) if end <= self.capacity else np.arange(self.pos, end) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, action, reward
        self.next_obs[idx], self.terminated[idx] = next_obs, terminated
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, batch_size: int, rng: np.random.Generator,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """``batch_size`` transitions drawn uniformly with replacement."""
        idx = rng.integers(0, self.size, batch_size)
        return {"obs": torch.as_tensor(self.obs[idx], device=device),
                "actions": torch.as_tensor(self.actions[idx], device=device),
                "rewards": torch.as_tensor(self.rewards[idx], device=device),
                "next_obs": torch.as_tensor(self.next_obs[idx], device=device),
                "terminated": torch.as_tensor(self.terminated[idx], device=device)}

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {"pos": self.pos, "size": n,
                **{k: torch.from_numpy(getattr(self, k)[:n].copy())
                   for k in ("obs", "next_obs", "actions", "rewards", "terminated")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = state["size"]
        for k in ("obs", "next_obs", "actions", "rewards", "terminated"):
            getattr(self, k)[:n] = np.asarray(state[k])
        self.pos, self.size = state["pos"], n
