"""Deep Q-Network (Mnih et al. 2015, https://www.nature.com/articles/nature14236) as Stable-Baselines3
implements it, with the Double DQN (van Hasselt et al. 2016, https://arxiv.org/abs/1509.06461) and
dueling (Wang et al. 2016, https://arxiv.org/abs/1511.06581) options.

One iteration = ``train_freq`` steps of every env copy with an epsilon-greedy policy, each transition
stored in a replay buffer, then (once ``learning_starts`` env steps are done) ``gradient_steps``
minibatch steps on the Huber loss of the one-step TD error:

    y        = r + gamma * (1 - terminated) * max_a' Q_target(s', a')               (DQN target)
    y        = r + gamma * (1 - terminated) * Q_target(s', argmax_a' Q(s', a'))     (Double DQN, eq. 4)
    loss     = mean_batch smooth_l1(Q(s, a) - y)                                     (Huber, delta 1)
    Q(s, .)  = V(s) + A(s, .) - mean_a A(s, a)                                       (dueling, eq. 9)

The target network is copied from the online one (``tau = 1``) or moved towards it
(``theta' <- (1 - tau) theta' + tau theta``) every ``target_update_interval`` env steps, counted during
collection as SB3 does -- so it never changes during a phase of gradient steps. Epsilon falls linearly
from ``exploration_initial_eps`` to ``exploration_final_eps`` over the first ``exploration_fraction``
of the run; actions are uniformly random before ``learning_starts``.

This file is the reference: plain autograd, one minibatch after another, read top to bottom. The
default ``fast`` path (``fast_offpolicy.py``: flat parameters, a hand-written backward pass, all of a
phase's minibatches and targets at once, NumPy acting) makes the same updates and is tested equal to
it. The optimizer is the engine's, trainable ``q`` (``[optim]``; SB3's Adam, lr 1e-4, by default).

    agent = archlab.rl.DQN("CartPole-v1", learning_rate=2.3e-3, batch_size=64, buffer_size=100_000,
                           learning_starts=1000, target_update_interval=10, train_freq=256,
                           gradient_steps=128, exploration_fraction=0.16, exploration_final_eps=0.04,
                           net_arch=[256, 256], seed=0)
    agent.learn(50_000)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError
from .base import Agent, AgentConfig, check_epsilon_schedule, linear_epsilon
from .buffers import ReplayBuffer
from .fast_offpolicy import FastDQN
from .networks import activation as activation_cls
from .networks import encode_obs, mlp


@dataclasses.dataclass
class DQNConfig(AgentConfig):
    """DQN hyperparameters; defaults are Stable-Baselines3's."""

    activation: str = "relu"
    """Hidden activation (SB3's DQN uses ReLU)."""
    buffer_size: int = 1_000_000
    """Capacity of the replay buffer (transitions)."""
    learning_starts: int = 100
    """Env steps of uniformly random actions before the first gradient step."""
    batch_size: int = 32
    """Minibatch size of a gradient step."""
    tau: float = 1.0
    """Target network update coefficient: 1 copies the online network, < 1 is a soft (Polyak) update."""
    target_update_interval: int = 10_000
    """Env steps (all copies together) between target network updates."""
    train_freq: int = 4
    """Steps of each env copy collected per iteration (between phases of gradient steps)."""
    gradient_steps: int = 1
    """Gradient steps per iteration; -1: as many as env steps collected (train_freq * n_envs)."""
    exploration_fraction: float = 0.1
    """Fraction of the run over which epsilon falls linearly to its final value."""
    exploration_initial_eps: float = 1.0
    """Epsilon (probability of a uniformly random action) at the start."""
    exploration_final_eps: float = 0.05
    """Epsilon after ``exploration_fraction`` of the run."""
    max_grad_norm: float = 10.0
    """Clip the global gradient norm to this."""
    double: bool = False
    """Double DQN: the online network picks the next action, the target network values it."""
    dueling: bool = False
    """Dueling head: Q = V + A - mean(A) over a shared body."""
    fast: bool = True
    """Train on the fast path (``fast_offpolicy.py``), the same updates as the reference here, tested
    equal to it. A checkpoint resumes on the path that wrote it (their optimizer states differ in shape)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 1 or self.batch_size < 1 or self.train_freq < 1 or self.target_update_interval < 1:
            raise ValueError(f"buffer_size, batch_size, train_freq and target_update_interval must be >= 1, got "
                             f"{self.buffer_size}, {self.batch_size}, {self.train_freq}, {self.target_update_interval}")
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {self.learning_starts}")
        if self.gradient_steps < -1:
            raise ValueError(f"gradient_steps must be >= 0 or -1, got {self.gradient_steps}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        check_epsilon_schedule(self)
        if not 0 < self.max_grad_norm <= 1e6:
            raise ValueError(f"max_grad_norm must be in (0, 1e6], got {self.max_grad_norm}")


class QNetwork(nn.Module):
    """``Q(s, .)``: an MLP from the (one-hot, for discrete observation spaces) observation to one
    value per action, ``[B, *obs_shape] -> [B, n_actions]``. PyTorch's default initialization, as SB3.

    Dueling: a shared body ``obs -> net_arch`` and one linear head producing ``[V | A]``, combined
    as ``Q = V + A - mean(A)`` (Wang et al. 2016, eq. 9; subtracting the mean makes V and A identifiable)."""

    def __init__(self, obs_dim: int, n_obs: int, n_actions: int, net_arch: Sequence[int], activation: str,
                 dueling: bool) -> None:
        super().__init__()
        self.n_obs, self.dueling, self.activation = n_obs, dueling, activation
        arch = list(net_arch)
        if dueling:
            body = mlp([obs_dim, *arch], activation) if arch else nn.Identity()
            self.body = nn.Sequential(*body, activation_cls(activation)()) if arch else body
            self.head = nn.Linear(arch[-1] if arch else obs_dim, 1 + n_actions)
        else:
            self.body = mlp([obs_dim, *arch, n_actions], activation)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        x = encode_obs(obs, self.n_obs)
        return x if x.dim() == 2 else x.flatten(1)

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        """The last layer's output -> Q: itself, or ``V + A - mean(A)`` from ``[V | A]`` (dueling)."""
        if not self.dueling:
            return out
        value, adv = out[:, :1], out[:, 1:]
        return value + adv - adv.mean(1, keepdim=True)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.body(self.encode(obs))
        return self.combine(self.head(x) if self.dueling else x)


class DQN(Agent):
    """Deep Q-Network with Double DQN and dueling options; see the module docstring."""

    algo = "dqn"
    Config = DQNConfig
    cfg: DQNConfig
    optim_defaults = {"name": "adam", "lr": 1e-4}  # SB3's DQN: Adam, lr 1e-4, eps 1e-8

    @classmethod
    def trainable_names(cls, cfg: DQNConfig) -> tuple[str, ...]:
        return ("q",)

    def build(self) -> None:
        cfg, spaces = self.cfg, self.spaces
        if not spaces.discrete:
            raise ArchlabError(f"dqn needs a discrete action space; {self.env_id} has a Box action space")
        # Q(s, .) and its target copy Q', on the target device (before the fast path flattens them)
        self.q = QNetwork(spaces.obs_dim, spaces.n_obs, spaces.n_actions, cfg.net_arch, cfg.activation,
                          cfg.dueling).to(self.device)
        self.q_target = copy.deepcopy(self.q)
        self.q_target.requires_grad_(False)
        self.fast = FastDQN(self) if cfg.fast else None
        # the engine's optimizer of [optim.q] (the fast path's steps the flat parameter)
        self.optimizer = self.fast.optimizer if self.fast else self.make_optimizer("q", self.q)
        self.iteration_steps = cfg.train_freq * cfg.n_envs  # env steps per iteration (the engine's unit)
        self.buffer = ReplayBuffer(cfg.buffer_size, spaces.obs_shape, (),
                                   np.int64 if spaces.n_obs else np.float32, np.int64)

    # -- acting ---------------------------------------------------------------------------------
    def epsilon(self) -> float:
        """The exploration rate now: linear from initial to final over ``exploration_fraction``."""
        return linear_epsilon(self.cfg, 1.0 - self.progress_remaining())

    @torch.inference_mode()
    def greedy(self, obs: torch.Tensor) -> np.ndarray:
        """argmax_a Q(s, a) for a batch of observations -> ``[B]`` int64."""
        return self.q(obs).argmax(1).cpu().numpy()

    def explore(self, obs: np.ndarray, eps: float) -> np.ndarray:
        """Epsilon-greedy actions for the training envs (a coin per env copy); the network runs only
        when some copy acts greedily."""
        n, n_actions = len(obs), self.spaces.n_actions
        random = self.rng.random(n) < eps
        if random.all():
            return self.rng.integers(0, n_actions, n)
        actions = self.fast.greedy(obs) if self.fast else self.greedy(self.tensor(obs))
        if random.any():
            actions[random] = self.rng.integers(0, n_actions, int(random.sum()))
        return actions

    def act(self, obs: torch.Tensor, deterministic: bool) -> np.ndarray:
        if deterministic:
            return self.greedy(obs)
        return self.explore(obs.cpu().numpy(), self.epsilon())

    # -- training -------------------------------------------------------------------------------
    def iteration(self) -> dict[str, Any]:
        cfg = self.cfg
        obs = self.start()
        n = self.env.n
        update_every = max(cfg.target_update_interval // n, 1)  # in vector steps, as SB3
        for _ in range(cfg.train_freq):
            # Uniformly random actions before learning starts (SB3's _sample_action).
            eps = 1.0 if self.num_steps < cfg.learning_starts else self.epsilon()
            actions = self.explore(obs, eps)
            next_obs, rew, term, trunc, info = self.env_step(actions)
            # A truncated episode's true last observation is stored as s' (terminated = 0), so the
            # target bootstraps from it; the returned next_obs is already the next episode's first.
            real_next = next_obs
            if info["final_obs"]:
                real_next = next_obs.copy()
                for i, o in info["final_obs"].items():
                    real_next[i] = o
            self.buffer.add(obs, actions, rew, real_next, term.astype(np.float32))
            obs = next_obs
            if (self.num_steps // n) % update_every == 0:
                self.update_target()
        stats: dict[str, Any] = {"epsilon": self.epsilon(), "buffer": len(self.buffer)}
        if self.num_steps > cfg.learning_starts:
            steps = cfg.gradient_steps if cfg.gradient_steps >= 0 else cfg.train_freq * n
            if steps > 0:
                stats["loss"] = self.train(steps)
        return stats

    def update_target(self) -> None:
        """theta' <- (1 - tau) theta' + tau theta (tau = 1: a copy)."""
        if self.fast:
            self.fast.update_target()
            return
        with torch.no_grad():
            for target, online in zip(self.q_target.parameters(), self.q.parameters(), strict=True):
                if self.cfg.tau == 1.0:
                    target.copy_(online)
                else:
                    target.lerp_(online, self.cfg.tau)

    def train(self, steps: int) -> float:
        """``steps`` gradient steps on minibatches from the replay buffer; returns the mean loss."""
        if self.fast:
            return self.fast.train(steps)
        cfg, buf = self.cfg, self.buffer
        self.set_lr(self.optimizer, self.current_lr("q"))
        # the phase's minibatches, drawn at once (as the fast path draws them): [steps, batch_size]
        batches = self.rng.integers(0, len(buf), (steps, cfg.batch_size))
        total = 0.0
        for idx in batches:
            obs, next_obs = self.tensor(buf.obs[idx]), self.tensor(buf.next_obs[idx])
            actions = self.tensor(buf.actions[idx]).unsqueeze(1)  # [B, 1]
            rewards, not_done = self.tensor(buf.rewards[idx]), self.tensor(1.0 - buf.terminated[idx])
            with torch.no_grad():
                if cfg.double:  # the online network picks a' = argmax_a' Q(s', a'), the target values it
                    next_v = self.q_target(next_obs).gather(1, self.q(next_obs).argmax(1, keepdim=True)).squeeze(1)
                else:
                    next_v = self.q_target(next_obs).amax(1)
                y = rewards + cfg.gamma * not_done * next_v  # y = r + gamma (1 - terminated) Q'(s', a')
            q_sa = self.q(obs).gather(1, actions).squeeze(1)  # Q(s, a)
            loss = F.smooth_l1_loss(q_sa, y)  # Huber, delta 1
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.q.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            total += loss.item()
        self.num_updates += steps
        return total / steps

    # -- files and checkpoints ------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"q": self.q}

    def train_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "q_target": self.q_target.state_dict(),
                "buffer": self.buffer.state_dict()}

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.q_target.load_state_dict(state["q_target"])
        self.buffer.load_state_dict(state["buffer"])
