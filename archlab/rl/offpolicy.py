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

Speed. With SAC's defaults every env step costs a gradient step of three 256x256 MLPs on a batch of
256: about 16 matrix products of 256^3 multiply-adds, which at one CPU thread take ~5 ms and are the
floor. Everything else is overhead to remove:

- the two critics are one :class:`StackedMLP` (weights ``[2, out, in]``): one ``baddbmm`` per layer;
- the networks' backward passes are written by hand (:meth:`StackedMLP.backward_run`) into
  preallocated buffers, weight gradients straight into ``.grad``: no autograd graph, no fresh
  256x256 activations (page faults), no gradient accumulation; the actor's loss differentiates
  through the critics without computing their weight gradients, which would be thrown away;
- each network's parameters are views of one flat tensor, so an Adam step (``torch.optim.Adam``'s
  fused kernel) and a Polyak update are one kernel each;
- small-output products are oriented for MKL's fast paths (:func:`_bmm`);
- the per-update scalars stay tensors until the iteration ends (no ``.item()`` per step).
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
from .fast import FlatParams
from .networks import encode_obs

# ------------------------------------------------------------------------------ networks
_ACT_FWD = {"relu": torch.relu_, "tanh": torch.tanh_}
# d act / d pre-activation from the activation's *output* h, applied to g in place:
# relu: g * [h > 0];  tanh: g * (1 - h^2)
_ACT_BWD = {"relu": lambda g, h: torch.ops.aten.threshold_backward.grad_input(g, h, 0.0, grad_input=g),
            "tanh": lambda g, h: torch.ops.aten.tanh_backward.grad_input(g, h, grad_input=g)}


def _bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Stacked matrix product ``a @ b`` (``[n, M, K] @ [n, K, N]``). MKL's sgemm is several times
    slower when ``b`` is row-major with only a few columns (a first layer's 3 or 4 inputs), so that
    case is computed as ``(b^T a^T)^T``, where the same operand is column-major."""
    if b.shape[-1] < 16 and b.stride(-1) == 1:
        r = torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2)
        return r if out is None else out.copy_(r)
    return torch.bmm(a, b, out=out)


class StackedMLP(nn.Module):
    """``n`` independent MLPs of one shape ``sizes[0] -> ... -> sizes[-1]`` evaluated together:
    layer ``l`` of every network is a slice of one stacked weight ``[n, out, in]`` (``nn.Linear``'s
    layout), so a pass is one ``baddbmm`` per layer however many networks there are. SAC's and
    TD3's twin critics are ``n = 2`` (``Q_i(s, a) = MLP_i([s, a])``), their actors ``n = 1``.
    Initialized as ``nn.Linear`` (U(+-1/sqrt(fan_in)) for weights and biases), as SB3's networks.

    Two ways to evaluate it:

    - ``forward(x)``: ordinary autograd ops in float32 (acting, tests, anything);
    - ``run(x)`` + ``backward_run(g)``: the training path, with a hand-written backward pass
      (``h_l = act(h_{l-1} W_l^T + b_l)``, so ``dW_l = g_l^T h_{l-1}``, ``db_l = sum_b g_l``,
      ``g_{l-1} = (g_l W_l) * act'(h_{l-1})``) in preallocated activation and gradient buffers,
      writing the weight gradients straight into ``.grad``. For networks this small the autograd
      graph, fresh 256x256 activations (page faults, memsets) and gradient accumulation cost as
      much as the matrix products; this path costs little more than them. ``run`` returns a buffer
      that the next ``run`` overwrites; ``backward_run`` differentiates the last ``run``.

    ``hidden_dtype=torch.bfloat16``: on the training path, layers from one hidden width to another
    (the 256x256 products that are nearly all the arithmetic) take bfloat16 copies of their inputs
    and weights (products accumulate in float32 inside the kernel); the first and last layers,
    the parameters, their gradients and the optimizer stay float32 (mixed precision).

    Shapes: x ``[B, sizes[0]]`` -> ``[n, B, sizes[-1]]``."""

    def __init__(self, n: int, sizes: list[int], activation: str = "relu",
                 hidden_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if activation not in _ACT_FWD:
            raise ArchlabError(f"activation {activation!r}: SAC and TD3 networks support {', '.join(sorted(_ACT_FWD))}")
        self.n, self.sizes, self.activation = n, list(sizes), activation
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_out, fan_in).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))
        n_layers = len(sizes) - 1
        self.dtypes = [hidden_dtype if 0 < i < n_layers - 1 else torch.float32 for i in range(n_layers)]
        """The dtype each layer computes in on the training path."""
        self._work: dict[tuple[int, int], dict[str, list[Any]]] = {}
        self._last: tuple[torch.Tensor, int] | None = None
        self._view_cache: dict[int, tuple[Any, dict[str, list[torch.Tensor]]]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.n, *x.shape)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w.transpose(1, 2))
            if i < last:
                h = torch.relu(h) if self.activation == "relu" else torch.tanh(h)
        return h

    def _workspace(self, n: int, batch: int) -> dict[str, list[Any]]:
        """Buffers of one batch shape: every layer's output (``outs``, in the layer's dtype), its
        input cast to the layer's dtype where the previous layer's differs (``ins``), hidden-layer
        gradients (``grads``), and low-precision scratch for products that are cast afterwards."""
        key = (n, batch)
        if key not in self._work:
            dev, dt, sizes = self.weights[0].device, self.dtypes, self.sizes

            def buf(width: int, dtype: torch.dtype) -> torch.Tensor:
                return torch.empty(n, batch, width, device=dev, dtype=dtype)

            L = len(dt)
            mixed = [0 < i and dt[i] != dt[i - 1] for i in range(L)]
            self._work[key] = {
                "outs": [buf(sizes[i + 1], dt[i]) for i in range(L)],
                "ins": [buf(sizes[i], dt[i]) if mixed[i] else None for i in range(L)],
                "grads": [buf(sizes[i + 1], dt[i]) for i in range(L - 1)],
                "gmm": [buf(sizes[i], dt[i]) if mixed[i] else None for i in range(L)],
                "wgrad": [torch.empty(n, sizes[i + 1], sizes[i], device=dev, dtype=dt[i]) if dt[i] != torch.float32
                          else None for i in range(L)],
            }
        return self._work[key]

    def _views(self, n: int) -> dict[str, list[torch.Tensor]]:
        """Per-layer views of the first ``n`` networks' weights ``W`` and ``W^T`` and biases (in each
        layer's dtype: low-precision copies refreshed by :meth:`run`) and of their gradients, made
        once: slicing and transposing a dozen tensors per pass costs more than the small layers'
        arithmetic. Remade when the parameters or gradients move to new storage (``FlatParams``,
        ``.to(device)``)."""
        w0 = self.weights[0]
        key = (w0.data_ptr(), 0 if w0.grad is None else w0.grad.data_ptr())
        cached = self._view_cache.get(n)
        if cached is None or cached[0] != key:
            low = [i for i, d in enumerate(self.dtypes) if d != torch.float32]
            copies = {i: (self.weights[i].detach().to(self.dtypes[i]), self.biases[i].detach().to(self.dtypes[i]))
                      for i in low}
            ws = [copies[i][0][:n] if i in copies else w[:n] for i, w in enumerate(self.weights)]
            v = {"w": ws, "wT": [w.transpose(1, 2) for w in ws],
                 "b": [copies[i][1][:n] if i in copies else b[:n] for i, b in enumerate(self.biases)],
                 "gw": [w.grad[:n] for w in self.weights] if w0.grad is not None else [],
                 "gb": [b.grad[:n] for b in self.biases] if w0.grad is not None else [],
                 "low": [(self.weights[i], self.biases[i], *copies[i]) for i in low]}
            cached = (key, v)
            self._view_cache[n] = cached
        return cached[1]

    @torch.no_grad()
    def run(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """The first ``n`` networks (all by default) on ``x [B, in]``, keeping the activations
        for :meth:`backward_run`. Returns ``[n, B, out]`` (a buffer: valid until the next run)."""
        n = self.n if n is None else n
        work, v = self._workspace(n, x.shape[0]), self._views(n)
        for w, b, w_low, b_low in v["low"]:  # the current weights, in low precision
            w_low.copy_(w)
            b_low.copy_(b)
        outs, ins = work["outs"], work["ins"]
        h = x.unsqueeze(0).expand(n, *x.shape)
        last = len(outs) - 1
        act = _ACT_FWD[self.activation]
        for i in range(last + 1):
            if ins[i] is not None:  # a layer of another dtype than the previous one
                h = ins[i].copy_(h)
            torch.baddbmm(v["b"][i], h, v["wT"][i], out=outs[i])  # h_l = h_{l-1} W_l^T + b_l
            if i < last:
                act(outs[i])
            h = outs[i]
        self._last = (x, n)
        return h

    @torch.no_grad()
    def backward_run(self, grad_out: torch.Tensor, weight_grads: bool = True,
                     input_grad: bool = False) -> torch.Tensor | None:
        """Backpropagate ``dL/d out [n, B, out]`` through the last :meth:`run`: with
        ``weight_grads``, *set* ``.grad`` of the networks used (no accumulation: one backward
        per optimizer step); with ``input_grad``, return ``dL/dx [B, in]`` (summed over networks)."""
        x, n = self._last
        if weight_grads and self.weights[0].grad is None:
            for p in self.parameters():
                p.grad = torch.zeros_like(p)
        work, v = self._workspace(n, x.shape[0]), self._views(n)
        outs, ins, grads = work["outs"], work["ins"], work["grads"]
        act_bwd = _ACT_BWD[self.activation]
        g = grad_out
        for i in reversed(range(len(outs))):
            if weight_grads:
                h_in = x.unsqueeze(0).expand(n, *x.shape) if i == 0 else ins[i] if ins[i] is not None else outs[i - 1]
                if work["wgrad"][i] is None:
                    _bmm(g.transpose(1, 2), h_in, out=v["gw"][i])  # dL/dW_l = g_l^T h_{l-1}
                else:  # a low-precision product, stored in the float32 gradient
                    v["gw"][i].copy_(_bmm(g.transpose(1, 2), h_in, out=work["wgrad"][i]))
                torch.sum(g, 1, keepdim=True, dtype=torch.float32, out=v["gb"][i])  # dL/db_l = sum_b g_l
            if i > 0:
                if work["gmm"][i] is None:
                    _bmm(g, v["w"][i], out=grads[i - 1])  # dL/dh_{l-1} = g_l W_l ...
                else:
                    grads[i - 1].copy_(_bmm(g, v["w"][i], out=work["gmm"][i]))
                g = act_bwd(grads[i - 1], outs[i - 1])  # ... * act'(pre-activation)
        if input_grad:
            return _bmm(g, v["w"][0]).sum(0)
        return None


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam`` with its fused kernel where one exists (CPU, CUDA): on a flat parameter
    a step is then one kernel."""
    return torch.optim.Adam(params, lr=lr, fused=params[0].device.type in ("cpu", "cuda"))


class Flat:
    """A module's parameters as views of one flat tensor (and their gradients of another), with
    its Adam (:func:`adam`) if it is trained (targets are not)."""

    def __init__(self, module: nn.Module, lr: float | None = None) -> None:
        self.module = module
        self.flat = FlatParams([module])
        self.param = self.flat.param
        self.opt = adam([self.param], lr) if lr is not None else None

    def polyak_from(self, source: Flat, tau: float) -> None:
        """theta_target <- (1 - tau) theta_target + tau theta (one ``lerp_`` over every parameter)."""
        with torch.no_grad():
            self.param.lerp_(source.param, tau)


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
    """dtype of the hidden-to-hidden matrix products of training: ``float32``, or ``bfloat16``
    (mixed precision: those products about 2x faster on CPUs with AVX512-BF16 or AMX; parameters,
    gradients, optimizer, first and last layers stay float32)."""

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

    def optimizers(self) -> dict[str, torch.optim.Adam]:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def mlp(self, n: int, sizes: list[int]) -> StackedMLP:
        """``n`` stacked MLPs with the configured activation and matmul dtype, on the agent's device."""
        dtype = torch.bfloat16 if self.cfg.matmul_dtype == "bfloat16" else torch.float32
        return StackedMLP(n, sizes, self.cfg.activation, dtype).to(self.device)

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
        if cfg.lr_schedule == "linear":
            lr = self.current_lr()
            for opt in self.optimizers().values():
                self.set_lr(opt, lr)
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
