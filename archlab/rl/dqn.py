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

Speed (the gradient steps dominate; 128 of them per 256 env steps with rl-zoo's CartPole settings,
each nearly all matrix products at a batch of 64):

- all ``gradient_steps`` minibatches of a phase are sampled at once, and, since the target network
  is fixed during the phase, one forward pass over the distinct transitions drawn gives every target;
- for ReLU and tanh networks the gradient step's forward and backward passes are written by hand
  (:meth:`QNetwork.backward_huber`, checked against autograd in the tests): the same matrix products
  without autograd's per-node overhead;
- the parameters are views into one flat tensor (:class:`~archlab.rl.fast.FlatParams`), so
  clipping the gradient norm and Adam (``torch.optim.Adam``'s fused kernel) are one operation each;
- no ``.item()`` in the loop: losses are summed as a tensor and read once per phase;
- the training envs' greedy actions come from a NumPy forward pass over views of the same weights.

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
from .fast import FlatParams
from .networks import activation as activation_cls
from .networks import encode_obs, mlp


@dataclasses.dataclass
class DQNConfig(AgentConfig):
    """DQN hyperparameters; defaults are Stable-Baselines3's."""

    learning_rate: float = 1e-4
    """Adam step size."""
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
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")


class QNetwork(nn.Module):
    """``Q(s, .)``: an MLP from the (one-hot, for discrete observation spaces) observation to one
    value per action, ``[B, *obs_shape] -> [B, n_actions]``. PyTorch's default initialization, as SB3.

    Dueling: a shared body ``obs -> net_arch`` and one linear head producing ``[V | A]``, combined
    as ``Q = V + A - mean(A)`` (Wang et al. 2016, eq. 9; subtracting the mean makes V and A identifiable).

    For ReLU and tanh, :meth:`forward_train` and :meth:`backward_huber` do the training step's
    forward and backward pass by hand: the same matrix products as autograd, without its
    per-node bookkeeping, which costs ~20% of a gradient step on networks this small."""

    MANUAL_ACTIVATIONS = ("relu", "tanh")

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
        # The linear layers in order (an activation follows each but the last); a plain list, so
        # they are not registered twice.
        self.layers = [m for m in self.modules() if isinstance(m, nn.Linear)]

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

    # -- the hand-written training pass (ReLU / tanh) -----------------------------------------------
    @torch.no_grad()
    def forward_train(self, obs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``Q(obs) [R, A]`` and the input of every linear layer, kept for :meth:`backward_huber`."""
        x, inputs = self.encode(obs), []
        layers = self.layers
        for i, lin in enumerate(layers):
            inputs.append(x)
            x = torch.addmm(lin.bias, x, lin.weight.t())  # z = x W^T + b
            if i < len(layers) - 1:
                x = x.relu_() if self.activation == "relu" else x.tanh_()  # h = act(z)
        return self.combine(x), inputs

    @torch.no_grad()
    def backward_huber(self, q: torch.Tensor, inputs: list[torch.Tensor], actions: torch.Tensor,
                       y: torch.Tensor) -> torch.Tensor:
        """``loss = mean_i smooth_l1(Q(s_i, a_i) - y_i)`` over the first ``B = len(y)`` rows of a
        :meth:`forward_train` pass; writes d loss / d theta into the parameters' ``.grad``
        (overwriting it) and returns the loss. Shapes: q ``[R >= B, A]``, actions ``[B, 1]``, y ``[B]``.

            d loss / d Q(s_i, a_i) = clamp(Q(s_i, a_i) - y_i, -1, 1) / B        (Huber, delta 1)
            layer z = x W^T + b:  dW = dz^T x,  db = sum_i dz,  dx = dz W
            activation h = act(z): dz = dh * act'(z),  relu' = [h > 0] = sign(h),  tanh' = 1 - h^2
        """
        B = len(y)
        q_sa = q[:B].gather(1, actions).squeeze(1)
        loss = F.smooth_l1_loss(q_sa, y)
        g = (q_sa - y).clamp_(-1.0, 1.0).div_(B).unsqueeze(1)  # [B, 1]
        dq = torch.zeros_like(q[:B]).scatter_(1, actions, g)  # [B, A]: one non-zero per row
        # Dueling: dV = sum_a dQ = g, dA = dQ - mean_a dQ = dQ - g / A.
        dz = torch.cat([g, dq - g / dq.shape[1]], 1) if self.dueling else dq
        layers = self.layers
        for i in reversed(range(len(layers))):
            lin, x = layers[i], inputs[i][:B]
            if x.shape[1] < 16:  # MKL is slow on a row-major right operand this narrow: (x^T dz)^T
                lin.weight.grad.copy_(torch.mm(x.t(), dz).t())
            else:
                torch.mm(dz.t(), x, out=lin.weight.grad)
            torch.sum(dz, 0, out=lin.bias.grad)
            if i > 0:  # x is the previous layer's activation h
                dz = dz @ lin.weight
                # relu' = sign(h), as h = relu(z) >= 0 (a float multiply is ~5x faster than a bool mask)
                dz.mul_(x.sign()) if self.activation == "relu" else dz.mul_(1.0 - x * x)
        return loss


# Activations for the NumPy copy of the network that picks the training actions (in place).
_NUMPY_ACT = {"relu": lambda x: np.maximum(x, 0, out=x), "tanh": lambda x: np.tanh(x, out=x)}


class DQN(Agent):
    """Deep Q-Network with Double DQN and dueling options; see the module docstring."""

    algo = "dqn"
    Config = DQNConfig
    cfg: DQNConfig

    def build(self) -> None:
        cfg, spaces = self.cfg, self.spaces
        if not spaces.discrete:
            raise ArchlabError(f"dqn needs a discrete action space; {self.env_id} has a Box action space")
        # Built on the target device before FlatParams makes the parameters views of one buffer.
        self.q = QNetwork(spaces.obs_dim, spaces.n_obs, spaces.n_actions, cfg.net_arch, cfg.activation,
                          cfg.dueling).to(self.device)
        self.q_target = copy.deepcopy(self.q)
        self.q_target.requires_grad_(False)
        self.flat = FlatParams([self.q])
        self.target_flat = FlatParams([self.q_target])  # the soft update is then one lerp_
        self.target_synced = -1  # num_updates when the target was last copied (-1: not yet)
        self.optimizer = torch.optim.Adam([self.flat.param], lr=cfg.learning_rate,
                                          fused=self.device.type in ("cpu", "cuda"))
        # The training envs' greedy actions come from NumPy views of the same weights: a 1-row forward
        # pass is ~10 tiny ops, each several times cheaper in NumPy than in torch. Adam and
        # load_state_dict update the flat parameter in place, so the views stay current.
        self.np_act = _NUMPY_ACT.get(cfg.activation) if self.device.type == "cpu" else None
        self.np_layers = [(lin.weight.detach().numpy().T, lin.bias.detach().numpy())
                          for lin in self.q.layers] if self.np_act else []
        self.manual = cfg.activation in QNetwork.MANUAL_ACTIVATIONS
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

    def greedy_numpy(self, obs: np.ndarray) -> np.ndarray:
        """:meth:`greedy` on NumPy views of the weights (the training envs' actions)."""
        if self.np_act is None:
            return self.greedy(self.tensor(obs))
        (w, b), *rest = self.np_layers
        # A one-hot observation times W^T is a row of W^T.
        x = w[obs] + b if self.spaces.n_obs else obs.reshape(len(obs), -1) @ w + b
        for w, b in rest:
            x = self.np_act(x) @ w + b
        # Dueling: argmax_a Q = argmax_a A, since V(s) and mean_a A(s, a) are the same for every a.
        return (x[:, 1:] if self.cfg.dueling else x).argmax(1)

    def explore(self, obs: np.ndarray, eps: float) -> np.ndarray:
        """Epsilon-greedy actions for the training envs (a coin per env copy); the network runs only
        when some copy acts greedily."""
        n, n_actions = len(obs), self.spaces.n_actions
        random = self.rng.random(n) < eps
        if random.all():
            return self.rng.integers(0, n_actions, n)
        actions = self.greedy_numpy(obs)
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
        """theta' <- (1 - tau) theta' + tau theta (tau = 1: a copy, skipped while nothing changed)."""
        with torch.no_grad():
            if self.cfg.tau < 1.0:
                self.target_flat.param.lerp_(self.flat.param, self.cfg.tau)
            elif self.target_synced != self.num_updates:
                self.target_flat.param.copy_(self.flat.param)
                self.target_synced = self.num_updates

    def train(self, steps: int) -> float:
        """``steps`` gradient steps on minibatches from the replay buffer; returns the mean loss."""
        cfg, B, buf = self.cfg, self.cfg.batch_size, self.buffer
        self.set_lr(self.optimizer, self.current_lr())
        # Every minibatch of the phase at once (the same draws as `steps` calls of buffer.sample):
        # [steps * B] transitions -> [steps, B, ...].
        idx = self.rng.integers(0, len(buf), steps * B)
        obs = self.tensor(buf.obs[idx]).view(steps, B, *self.spaces.obs_shape)
        actions = self.tensor(buf.actions[idx]).view(steps, B, 1)
        rewards = self.tensor(buf.rewards[idx]).view(steps, B)
        not_done = self.tensor(1.0 - buf.terminated[idx]).view(steps, B)
        # The target network is fixed during the phase, so one forward pass over the distinct
        # transitions drawn gives every target (early on, with a small buffer, far fewer than steps * B).
        uniq, inverse = np.unique(idx, return_inverse=True)
        inverse = self.tensor(inverse)
        with torch.no_grad():
            next_q = self.q_target(self.tensor(buf.next_obs[uniq]))  # [U, A]
            if not cfg.double:
                y = rewards + cfg.gamma * not_done * next_q.amax(1)[inverse].view(steps, B)  # [steps, B]
            else:
                next_q = next_q[inverse].view(steps, B, -1)  # [steps, B, A]
                # The online network changes every step; it evaluates s and s' in one pass per step.
                both = torch.cat([obs, self.tensor(buf.next_obs[idx]).view_as(obs)], 1)  # [steps, 2B, ...]
        total = torch.zeros((), device=self.device)
        for g in range(steps):
            x = both[g] if cfg.double else obs[g]
            if self.manual:
                q, inputs = self.q.forward_train(x)
            else:
                q = self.q(x)
            if cfg.double:  # the online network picks a' = argmax_a' Q(s', a'), the target values it
                with torch.no_grad():
                    a_next = q[B:].argmax(1, keepdim=True)
                    y_g = rewards[g] + cfg.gamma * not_done[g] * next_q[g].gather(1, a_next).squeeze(1)
            else:
                y_g = y[g]
            if self.manual:
                loss = self.q.backward_huber(q, inputs, actions[g], y_g)
            else:
                loss = F.smooth_l1_loss(q[:B].gather(1, actions[g]).squeeze(1), y_g)
                self.flat.zero_grad()
                loss.backward()
            self.flat.clip_grad_norm(cfg.max_grad_norm)
            self.optimizer.step()
            total += loss.detach()
        self.num_updates += steps
        return float(total) / steps

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
