"""Factories for ``archlab bench rl``: SAC training speed and result, archlab vs Stable-Baselines3, with
rl-baselines3-zoo's Pendulum-v1 hyperparameters (hyperparams/sac.yml: learning_rate 1e-3, SB3's defaults
otherwise, spelled out below) on both sides.

Each factory trains for ``steps`` env steps on one thread and returns ``(wall_seconds, eval_return_mean)``:
the wall time of training alone, then the mean return of 10 deterministic episodes on fresh envs.
"""

from __future__ import annotations

from typing import Any

import torch

# rl-baselines3-zoo hyperparams/sac.yml, Pendulum-v1 (n_timesteps 20000): learning_rate 1e-3; the rest are
# SB3's SAC defaults, written out so that both libraries certainly get the same values.
ZOO_PENDULUM: dict[str, Any] = {
    "learning_rate": 1e-3, "buffer_size": 1_000_000, "learning_starts": 100, "batch_size": 256, "tau": 0.005,
    "gamma": 0.99, "train_freq": 1, "gradient_steps": 1, "ent_coef": "auto", "target_entropy": "auto",
    "target_update_interval": 1,
}
NET_ARCH = [256, 256]  # SB3's SAC default (ReLU) for actor and critics
EVAL_EPISODES = 10


def archlab_sac(env_id: str = "Pendulum-v1", steps: int = 20_000, seed: int = 0,
                matmul_dtype: str = "float32") -> tuple[float, float]:
    """``matmul_dtype="bfloat16"``: archlab's mixed-precision option (hidden 256x256 products in bf16)."""
    import time

    from archlab.rl.sac import SAC

    torch.set_num_threads(1)
    agent = SAC(env_id, seed=seed, net_arch=NET_ARCH, activation="relu", matmul_dtype=matmul_dtype, **ZOO_PENDULUM)
    t0 = time.perf_counter()
    agent.learn(steps, progress=False)
    wall = time.perf_counter() - t0
    mean, _, _ = agent.evaluate(EVAL_EPISODES)
    return wall, mean


def sb3_sac(env_id: str = "Pendulum-v1", steps: int = 20_000, seed: int = 0) -> tuple[float, float]:
    import time

    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.set_num_threads(1)
    model = SAC("MlpPolicy", gym.make(env_id), policy_kwargs={"net_arch": NET_ARCH, "activation_fn": torch.nn.ReLU},
                seed=seed, device="cpu", verbose=0, **ZOO_PENDULUM)
    t0 = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - t0
    eval_env = DummyVecEnv([lambda: gym.make(env_id)])
    eval_env.seed(seed + 100_000)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    return wall, float(mean)
