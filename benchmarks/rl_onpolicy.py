"""Factories for ``archlab bench rl``: archlab's PPO versus Stable-Baselines3's PPO with the same hyperparameters.

Both sides train with rl-baselines3-zoo's tuned CartPole-v1 hyperparameters (hyperparams/ppo.yml: 8 envs,
n_steps 32, batch 256, 20 epochs, gamma 0.98, GAE lambda 0.8, lr lin_1e-3, clip lin_0.2, ent_coef 0,
separate [64, 64] tanh actor and critic, orthogonal init, Adam eps 1e-5, max_grad_norm 0.5) for ``steps``
environment steps in this process, on 1 thread, then play 10 deterministic evaluation episodes.
Each factory returns ``(wall_seconds of training, eval_return_mean)``.

    python benchmarks/rl_onpolicy.py [steps] [seed]     # both, back to back
"""

from __future__ import annotations

import time
from typing import Any

import torch

#: rl-zoo hyperparams/ppo.yml, CartPole-v1 (``lin_`` values decay linearly to 0 over the run).
ZOO_CARTPOLE: dict[str, Any] = {"n_envs": 8, "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98,
                                "n_epochs": 20, "ent_coef": 0.0, "learning_rate": 1e-3, "clip_range": 0.2}
EVAL_EPISODES = 10


def archlab_ppo(env_id: str = "CartPole-v1", steps: int = 100_000, seed: int = 0) -> tuple[float, float]:
    import archlab.rl

    torch.set_num_threads(1)
    agent = archlab.rl.PPO(env_id, seed=seed, lr_schedule="linear", clip_schedule="linear", **ZOO_CARTPOLE)
    t0 = time.perf_counter()
    agent.learn(steps, progress=False)
    wall = time.perf_counter() - t0
    return wall, agent.evaluate(EVAL_EPISODES)[0]


def sb3_ppo(env_id: str = "CartPole-v1", steps: int = 100_000, seed: int = 0) -> tuple[float, float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)
    hp = dict(ZOO_CARTPOLE)
    n_envs, lr, clip = hp.pop("n_envs"), hp.pop("learning_rate"), hp.pop("clip_range")
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = PPO("MlpPolicy", env, learning_rate=lambda p: p * lr, clip_range=lambda p: p * clip,
                seed=seed, device="cpu", verbose=0, **hp)
    t0 = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - t0
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 100_000)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    return wall, float(mean)


if __name__ == "__main__":
    import statistics
    import sys

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    ratios = []
    for r in range(repeats):  # alternate, so load changes on a shared machine hit both sides alike
        walls = {}
        for name, fn in (("sb3", sb3_ppo), ("archlab", archlab_ppo)):
            wall, ret = fn("CartPole-v1", steps, seed + r)
            walls[name] = wall
            print(f"{name:8s} seed {seed + r}: {steps / wall:8.0f} steps/s  {wall:6.1f} s  eval return {ret:.1f}",
                  flush=True)
        ratios.append(walls["sb3"] / walls["archlab"])
    print(f"speed-up archlab / sb3: median {statistics.median(ratios):.2f}x  ({', '.join(f'{x:.2f}' for x in ratios)})")
