"""Tiny environments with known optimal returns, for tests that must learn in seconds.

- ``archlab/Identity-v0``: observation = one-hot of a random target in {0..n-1}; reward 1 when the
  action equals the target; 20 steps per episode -> optimal return 20 (random play: 20/n).
- ``archlab/IdentityBox-v0``: observation x ~ U[-1, 1]^d; action a in [-1, 1]^d;
  reward = -mean((a - x)^2); 20 steps -> optimal return 0 (random play: about -13.3 for d=1).
- ``archlab/Bandit-v0``: one state, ``n`` arms, arm i pays Bernoulli(p_i); 1 step per episode;
  the best arm is the last one.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class Identity(gym.Env):
    max_steps = 20

    def __init__(self, n: int = 4) -> None:
        self.n = n
        self.observation_space = gym.spaces.Box(0.0, 1.0, (n,), np.float32)
        self.action_space = gym.spaces.Discrete(n)
        self.target = 0

    def _obs(self) -> np.ndarray:
        o = np.zeros(self.n, np.float32)
        o[self.target] = 1.0
        return o

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.target = int(self.np_random.integers(self.n))
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(int(action) == self.target)
        self.target = int(self.np_random.integers(self.n))
        return self._obs(), reward, False, False, {}


class IdentityBox(gym.Env):
    max_steps = 20

    def __init__(self, dim: int = 1) -> None:
        self.dim = dim
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)
        self.x = np.zeros(dim, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, self.dim).astype(np.float32)
        return self.x.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = np.clip(np.asarray(action, np.float32), -1, 1)
        reward = -float(np.mean((a - self.x) ** 2))
        self.x = self.np_random.uniform(-1, 1, self.dim).astype(np.float32)
        return self.x.copy(), reward, False, False, {}


class Bandit(gym.Env):
    max_steps = None

    def __init__(self, probs: tuple[float, ...] = (0.2, 0.5, 0.8)) -> None:
        self.probs = np.asarray(probs, np.float64)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(len(self.probs))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.ones(1, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(self.np_random.random() < self.probs[int(action)])
        return np.ones(1, np.float32), reward, True, False, {}


TOY_ENVS = {"archlab/Identity-v0": Identity, "archlab/IdentityBox-v0": IdentityBox, "archlab/Bandit-v0": Bandit}
