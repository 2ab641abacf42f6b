"""What the off-policy actor-critics (SAC, TD3) share: stacked MLPs with a hand-written backward pass
(the twin critics evaluated as one), action scaling, the collect-then-update iteration
over a replay buffer, and checkpoint plumbing.

Both algorithms act in the squashed action space ``[-1, 1]^d`` (a ``tanh`` output) and the
environment gets ``low + (a + 1) (high - low) / 2``; the replay buffer stores the ``[-1, 1]``
action, so the critics never see the Box bounds (SB3's ``scale_action`` / ``unscale_action``).

One iteration (Stable-Baselines3's ``collect_rollouts`` + ``train``):

1. ``train_freq`` steps of every env copy: uniform random actions while fewer than
   ``learning_starts`` env steps were taken, the exploration policy after that; each transition
   ``(s, a, r, s', terminated)`` goes into the replay buffer. A time-limit truncation stores the
   true last observation as ``s'`` with ``terminated = 0``, so the target still bootstraps from it.
2. Once more than ``learning_starts`` steps were taken: ``gradient_steps`` updates on minibatches
   of ``batch_size`` transitions drawn uniformly from the buffer (``-1``: one per transition
   collected in step 1).

The networks are :class:`StackedMLP`: the twin critics are one module (weights ``[2, out, in]``),
evaluated as one ``baddbmm`` per layer. This file, ``sac.py`` and ``td3.py`` are the reference: plain
autograd (``loss.backward()``, ``optimizer.step()``). The default ``fast`` path (``fast_offpolicy.py``:
flat parameters, hand-written backward passes into preallocated buffers, optional bfloat16 products)
makes the same updates and is tested equal to it. Optimizers are the engine's (``[optim.NAME]``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArchlabError
from .base import Agent, AgentConfig
from .buffers import ReplayBuffer
from .networks import encode_obs


# ------------------------------------------------------------------------------ networks
class StackedMLP(nn.Module):
    """``n`` independent MLPs of one shape ``sizes[0] -> ... -> sizes[-1]`` evaluated together:
    layer ``l`` of every network is a slice of one stacked weight ``[n, out, in]`` (``nn.Linear``'s
    layout), so a pass is one ``baddbmm`` per layer however many networks there are. SAC's and
    TD3's twin critics are ``n = 2`` (``Q_i(s, a) = MLP_i([s, a])``), their actors ``n = 1``.
    Initialized as ``nn.Linear`` (U(+-1/sqrt(fan_in)) for weights and biases), as SB3's networks.

    ``h_l = act(h_{l-1} W_l^T + b_l)`` per network; the fast path's
    :class:`~archlab.rl.fast_offpolicy.StackedRunner` evaluates the same module with a hand-written
    backward pass.

    Shapes: x ``[B, sizes[0]]`` -> ``[n, B, sizes[-1]]``."""

    def __init__(self, n: int, sizes: list[int], activation: str = "relu") -> None:
        super().__init__()
        if activation not in ("relu", "tanh"):
            raise ArchlabError(f"activation {activation!r}: SAC and TD3 networks support relu, tanh")
        self.n, self.sizes, self.activation = n, list(sizes), activation
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_out, fan_in).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.n, *x.shape)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w.transpose(1, 2))
            if i < last:
                h = torch.relu(h) if self.activation == "relu" else torch.tanh(h)
        return h


def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    """theta_target <- (1 - tau) theta_target + tau theta, parameter by parameter."""
    with torch.no_grad():
        for t, p in zip(target.parameters(), source.parameters(), strict=True):
            t.lerp_(p, tau)


# ------------------------------------------------------------------------------ config + agent
@dataclasses.dataclass
class OffPolicyConfig(AgentConfig):
    """Hyperparameters SAC and TD3 share (SB3's defaults)."""

    net_arch: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    """Hidden layer widths of the actor and of each critic."""
    activation: str = "relu"
    """Hidden activation of the actor and critics."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity (transitions); the oldest are overwritten."""
    learning_starts: int = 100
    """Env steps of uniformly random actions before the policy acts and updates begin."""
    batch_size: int = 256
    """Transitions per gradient step."""
    tau: float = 0.005
    """Polyak coefficient of the target networks: theta' <- (1 - tau) theta' + tau theta."""
    train_freq: int = 1
    """Steps of every env copy between update phases (rl-zoo's ``[1, "episode"]`` is the episode
    length for fixed-length episodes, e.g. 200 on Pendulum)."""
    gradient_steps: int = 1
    """Gradient steps per update phase; -1: as many as transitions collected in the phase."""
    matmul_dtype: str = "float32"
    """dtype of the fast path's hidden-to-hidden matrix products of training: ``float32``, or
    ``bfloat16`` (mixed precision: those products about 2x faster on CPUs with AVX512-BF16 or AMX;
    parameters, gradients, optimizer, first and last layers stay float32)."""
    fast: bool = True
    """Train on the fast path (``fast_offpolicy.py``), the same updates as the reference (``sac.py``,
    ``td3.py``), tested equal to it. A checkpoint resumes on the path that wrote it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {self.learning_starts}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.train_freq < 1:
            raise ValueError(f"train_freq must be >= 1, got {self.train_freq}")
        if self.gradient_steps < -1:
            raise ValueError(f"gradient_steps must be >= 0, or -1 for one per collected transition, "
                             f"got {self.gradient_steps}")
        if self.matmul_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"matmul_dtype must be 'float32' or 'bfloat16', got {self.matmul_dtype!r}")
        if self.matmul_dtype != "float32" and not self.fast:
            raise ValueError("matmul_dtype = 'bfloat16' is a fast-path option; the reference (fast = false) "
                             "computes in float32")


class OffPolicyAgent(Agent):
    """The plumbing SAC and TD3 share. Subclasses build their networks (``build_networks``), pick
    exploration actions (``explore``) and greedy/sampled actions (``policy_action``), and write one
    gradient step (``update``)."""

    cfg: OffPolicyConfig

    def build(self) -> None:
        if self.spaces.discrete:
            raise ArchlabError(f"{self.algo} needs a continuous (Box) action space; {self.env_id} has discrete actions")
        cfg, sp = self.cfg, self.spaces
        self.obs_dim, self.act_dim = sp.obs_dim, sp.act_dim
        # a_env = low + (a + 1) * (high - low) / 2 = a * half + mid
        self.act_half = ((sp.high - sp.low) / 2).astype(np.float32)
        self.act_mid = ((sp.high + sp.low) / 2).astype(np.float32)
        self.buffer = ReplayBuffer(cfg.buffer_size, sp.obs_shape, sp.act_shape,
                                   obs_dtype=np.int64 if sp.n_obs else np.float32)
        self.iteration_steps = cfg.train_freq * cfg.n_envs
        self.build_networks()

    # -- what SAC / TD3 implement ---------------------------------------------------------------
    def build_networks(self) -> None:
        raise NotImplementedError

    def explore(self, obs: torch.Tensor) -> np.ndarray:
        """Exploration actions in ``[-1, 1]`` for a batch of observations (under inference mode)."""
        raise NotImplementedError

    def policy_action(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        raise NotImplementedError

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One gradient step on a replay minibatch; returns scalars (tensors or numbers) to log,
        ``loss`` among them -- converted to floats once per iteration, not per gradient step."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by trainable name (``[optim.NAME]``)."""
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    # -- shared ---------------------------------------------------------------------------------
    def mlp(self, n: int, sizes: list[int]) -> StackedMLP:
        """``n`` stacked MLPs with the configured activation, on the agent's device."""
        return StackedMLP(n, sizes, self.cfg.activation).to(self.device)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return encode_obs(obs, self.spaces.n_obs)

    def to_env(self, a: np.ndarray) -> np.ndarray:
        """[-1, 1] -> [low, high] (SB3's ``unscale_action``)."""
        return a * self.act_half + self.act_mid

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool) -> np.ndarray:
        return self.to_env(self.policy_action(self.encode(obs), deterministic).cpu().numpy())

    def random_actions(self) -> np.ndarray:
        """Warm-up actions: uniform over the Box (SB3 samples ``action_space`` and rescales)."""
        return self.rng.uniform(-1.0, 1.0, (self.cfg.n_envs, *self.spaces.act_shape)).astype(np.float32)

    def collect(self) -> int:
        """``train_freq`` steps of every env copy into the replay buffer; returns transitions added."""
        cfg = self.cfg
        obs = self.start()
        for _ in range(cfg.train_freq):
            if self.num_steps < cfg.learning_starts:
                a = self.random_actions()
            else:
                with torch.inference_mode():
                    a = self.explore(self.encode(self.tensor(obs)))
            next_obs, rew, term, _, info = self.env_step(self.to_env(a))
            stored = next_obs
            if info["final_obs"]:  # s' of an ended episode is its last observation, not the reset one
                stored = next_obs.copy()
                for i, o in info["final_obs"].items():
                    stored[i] = o
            self.buffer.add(obs, a, rew, stored, term)
            obs = next_obs
        return cfg.train_freq * cfg.n_envs

    def iteration(self) -> dict[str, Any]:
        cfg = self.cfg
        added = self.collect()
        if self.num_steps <= cfg.learning_starts:
            return {}
        for name, opt in self.optimizers().items():
            self.set_lr(opt, self.current_lr(name))
        n_updates = cfg.gradient_steps if cfg.gradient_steps >= 0 else added
        stats: dict[str, Any] = {}
        for _ in range(n_updates):
            stats = self.update(self.buffer.sample(cfg.batch_size, self.rng, self.device))
            self.num_updates += 1
        return {k: float(v) for k, v in stats.items()}

    def train_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(),
                "optimizers": {k: opt.state_dict() for k, opt in self.optimizers().items()}}

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        for k, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][k])
