"""Reinforcement learning: one readable file per algorithm, sharing env helpers, buffers and networks.

    import archlab.rl
    agent = archlab.rl.PPO("CartPole-v1", n_envs=8, seed=0)
    agent.learn(100_000)
    action = agent.predict(obs)
    agent.save("ppo_cartpole");  agent = archlab.rl.PPO.load("ppo_cartpole")

Needs the ``rl`` extra (gymnasium). Algorithms are imported on first use.
"""

from __future__ import annotations

from typing import Any

from ..errors import ArchlabError
from ..registry import MODELS

_CLASS_NAMES = {"QLearning": "qlearning", "DQN": "dqn", "REINFORCE": "reinforce", "A2C": "a2c", "A3C": "a3c",
                "PPO": "ppo", "SAC": "sac", "TD3": "td3"}


def algo_names() -> list[str]:
    return [e.name for e in MODELS.entries("rl")]


def get_algo(name: str) -> type:
    """The algorithm class registered as ``name`` (family ``rl`` of the model registry)."""
    entry = MODELS.get(name) if name in MODELS else None
    if entry is None or entry.family != "rl":
        raise ArchlabError(f"unknown algorithm {name!r}; algorithms: {', '.join(algo_names())}")
    return entry.cls


def load(path: Any, device: str = "cpu") -> Any:
    """Any agent saved with ``agent.save(dir)`` (or the final agent of an RL run directory)."""
    from .base import Agent

    return Agent.load(path, device=device)


def __getattr__(name: str) -> Any:
    if name in _CLASS_NAMES:
        return get_algo(_CLASS_NAMES[name])
    raise AttributeError(f"module 'archlab.rl' has no attribute {name!r}")
