"""What the on-policy algorithms (REINFORCE, A2C, A3C, PPO) share: the actor-critic network, action
sampling and log-probabilities for discrete and continuous actions, the rollout loop, and a flat
parameter buffer that makes the optimizer step and gradient clipping one operation each.

Speed: the networks are tiny (two [64, 64] MLPs), so per-operation overhead, not arithmetic, sets the
pace. Hence the rollout's policy step runs in NumPy on a fused actor+critic (``frozen_forward``), and
a gradient step skips autograd: the algorithm states its loss's gradient with respect to log pi, V and
H (a few elementwise formulas next to the loss), and :meth:`ActorCritic.set_grads` backpropagates it
through the distribution and the MLPs by hand, writing straight into the flat gradient buffer. Tests
check every hand-written gradient against autograd.

Action distributions (no ``torch.distributions`` objects: they cost more than the math here):

- Discrete: a categorical over ``logits [B, A]``.
- Box: a diagonal Gaussian ``N(mean(s), exp(log_std)^2)`` with a state-independent, learned
  ``log_std`` (Schulman et al. 2017, PPO sec. 6.1; SB3's default). Samples are unbounded; the env
  gets them clipped to ``[low, high]`` while the update uses the unclipped sample (as SB3).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Agent, AgentConfig
from .buffers import RolloutBuffer
from .env import SpaceInfo
from .networks import LOG_2PI, Tanh, encode_obs, gaussian_entropy, gaussian_log_prob, gaussian_sample, mlp
from .networks import activation as activation_cls

SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------ one-node MLPs
# For networks this small, autograd's per-node bookkeeping costs as much as the math: an MLP as ONE
# node with a hand-written backward (textbook backprop). ActorCritic.set_grads uses the same two
# functions without autograd at all; _MLPFunction serves forward() when a graph is wanted (A3C, the
# autograd fallback).
#
#     forward:   h_0 = x,   h_i = act(h_{i-1} W_i^T + b_i),   y = h_{n-1} W_n^T + b_n
#     backward:  g_n = dL/dy;   dL/dW_i = g_i^T h_{i-1};   dL/db_i = sum_batch g_i;
#                g_{i-1} = act'(.) * (g_i W_i),   with tanh' = 1 - h^2 and relu' = [h > 0] from the output h.

def _mlp_forward(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 act: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The output and the inputs of every layer (``[x, h_1, ..., h_{n-1}]``, kept for the backward)."""
    hs = [x]
    h = x
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = torch.addmm(b, h, w.t())
        if i < len(weights) - 1:
            h = act(h)
            hs.append(h)
    return h, hs


def _mlp_backward(g: torch.Tensor, hs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], relu: bool,
                  w_out: Sequence[torch.Tensor] | None = None, b_out: Sequence[torch.Tensor] | None = None,
                  input_grad: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    """Gradients of the weights and biases (written into ``w_out`` / ``b_out`` when given, e.g. the
    parameters' ``.grad``) and of the input (when ``input_grad``), from ``g = dL/dy``."""
    n = len(weights)
    gw: list[torch.Tensor] = [torch.empty(0)] * n
    gb: list[torch.Tensor] = [torch.empty(0)] * n
    for i in reversed(range(n)):
        h = hs[i]
        # dL/dW_i = g_i^T h_{i-1}, computed so the product comes out wide ([4, 64] rather than
        # [64, 4]): MKL is several times faster on that orientation for small matrices.
        wide = g.shape[1] <= h.shape[1]
        if w_out is None:
            gw[i] = g.t() @ h if wide else (h.t() @ g).t()
            gb[i] = g.sum(0)
        else:
            if wide:
                torch.mm(g.t(), h, out=w_out[i])
            else:
                w_out[i].copy_((h.t() @ g).t())
            torch.sum(g, 0, out=b_out[i])
        if i > 0:
            g = g @ weights[i]
            g = torch.ops.aten.threshold_backward(g, h, 0) if relu else torch.ops.aten.tanh_backward(g, h)
    return gw, gb, (g @ weights[0] if input_grad else None)


class _MLPFunction(torch.autograd.Function):
    """One MLP ``Linear -> act -> ... -> Linear`` as one autograd node (see above)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, act: nn.Module, *params: torch.Tensor) -> torch.Tensor:
        weights = params[0::2]
        y, hs = _mlp_forward(x, weights, params[1::2], act)
        ctx.relu = isinstance(act, nn.ReLU)
        ctx.save_for_backward(*hs, *weights)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        n = len(saved) // 2
        gw, gb, gx = _mlp_backward(g, saved[:n], saved[n:], ctx.relu, input_grad=ctx.needs_input_grad[0])
        return (gx, None, *(t for pair in zip(gw, gb, strict=True) for t in pair))


class FusedMLP:
    """Calls an :func:`~archlab.rl.networks.mlp` ``Sequential`` through :class:`_MLPFunction` when
    gradients are needed and its activation is tanh or ReLU, and as the plain ``Sequential`` otherwise.

    Holds the parameter list, built once: looking the layers up on every call costs more than the math
    of the smallest layers."""

    def __init__(self, net: nn.Sequential) -> None:
        layers = list(net)
        self.net = net
        self.act = layers[1] if len(layers) > 1 else None
        self.params = [t for layer in layers[0::2] for t in (layer.weight, layer.bias)]
        self.fusable = isinstance(self.act, (Tanh, nn.ReLU))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fusable and torch.is_grad_enabled():
            return _MLPFunction.apply(x, self.act, *self.params)
        return self.net(x)


def mlp_forward(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` through :class:`FusedMLP` (one autograd node when it can)."""
    return FusedMLP(net)(x)


@dataclasses.dataclass
class Evaluation:
    """What :meth:`ActorCritic.evaluate` returns: per-sample ``logp``, ``values``, ``entropy``
    (detached, ``[B]``), and what :meth:`ActorCritic.set_grads` needs to backpropagate."""

    logp: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor | None
    hidden: tuple | None = None
    """Layer inputs and distribution terms of the hand-written backward."""
    graph: tuple | None = None
    """The autograd path's (logp, values, entropy) with their graph."""


def _set_grad(p: torch.Tensor, grad: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = grad.clone()
    else:
        p.grad.copy_(grad)


class ActorCritic(nn.Module):
    """Policy ``pi(a|s)`` and value ``V(s)`` as MLPs over the (one-hot encoded, for discrete
    observation spaces) observation.

    ``shared=False`` (SB3's default for MLPs): two separate networks ``obs -> net_arch -> logits``
    and ``obs -> net_arch -> 1``. ``shared=True``: one body ``obs -> net_arch`` with two linear heads.
    ``ortho_init``: orthogonal weights, zero biases, gains sqrt(2) for hidden layers, 0.01 for the
    policy head (near-uniform initial policy) and 1 for the value head (OpenAI baselines / SB3).

    ``forward(obs) -> (pi, value)``: ``pi`` is the logits ``[B, n_actions]`` (discrete) or the
    Gaussian mean ``[B, act_dim]`` (Box; the std is ``exp(self.log_std)``); ``value`` is ``[B]``.
    """

    def __init__(self, spaces: SpaceInfo, net_arch: Sequence[int] = (64, 64), activation: str = "tanh",
                 ortho_init: bool = True, log_std_init: float = 0.0, shared: bool = False) -> None:
        super().__init__()
        self.discrete, self.n_obs, self.shared = spaces.discrete, spaces.n_obs, shared
        self.act_shape = spaces.act_shape
        obs_dim, out_dim, arch = spaces.obs_dim, spaces.act_dim, list(net_arch)
        hidden, pi_gain, vf_gain = (SQRT2, 0.01, 1.0) if ortho_init else (None, None, None)
        if shared:
            body = mlp([obs_dim, *arch], activation, out_gain=hidden, hidden_gain=hidden) if arch else nn.Identity()
            self.body = nn.Sequential(*body, activation_cls(activation)()) if arch else body
            width = arch[-1] if arch else obs_dim
            self.pi_net = mlp([width, out_dim], out_gain=pi_gain)
            self.vf_net = mlp([width, 1], out_gain=vf_gain)
        else:
            self.pi_net = mlp([obs_dim, *arch, out_dim], activation, out_gain=pi_gain, hidden_gain=hidden)
            self.vf_net = mlp([obs_dim, *arch, 1], activation, out_gain=vf_gain, hidden_gain=hidden)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((out_dim,), float(log_std_init)))
        self.act = activation_cls(activation)()
        # Not submodules (plain attributes): the parameter lists of the two networks for the fast path.
        self._pi = FusedMLP(self.pi_net)
        self._vf = FusedMLP(self.vf_net)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        x = encode_obs(obs, self.n_obs)
        return x if x.dim() == 2 else x.flatten(1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encode(obs)
        if self.shared:
            x = self.body(x)
        return self._pi(x), self._vf(x).squeeze(-1)

    # -- training without autograd -------------------------------------------------------------------
    # Every loss of the actor-critic algorithms here is a function of log pi(a_t|s_t), V(s_t) and
    # H[pi(.|s_t)] only. ``evaluate`` computes those; the algorithm computes its loss AND the loss's
    # gradient with respect to them (a few elementwise formulas); ``set_grads`` backpropagates that
    # through the distribution and the two MLPs by hand. For these tiny networks this halves the
    # gradient step's overhead compared with recording ~30 autograd nodes. Configurations without a
    # hand-written path (shared body, activations other than tanh/ReLU) go through autograd.

    @property
    def manual_backward(self) -> bool:
        return not self.shared and self._pi.fusable and self._vf.fusable

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor, entropy: bool = True) -> Evaluation:
        """log pi(a|s), V(s) and (when asked for) H[pi(.|s)] of a batch, all ``[B]`` and detached."""
        if not self.manual_backward:
            pi, values = self(obs)
            logp, ent = self.log_prob_entropy(pi, actions, entropy)
            return Evaluation(logp.detach(), values.detach(), None if ent is None else ent.detach(),
                              graph=(logp, values, ent))
        with torch.no_grad():
            x = self.encode(obs)
            pi, h_pi = _mlp_forward(x, self._pi.params[0::2], self._pi.params[1::2], self._pi.act)
            v, h_vf = _mlp_forward(x, self._vf.params[0::2], self._vf.params[1::2], self._vf.act)
            if self.discrete:
                a = actions.long().unsqueeze(-1)
                logp_all = torch.log_softmax(pi, -1)
                logp = logp_all.gather(-1, a).squeeze(-1)
                ent = -(logp_all.exp() * logp_all).sum(-1) if entropy else None
                dist = (a, logp_all, ent)
            else:
                z = (actions - pi) * torch.exp(-self.log_std)                     # (a - mu) / sigma
                logp = (-0.5 * z.square() - self.log_std - 0.5 * LOG_2PI).sum(-1)
                ent = gaussian_entropy(self.log_std).expand(len(z)) if entropy else None
                dist = (z,)
        return Evaluation(logp, v.squeeze(-1), ent, hidden=(x, h_pi, h_vf, dist))

    def set_grads(self, ev: Evaluation, d_logp: torch.Tensor, d_values: torch.Tensor | None,
                  d_entropy: float = 0.0) -> None:
        """Set every parameter's ``.grad`` to dL/dtheta, given dL/dlog pi ``[B]``, dL/dV ``[B]``
        (``None``: the loss ignores V) and dL/dH, the same for every sample (the losses use mean H).

        Categorical, logits z, p = softmax(z):  d log p_a / dz = onehot(a) - p;
                                                 dH / dz_k = -p_k (log p_k + H).
        Gaussian, z = (a - mu) / sigma:          d log pi / d mu = z / sigma;  d log pi / d log sigma = z^2 - 1;
                                                 dH / d log sigma = 1."""
        if ev.hidden is None:  # the autograd path
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.zero_()
            logp, values, ent = ev.graph
            surrogate = (logp * d_logp).sum()
            if d_values is not None:
                surrogate = surrogate + (values * d_values).sum()
            if d_entropy and ent is not None:
                surrogate = surrogate + d_entropy * ent.sum()
            surrogate.backward()
            return
        x, h_pi, h_vf, dist = ev.hidden
        with torch.no_grad():
            if self.discrete:
                a, logp_all, ent = dist
                p = logp_all.exp()
                d_pi = p * -d_logp.unsqueeze(-1)
                d_pi.scatter_add_(-1, a, d_logp.unsqueeze(-1))
                if d_entropy:
                    h = ent if ent is not None else -(p * logp_all).sum(-1)
                    d_pi -= d_entropy * p * (logp_all + h.unsqueeze(-1))
            else:
                (z,) = dist
                d_pi = d_logp.unsqueeze(-1) * z * torch.exp(-self.log_std)
                d_log_std = (d_logp.unsqueeze(-1) * (z.square() - 1.0)).sum(0) + d_entropy * len(z)
                _set_grad(self.log_std, d_log_std)
            self._backward_mlp(self._pi, d_pi, h_pi)
            if d_values is None:
                for p in self._vf.params:
                    _set_grad(p, torch.zeros_like(p))
            else:
                self._backward_mlp(self._vf, d_values.unsqueeze(-1), h_vf)

    @staticmethod
    def _backward_mlp(net: FusedMLP, g: torch.Tensor, hs: list[torch.Tensor]) -> None:
        params = net.params
        if all(p.grad is not None for p in params):  # write straight into the (flat) gradient buffers
            _mlp_backward(g, hs, params[0::2], isinstance(net.act, nn.ReLU),
                          [p.grad for p in params[0::2]], [p.grad for p in params[1::2]])
            return
        gw, gb, _ = _mlp_backward(g, hs, params[0::2], isinstance(net.act, nn.ReLU))
        for p, grad in zip(params, (t for pair in zip(gw, gb, strict=True) for t in pair), strict=True):
            _set_grad(p, grad)

    @torch.no_grad()
    def frozen_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``forward`` for a stretch where the weights do not change (a rollout), in half the operations.

        Separate actor and critic become one MLP whose output is ``[pi | V]``: the first layers
        concatenated (both read the observation), the later ones block-diagonal. Built once per
        rollout; the per-step forward is then ``len(net_arch) + 1`` matmuls instead of twice that."""
        if self.shared:
            return self.forward
        pi = [m for m in self.pi_net if isinstance(m, nn.Linear)]
        vf = [m for m in self.vf_net if isinstance(m, nn.Linear)]
        layers = [(torch.cat([pi[0].weight, vf[0].weight]).t(), torch.cat([pi[0].bias, vf[0].bias]))]
        layers += [(torch.block_diag(a.weight, c.weight).t(), torch.cat([a.bias, c.bias]))
                   for a, c in zip(pi[1:], vf[1:], strict=True)]
        last = len(layers) - 1
        if layers[0][0].device.type == "cpu" and isinstance(self.act, (Tanh, nn.ReLU)):
            # On CPU the per-step batches are a few rows: NumPy's per-call cost is a fraction of
            # PyTorch's, so the step runs in NumPy on views of the fused weights.
            np_layers = [(w.numpy(), b.numpy()) for w, b in layers]
            relu = isinstance(self.act, nn.ReLU)

            def np_forward(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                x = self.encode(obs).numpy()
                for i, (w, b) in enumerate(np_layers):
                    x = x @ w
                    x += b
                    if i < last:
                        x = np.maximum(x, 0.0, out=x) if relu else np.tanh(x, out=x)
                out = torch.from_numpy(x)
                return out[:, :-1], out[:, -1]

            return np_forward

        def forward(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.encode(obs)
            for i, (w, b) in enumerate(layers):
                x = torch.addmm(b, x, w)
                if i < last:
                    x = self.act(x)
            return x[:, :-1], x[:, -1]

        return forward

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits or Gaussian mean only (acting without the critic)."""
        x = self.encode(obs)
        return self._pi(self.body(x) if self.shared else x)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.encode(obs)
        return self._vf(self.body(x) if self.shared else x).squeeze(-1)

    # -- the action distribution ----------------------------------------------------------------
    def sample(self, pi: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions ``a ~ pi(.|s)`` and ``log pi(a|s)`` (``[B]``)."""
        if self.discrete:
            # Inverse-CDF sampling: a = #{k : P(A <= k) < u}, u ~ U[0, 1) (cheaper than torch.multinomial).
            logp_all = torch.log_softmax(pi, -1)
            u = torch.rand(pi.shape[0], 1, generator=generator, device=pi.device)
            a = (logp_all.exp().cumsum(-1)[:, :-1] < u).sum(-1, keepdim=True)
            return a.squeeze(-1), logp_all.gather(-1, a).squeeze(-1)
        a = gaussian_sample(pi, self.log_std, generator)
        return a, gaussian_log_prob(pi, self.log_std, a)

    def log_prob_entropy(self, pi: torch.Tensor, actions: torch.Tensor,
                         entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``log pi(a|s)`` ``[B]`` and the entropy ``H[pi(.|s)]`` ``[B]`` (``None`` when not asked for).

        Categorical: H = -sum_a p_a log p_a. Gaussian: H = sum_i (log sigma_i + (1 + log 2 pi) / 2)."""
        if self.discrete:
            if not entropy:  # one fused node instead of log_softmax + gather
                return -F.cross_entropy(pi, actions.long(), reduction="none"), None
            logp_all = torch.log_softmax(pi, -1)
            logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            return logp, -(logp_all.exp() * logp_all).sum(-1)
        logp = gaussian_log_prob(pi, self.log_std, actions)
        ent = gaussian_entropy(self.log_std).expand(pi.shape[0]) if entropy else None
        return logp, ent

    def mode(self, pi: torch.Tensor) -> torch.Tensor:
        """The deterministic action: argmax of the logits, or the Gaussian mean."""
        return pi.argmax(-1) if self.discrete else pi


def env_actions(actions: torch.Tensor, spaces: SpaceInfo) -> np.ndarray:
    """Network actions -> what the env accepts: integer ids, or Box actions clipped to its bounds."""
    a = actions.cpu().numpy()
    if spaces.discrete:
        return a
    return np.clip(a.reshape(len(a), *spaces.act_shape), spaces.low, spaces.high)


class FlatParams:
    """Every parameter of ``modules`` as a view into one flat tensor, and every gradient into another.

    The optimizer then steps a single tensor (one fused Adam/RMSprop kernel instead of a loop over
    a dozen small tensors), ``zero_grad`` is one ``zero_()`` and the gradient norm is one norm --
    the per-tensor overhead dominates the update of networks this small. Autograd accumulates into
    the existing ``.grad`` views in place, so they must never be set to ``None``.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        params = [p for m in modules for p in m.parameters()]
        n = sum(p.numel() for p in params)
        device = params[0].device
        self.param = nn.Parameter(torch.zeros(n, device=device))
        self.param.grad = torch.zeros(n, device=device)
        i = 0
        for p in params:
            k = p.numel()
            self.param.data[i:i + k].copy_(p.data.flatten())
            p.data = self.param.data[i:i + k].view_as(p)
            p.grad = self.param.grad[i:i + k].view_as(p)
            i += k
        self.params = params

    def zero_grad(self) -> None:
        self.param.grad.zero_()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Scale the gradient to norm at most ``max_norm`` (as ``clip_grad_norm_``; no sync)."""
        norm = torch.linalg.vector_norm(self.param.grad)
        self.param.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm


def make_optimizer(name: str, flat: FlatParams, lr: float, eps: float, alpha: float = 0.99) -> torch.optim.Optimizer:
    """Adam or RMSprop (PyTorch's, as SB3 uses them) over the flat parameter."""
    fused = {"fused": True} if flat.param.device.type in ("cpu", "cuda") else {}
    if name == "adam":
        return torch.optim.Adam([flat.param], lr=lr, eps=eps, **fused)
    return torch.optim.RMSprop([flat.param], lr=lr, alpha=alpha, eps=eps, foreach=False)


@torch.inference_mode()
def collect_rollout(agent: Agent, model: ActorCritic, buffer: RolloutBuffer, gae_lambda: float) -> None:
    """Fill ``buffer`` with ``n_steps`` steps of every env copy under the current policy, then
    compute advantages (GAE) and value targets.

    Time-limit truncation: the reward of the last step gets ``+ gamma * V(final_obs)`` (the value
    the episode would have continued with), and the step counts as done -- as SB3 does."""
    gamma, spaces = agent.cfg.gamma, agent.spaces
    obs = agent.start()
    forward = model.frozen_forward()
    while not buffer.full:
        pi, value = forward(agent.tensor(obs))
        actions, logp = model.sample(pi, agent.gen)
        next_obs, rew, term, trunc, info = agent.env_step(env_actions(actions, spaces))
        truncated = trunc & ~term
        if truncated.any():
            idx = np.flatnonzero(truncated)
            final = np.stack([info["final_obs"][i] for i in idx])
            rew = rew.copy()
            rew[idx] += gamma * forward(agent.tensor(final))[1].cpu().numpy()
        buffer.add(obs, actions.cpu().numpy().reshape(buffer.actions.shape[1:]), rew, term | trunc,
                   value.cpu().numpy(), logp.cpu().numpy())
        obs = next_obs
    buffer.finish(forward(agent.tensor(obs))[1].cpu().numpy(), gamma, gae_lambda)


# ------------------------------------------------------------------------------ the agent base
@dataclasses.dataclass
class ActorCriticConfig(AgentConfig):
    """Hyperparameters of every actor-critic algorithm here (SB3's defaults)."""

    ent_coef: float = 0.0
    """Weight of the entropy bonus in the loss."""
    vf_coef: float = 0.5
    """Weight of the value loss in the loss."""
    max_grad_norm: float | None = 0.5
    """Clip the global gradient norm to this (``None``: no clipping)."""
    normalize_advantage: bool = True
    """Standardize advantages (per minibatch) before the policy loss."""
    optimizer: str = "adam"
    """``adam`` or ``rmsprop`` (PyTorch's, alpha 0.99)."""
    optimizer_eps: float = 1e-5
    """Epsilon of the optimizer's denominator (SB3 uses 1e-5 for both Adam and RMSprop)."""
    shared: bool = False
    """One MLP body with policy and value heads, instead of two separate MLPs (SB3's default)."""
    ortho_init: bool = True
    """Orthogonal initialization (gains sqrt 2 / 0.01 / 1) instead of PyTorch's default."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ent_coef < 0 or self.vf_coef < 0:
            raise ValueError(f"ent_coef and vf_coef must be >= 0, got {self.ent_coef}, {self.vf_coef}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (or None), got {self.max_grad_norm}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got {self.optimizer!r}")
        if not self.optimizer_eps > 0:
            raise ValueError(f"optimizer_eps must be > 0, got {self.optimizer_eps}")


class ActorCriticAgent(Agent):
    """The plumbing PPO, A2C and REINFORCE share: one :class:`ActorCritic` (saved as ``policy``),
    its flat parameters and optimizer, acting, and checkpoint state. Subclasses write the loss."""

    cfg: ActorCriticConfig

    def build_model(self) -> None:
        cfg = self.cfg
        # Built on the target device before FlatParams makes the parameters views of one buffer
        # (a later .to(device) would break the views).
        self.model = ActorCritic(self.spaces, cfg.net_arch, cfg.activation, cfg.ortho_init, cfg.log_std_init,
                                 cfg.shared).to(self.device)
        self.flat = FlatParams([self.model])
        self.optimizer = make_optimizer(cfg.optimizer, self.flat, cfg.learning_rate, cfg.optimizer_eps)

    def build_rollout(self) -> None:
        """The model plus a rollout buffer of ``n_steps`` per env copy (PPO, A2C); an iteration is then
        ``n_steps * n_envs`` env steps, the base class's default ``iteration_steps``."""
        self.build_model()
        s = self.spaces
        self.buffer = RolloutBuffer(self.cfg.n_steps, self.cfg.n_envs, s.obs_shape, () if s.discrete else (s.act_dim,),
                                    np.int64 if s.n_obs else np.float32)

    def gradient_step(self, ev: Evaluation, d_logp: torch.Tensor, d_values: torch.Tensor | None,
                      d_entropy: float = 0.0) -> None:
        """theta <- opt(theta, clip(dL/dtheta)) for a loss whose gradient with respect to log pi, V and H
        is given (see :meth:`ActorCritic.set_grads`): backprop, clip the global norm, step."""
        self.model.set_grads(ev, d_logp, d_values, d_entropy)
        if self.cfg.max_grad_norm is not None:
            self.flat.clip_grad_norm(self.cfg.max_grad_norm)
        self.optimizer.step()
        self.num_updates += 1

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool) -> np.ndarray:
        pi = self.model.policy(obs)
        actions = self.model.mode(pi) if deterministic else self.model.sample(pi, self.gen)[0]
        return env_actions(actions, self.spaces)

    def networks(self) -> dict[str, nn.Module]:
        return {"policy": self.model}

    def train_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
