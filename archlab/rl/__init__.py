"""Reinforcement learning: one readable file per algorithm, sharing env helpers, buffers and networks.

    import archlab.rl
    agent = archlab.rl.PPO("CartPole-v1", n_envs=8, seed=0)
    agent.learn(100_000)
    action = agent.predict(obs)
    agent.save("ppo_cartpole");  agent = archlab.rl.PPO.load("ppo_cartpole")

Needs the ``rl`` extra (gymnasium). Algorithms are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ArchlabError

# name -> "module:Class"
_ALGOS = {
    "qlearning": "archlab.rl.qlearning:QLearning",
    "dqn": "archlab.rl.dqn:DQN",
    "reinforce": "archlab.rl.reinforce:REINFORCE",
    "a2c": "archlab.rl.a2c:A2C",
    "a3c": "archlab.rl.a3c:A3C",
    "ppo": "archlab.rl.ppo:PPO",
    "sac": "archlab.rl.sac:SAC",
    "td3": "archlab.rl.td3:TD3",
}
_CLASS_NAMES = {v.split(":")[1]: k for k, v in _ALGOS.items()}


def algo_names() -> list[str]:
    return sorted(_ALGOS)


def algo_descriptions() -> dict[str, str]:
    """name -> first line of the algorithm's docstring (imports the algorithms that exist)."""
    out = {}
    for name in algo_names():
        try:
            cls = get_algo(name)
        except ImportError as exc:  # gymnasium missing: say so instead of failing `archlab list`
            out[name] = f"(unavailable: {exc})"
            continue
        out[name] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    return out


def get_algo(name: str) -> type:
    if name not in _ALGOS:
        raise ArchlabError(f"unknown algorithm {name!r}; algorithms: {', '.join(algo_names())}")
    module, cls = _ALGOS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load(path: Any, device: str = "cpu") -> Any:
    """Any agent saved with ``agent.save(dir)`` (or the final agent of an RL run directory)."""
    from .base import Agent

    return Agent.load(path, device=device)


def __getattr__(name: str) -> Any:
    if name in _CLASS_NAMES:
        return get_algo(_CLASS_NAMES[name])
    raise AttributeError(f"module 'archlab.rl' has no attribute {name!r}")
