"""Registers every RL algorithm in the model registry (family ``rl``): ``archlab.list("rl")``,
``archlab.create("ppo", env="CartPole-v1")``, recipes' ``[algo] name`` and ``archlab.load(dir)``
all find them there."""

from __future__ import annotations

from ..registry import MODELS
from .a2c import A2C
from .a3c import A3C
from .dqn import DQN
from .ppo import PPO
from .qlearning import QLearning
from .reinforce import REINFORCE
from .sac import SAC
from .td3 import TD3

for _cls in (QLearning, DQN, REINFORCE, A2C, A3C, PPO, SAC, TD3):
    MODELS.add(_cls.algo, _cls, family="rl")
