"""Factories for ``archlab bench rl``: DQN training speed and result, archlab vs Stable-Baselines3, with
rl-baselines3-zoo's CartPole-v1 hyperparameters (hyperparams/dqn.yml) on both sides.

Each factory trains for ``steps`` env steps on one thread and returns ``(wall_seconds, eval_return_mean)``:
the wall time of training alone, then the mean return of 10 deterministic episodes on fresh envs --
the same 10 (env copies seeded ``seed + 100000 + i``, archlab's ``Agent.evaluate`` protocol) for both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# rl-baselines3-zoo hyperparams/dqn.yml, CartPole-v1 ("Almost Tuned"; n_timesteps 5e4).
ZOO_CARTPOLE: dict[str, Any] = {
    "learning_rate": 2.3e-3, "batch_size": 64, "buffer_size": 100_000, "learning_starts": 1000, "gamma": 0.99,
    "target_update_interval": 10, "train_freq": 256, "gradient_steps": 128, "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
}
NET_ARCH = [256, 256]
EVAL_EPISODES = 10


def _evaluate(policy: Callable[[np.ndarray], np.ndarray], env_id: str, seed: int) -> float:
    """Mean return of one deterministic episode on each of EVAL_EPISODES env copies."""
    from archlab.rl.env import VecEnv

    env = VecEnv(env_id, EVAL_EPISODES, seed + 100_000)
    obs = env.reset()
    returns: list[float | None] = [None] * EVAL_EPISODES
    while any(r is None for r in returns):
        obs, _, _, _, info = env.step(policy(obs))
        for i, (ret, _) in zip(sorted(info["final_obs"]), info["episodes"], strict=True):
            if returns[i] is None:
                returns[i] = ret
    env.close()
    return float(np.mean(returns))


def archlab_dqn(env_id: str = "CartPole-v1", steps: int = 50_000, seed: int = 0) -> tuple[float, float]:
    import time

    from archlab.rl.dqn import DQN

    torch.set_num_threads(1)
    agent = DQN(env_id, seed=seed, net_arch=NET_ARCH, **ZOO_CARTPOLE)
    t0 = time.perf_counter()
    agent.learn(steps, progress=False)
    wall = time.perf_counter() - t0
    return wall, _evaluate(agent.predict, env_id, seed)


def sb3_dqn(env_id: str = "CartPole-v1", steps: int = 50_000, seed: int = 0) -> tuple[float, float]:
    import time

    import gymnasium as gym
    from stable_baselines3 import DQN

    torch.set_num_threads(1)
    model = DQN("MlpPolicy", gym.make(env_id), policy_kwargs={"net_arch": NET_ARCH}, seed=seed, device="cpu",
                verbose=0, **ZOO_CARTPOLE)
    t0 = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - t0
    return wall, _evaluate(lambda obs: model.predict(obs, deterministic=True)[0], env_id, seed)
