"""Tabular Q-learning (Watkins 1989; Watkins & Dayan 1992, https://doi.org/10.1007/BF00992698) for
environments with discrete observations and actions (FrozenLake, Taxi, CliffWalking).

A table ``Q[s, a]`` is updated after every env step towards the one-step TD target, off-policy (the
target uses the greedy action whatever the behaviour policy did):

    y        = r + gamma * (1 - terminated) * max_a' Q[s', a']
    Q[s, a] <- Q[s, a] + alpha * (y - Q[s, a])                                   (Sutton & Barto eq. 6.8)

The behaviour policy is epsilon-greedy, with epsilon falling linearly from ``exploration_initial_eps``
to ``exploration_final_eps`` over the first ``exploration_fraction`` of the run (the schedule DQN
uses). ``learning_rate`` is alpha; ``lr_schedule = "linear"`` decays it to 0 over the run. A time-limit
truncation bootstraps from the true last observation, like a non-terminal step.

The table lives in a torch buffer (so ``save``/``load`` and checkpoints handle it like any network),
and the per-step update works on a NumPy view of it: one table entry per step is far below the cost
of a torch op.

    agent = archlab.rl.QLearning("FrozenLake-v1", env_options={"is_slippery": False}, seed=0)
    agent.learn(20_000)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArchlabError
from .base import Agent, AgentConfig, check_epsilon_schedule, linear_epsilon


@dataclasses.dataclass
class QLearningConfig(AgentConfig):
    """Tabular Q-learning hyperparameters (``net_arch`` and ``activation`` are unused)."""

    learning_rate: float = 0.1
    """alpha, the step size of the table update (a setting of the algorithm, not an optimizer's:
    Q-learning has no ``[optim]``)."""
    lr_schedule: str = "constant"
    """``constant`` or ``linear`` (alpha decays to 0 over the run's total steps)."""
    steps_per_iteration: int = 1000
    """Steps of each env copy per iteration (between log lines; every step updates the table)."""
    exploration_fraction: float = 0.5
    """Fraction of the run over which epsilon falls linearly to its final value."""
    exploration_initial_eps: float = 1.0
    """Epsilon (probability of a uniformly random action) at the start."""
    exploration_final_eps: float = 0.05
    """Epsilon after ``exploration_fraction`` of the run."""
    initial_q: float = 0.0
    """Initial value of every table entry (> 0: optimism that drives exploration)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError(f"learning_rate (alpha) must be in (0, 1], got {self.learning_rate}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}")
        if self.steps_per_iteration < 1:
            raise ValueError(f"steps_per_iteration must be >= 1, got {self.steps_per_iteration}")
        check_epsilon_schedule(self)
        if self.normalize_obs:
            raise ValueError("normalize_obs does not apply to discrete observations")


class QTable(nn.Module):
    """``Q[s, a]``, ``[n_states, n_actions]``, as a buffer; ``forward(states [B]) -> [B, n_actions]``."""

    def __init__(self, n_states: int, n_actions: int, initial: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("table", torch.full((n_states, n_actions), float(initial)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.table[states.long()]


class QLearning(Agent):
    """Tabular Q-learning; see the module docstring."""

    algo = "qlearning"
    Config = QLearningConfig
    cfg: QLearningConfig

    def build(self) -> None:
        spaces = self.spaces
        if not spaces.n_obs:
            raise ArchlabError(f"qlearning needs a discrete observation space; {self.env_id} has "
                               f"Box observations of shape {spaces.obs_shape} (dqn learns from those)")
        if not spaces.discrete:
            raise ArchlabError(f"qlearning needs a discrete action space; {self.env_id} has a Box action space")
        self.q = QTable(spaces.n_obs, spaces.n_actions, self.cfg.initial_q).to(self.device)
        self.iteration_steps = self.cfg.steps_per_iteration * self.cfg.n_envs  # the engine's unit

    def epsilon(self) -> float:
        """The exploration rate now: linear from initial to final over ``exploration_fraction``."""
        return linear_epsilon(self.cfg, 1.0 - self.progress_remaining())

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool) -> np.ndarray:
        actions = self.q(obs).argmax(1).cpu().numpy()
        if not deterministic:
            random = self.rng.random(len(actions)) < self.epsilon()
            actions[random] = self.rng.integers(0, self.spaces.n_actions, int(random.sum()))
        return actions

    def alpha(self) -> float:
        """The table update's step size now (``learning_rate``, times the remaining fraction of the run
        when ``lr_schedule`` is linear)."""
        lr = self.cfg.learning_rate
        return lr * self.progress_remaining() if self.cfg.lr_schedule == "linear" else lr

    def iteration(self) -> dict[str, Any]:
        cfg = self.cfg
        on_cpu = self.q.table.device.type == "cpu"
        Q = self.q.table.numpy() if on_cpu else self.q.table.cpu().numpy()  # a view on the CPU
        n, n_actions = self.env.n, self.spaces.n_actions
        envs = np.arange(n)
        obs = self.start()
        sq_err = 0.0
        for _ in range(cfg.steps_per_iteration):
            eps, alpha = self.epsilon(), self.alpha()
            # Greedy, ties broken at random: with an all-zero table, "greedy" is then a random walk
            # rather than always action 0 (which never leaves FrozenLake's start state).
            q = Q[obs]
            actions = ((q == q.max(1, keepdims=True)) * self.rng.random(q.shape)).argmax(1)
            random = self.rng.random(n) < eps
            if random.any():
                actions[random] = self.rng.integers(0, n_actions, int(random.sum()))
            next_obs, rew, term, trunc, info = self.env_step(actions)
            real_next = next_obs
            if info["final_obs"]:  # a truncated episode bootstraps from its true last state
                real_next = next_obs.copy()
                for i, o in info["final_obs"].items():
                    real_next[i] = o
            # y = r + gamma (1 - terminated) max_a' Q[s', a'];  Q[s, a] += alpha (y - Q[s, a])
            y = rew + cfg.gamma * (1.0 - term) * Q[real_next].max(1)
            for i in envs:  # in order, so two copies updating the same entry both count
                td = y[i] - Q[obs[i], actions[i]]
                Q[obs[i], actions[i]] += alpha * td
                sq_err += float(td) ** 2
            obs = next_obs
        if not on_cpu:
            self.q.table.copy_(torch.from_numpy(Q))
        self.num_updates += cfg.steps_per_iteration * n
        return {"loss": sq_err / (cfg.steps_per_iteration * n), "epsilon": self.epsilon(), "alpha": self.alpha()}

    def networks(self) -> dict[str, nn.Module]:
        return {"q": self.q}
