"""The fast paths of the off-policy algorithms (DQN, SAC, TD3): the same updates as the reference
code in ``dqn.py``, ``sac.py``, ``td3.py`` and ``offpolicy.py`` (plain autograd, read those first),
with less overhead per operation. Chosen by the algorithms' ``fast`` setting (the default) and tested
equal to the reference (``tests/rl/test_fast_offpolicy.py``: same updates to float tolerance).

The gradient steps dominate these algorithms, and their networks are small (a batch of 64 through a
[256, 256] MLP for DQN; three [256, 256] MLPs on a batch of 256 per env step for SAC), so per-operation
overhead -- autograd's graph, fresh activations, per-tensor optimizer loops -- costs as much as the
matrix products. What the fast paths do instead:

- every trained network's parameters are views of one flat tensor
  (:class:`~archlab.rl.fast.FlatParams`), so clipping, the optimizer step (the engine's optimizer
  with Adam's fused kernel) and a Polyak update are one operation each;
- the backward passes are written by hand: DQN's Huber loss through its MLP (:func:`dqn_forward`,
  :func:`dqn_backward_huber`, ReLU and tanh), and SAC's and TD3's stacked MLPs
  (:class:`StackedRunner`: the twin critics as one ``baddbmm`` per layer, into preallocated buffers,
  weight gradients straight into ``.grad``; the actor's loss differentiates through the critics
  without their weight gradients) with the squashed Gaussian's gradient in closed form;
- DQN samples all ``gradient_steps`` minibatches of a phase at once and, since the target network is
  fixed during the phase, computes every target in one forward pass over the distinct transitions drawn;
  its training envs' greedy actions come from a NumPy forward pass over views of the same weights;
- SAC and TD3 can run their hidden-to-hidden products in bfloat16 (``matmul_dtype``, mixed precision);
- no ``.item()`` per gradient step: losses stay tensors until the iteration ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .fast import FlatParams
from .networks import LOG_STD_MAX, LOG_STD_MIN, mean_log_std, squashed_sample

if TYPE_CHECKING:
    from .dqn import DQN, QNetwork
    from .offpolicy import StackedMLP
    from .sac import SAC
    from .td3 import TD3


# ------------------------------------------------------------------------------ stacked MLPs by hand
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


class StackedRunner:
    """The training path of a :class:`~archlab.rl.offpolicy.StackedMLP` (its parameters, not a copy):
    ``run(x)`` + ``backward_run(g)``, a hand-written backward pass (``h_l = act(h_{l-1} W_l^T + b_l)``,
    so ``dW_l = g_l^T h_{l-1}``, ``db_l = sum_b g_l``, ``g_{l-1} = (g_l W_l) * act'(h_{l-1})``) in
    preallocated activation and gradient buffers, writing the weight gradients straight into ``.grad``.
    ``run`` returns a buffer that the next ``run`` overwrites; ``backward_run`` differentiates the last ``run``.

    ``hidden_dtype=torch.bfloat16``: layers from one hidden width to another (the 256x256 products that
    are nearly all the arithmetic) take bfloat16 copies of their inputs and weights (products accumulate
    in float32 inside the kernel); the first and last layers, the parameters, their gradients and the
    optimizer stay float32 (mixed precision).

    Shapes: x ``[B, sizes[0]]`` -> ``[n, B, sizes[-1]]``."""

    def __init__(self, net: StackedMLP, hidden_dtype: torch.dtype = torch.float32) -> None:
        self.net = net
        self.n, self.sizes, self.activation = net.n, net.sizes, net.activation
        self.weights, self.biases = net.weights, net.biases
        n_layers = len(self.sizes) - 1
        self.dtypes = [hidden_dtype if 0 < i < n_layers - 1 else torch.float32 for i in range(n_layers)]
        """The dtype each layer computes in."""
        self._work: dict[tuple[int, int], dict[str, list[Any]]] = {}
        self._last: tuple[torch.Tensor, int] | None = None
        self._view_cache: dict[int, tuple[Any, dict[str, list[torch.Tensor]]]] = {}

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
            for p in self.net.parameters():
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


class Flat:
    """A module's parameters as views of one flat tensor (and their gradients of another), with
    its optimizer if it is trained (targets are not): an engine optimizer over the one flat tensor
    (Adam's fused kernel: one kernel per step)."""

    def __init__(self, module: nn.Module,
                 optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None) -> None:
        self.module = module
        self.flat = FlatParams([module])
        self.param = self.flat.param
        self.opt = optimizer([self.param]) if optimizer is not None else None

    def polyak_from(self, source: Flat, tau: float) -> None:
        """theta_target <- (1 - tau) theta_target + tau theta (one ``lerp_`` over every parameter)."""
        with torch.no_grad():
            self.param.lerp_(source.param, tau)


def _trained(agent: SAC | TD3, name: str) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    """The engine optimizer of ``[optim.NAME]`` over a flat parameter (Adam: one fused kernel)."""
    return lambda params: agent.make_optimizer(name, params, fused=True)


# ------------------------------------------------------------------------------ SAC
def build_sac(agent: SAC) -> None:
    """The fast path's state of a SAC agent whose networks are built: flat parameters (``actor_flat``,
    ``critic_flat``, ``target_flat``), their optimizers, and a :class:`StackedRunner` per network."""
    dtype = torch.bfloat16 if agent.cfg.matmul_dtype == "bfloat16" else torch.float32
    agent.actor_flat = Flat(agent.actor, _trained(agent, "actor"))
    agent.critic_flat = Flat(agent.critic, _trained(agent, "critic"))
    agent.target_flat = Flat(agent.critic_target)
    agent.actor_opt, agent.critic_opt = agent.actor_flat.opt, agent.critic_flat.opt
    agent.runners = {k: StackedRunner(getattr(agent, k), dtype) for k in ("actor", "critic", "critic_target")}
    if agent.auto_alpha:
        agent.log_alpha.grad = torch.zeros_like(agent.log_alpha)
        agent.alpha_opt = agent.make_optimizer("temperature", [agent.log_alpha], fused=True)


@torch.no_grad()
def sac_update(agent: SAC, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """:meth:`SAC.update <archlab.rl.sac.SAC.update>` without autograd: the networks' gradients from
    :meth:`StackedRunner.backward_run`, the squashed Gaussian's in closed form."""
    cfg, actor, crit = agent.cfg, agent.runners["actor"], agent.runners["critic"]
    obs, next_obs = agent.encode(batch["obs"]), agent.encode(batch["next_obs"])
    actions, rewards, terminated = batch["actions"], batch["rewards"], batch["terminated"]
    B = obs.shape[0]
    # this step's losses use alpha from before this step's temperature update (as SB3)
    alpha = agent.log_alpha.exp() if agent.auto_alpha else agent.alpha

    # y = r + gamma (1 - d) (min_i Q'_i(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
    next_a, next_logp, _ = squashed_sample(*mean_log_std(actor.run(next_obs)[0]), agent.gen)
    next_q = agent.runners["critic_target"].run(torch.cat((next_obs, next_a), -1))[..., 0]  # [2, B]
    y = rewards + cfg.gamma * (1.0 - terminated) * (torch.amin(next_q, 0) - alpha * next_logp)

    # a ~ pi(.|s), reparameterized, for the temperature and actor losses
    mean, raw_log_std = actor.run(obs)[0].chunk(2, -1)  # (actor buffers: kept until its backward)
    log_std = raw_log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    a_pi, logp, noise = squashed_sample(mean, log_std, agent.gen)

    if agent.auto_alpha:
        # J(alpha) = -log alpha * E[log pi(a|s) + H_target]  =>  dJ/dlog alpha = -E[log pi + H_target]
        torch.neg(logp.mean() + agent.target_entropy, out=agent.log_alpha.grad)
        agent.alpha_opt.step()

    # J_Q = 1/2 sum_i E[(Q_i(s, a) - y)^2]  =>  dJ_Q/dQ_i = (Q_i - y) / B
    td = crit.run(torch.cat((obs, actions), -1))[..., 0] - y  # [2, B]
    critic_loss = 0.5 * td.pow(2).mean(1).sum()
    crit.backward_run(td.div_(B).unsqueeze(-1))
    agent.critic_opt.step()

    # J_pi = E[alpha log pi(a|s) - min_i Q_i(s, a)] through the updated critics (weights held
    # constant). dJ/dQ_i is -1/B on the smaller critic of each sample; back through the critics:
    q_pi = crit.run(torch.cat((obs, a_pi), -1))[..., 0]  # [2, B]
    dq = torch.zeros_like(q_pi).scatter_(0, q_pi.argmin(0, keepdim=True), -1.0 / B)
    da = crit.backward_run(dq.unsqueeze(-1), weight_grads=False, input_grad=True)[:, agent.obs_dim:]
    # ... then through the squashed Gaussian (eps fixed): d log pi/du = 2a, du/dmean = 1,
    # du/dlog std = std * eps, d log pi/dlog std (direct) = -1, da/du = 1 - a^2:
    du = (2.0 * alpha / B) * a_pi + da * (1.0 - a_pi * a_pi)
    dlog_std = (du * noise - alpha / B) * ((raw_log_std >= LOG_STD_MIN) & (raw_log_std <= LOG_STD_MAX))
    actor.backward_run(torch.cat((du, dlog_std), -1).unsqueeze(0))
    agent.actor_opt.step()

    if (agent.num_updates + 1) % cfg.target_update_interval == 0:
        agent.target_flat.polyak_from(agent.critic_flat, cfg.tau)
    actor_loss = (alpha * logp - torch.amin(q_pi, 0)).mean()
    return {"loss": critic_loss, "actor_loss": actor_loss, "ent_coef": alpha}


# ------------------------------------------------------------------------------ TD3
def build_td3(agent: TD3) -> None:
    """The fast path's state of a TD3 agent whose networks are built (as :func:`build_sac`)."""
    dtype = torch.bfloat16 if agent.cfg.matmul_dtype == "bfloat16" else torch.float32
    agent.actor_flat = Flat(agent.actor, _trained(agent, "actor"))
    agent.critic_flat = Flat(agent.critic, _trained(agent, "critic"))
    agent.actor_target_flat = Flat(agent.actor_target)
    agent.critic_target_flat = Flat(agent.critic_target)
    agent.actor_opt, agent.critic_opt = agent.actor_flat.opt, agent.critic_flat.opt
    agent.runners = {k: StackedRunner(getattr(agent, k), dtype)
                     for k in ("actor", "critic", "actor_target", "critic_target")}


@torch.no_grad()
def td3_update(agent: TD3, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """:meth:`TD3.update <archlab.rl.td3.TD3.update>` without autograd (hand-written backward passes)."""
    cfg, actor, crit = agent.cfg, agent.runners["actor"], agent.runners["critic"]
    obs, next_obs = agent.encode(batch["obs"]), agent.encode(batch["next_obs"])
    actions, rewards, terminated = batch["actions"], batch["rewards"], batch["terminated"]
    B = obs.shape[0]

    # target policy smoothing: a' = clip(mu'(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, sigma)
    eps = torch.randn(actions.shape, generator=agent.gen, device=actions.device)
    eps = eps.mul_(cfg.target_policy_noise).clamp_(-cfg.target_noise_clip, cfg.target_noise_clip)
    next_a = torch.tanh(agent.runners["actor_target"].run(next_obs)[0]).add_(eps).clamp_(-1.0, 1.0)
    # clipped double Q: y = r + gamma (1 - d) min_i Q'_i(s', a')
    next_q = agent.runners["critic_target"].run(torch.cat((next_obs, next_a), -1))[..., 0]  # [2, B]
    y = rewards + cfg.gamma * (1.0 - terminated) * torch.amin(next_q, 0)

    # J_Q = sum_i E[(Q_i(s, a) - y)^2]  =>  dJ_Q/dQ_i = 2 (Q_i - y) / B
    td = crit.run(torch.cat((obs, actions), -1))[..., 0] - y  # [2, B]
    critic_loss = td.pow(2).mean(1).sum()
    crit.backward_run(td.mul_(2.0 / B).unsqueeze(-1))
    agent.critic_opt.step()

    if (agent.num_updates + 1) % cfg.policy_delay == 0:
        # deterministic policy gradient through Q_1 (weights constant): J = -E[Q_1(s, mu(s))]
        a = torch.tanh(actor.run(obs)[0])
        q1 = crit.run(torch.cat((obs, a), -1), n=1)[0, :, 0]
        dq = torch.full((1, B, 1), -1.0 / B, device=obs.device)
        da = crit.backward_run(dq, weight_grads=False, input_grad=True)[:, agent.obs_dim:]
        # through the tanh: d tanh(o)/do = 1 - tanh(o)^2
        actor.backward_run((da * (1.0 - a * a)).unsqueeze(0))
        agent.actor_opt.step()
        agent.actor_loss = -q1.mean()
        agent.critic_target_flat.polyak_from(agent.critic_flat, cfg.tau)
        agent.actor_target_flat.polyak_from(agent.actor_flat, cfg.tau)
    return {"loss": critic_loss, "actor_loss": agent.actor_loss}


# ------------------------------------------------------------------------------ DQN
# For ReLU and tanh the Q-network's training pass is written by hand: the same matrix products as
# autograd without its per-node bookkeeping, which costs ~20% of a gradient step on networks this small.
MANUAL_ACTIVATIONS = ("relu", "tanh")
# Activations for the NumPy copy of the network that picks the training actions (in place).
_NUMPY_ACT = {"relu": lambda x: np.maximum(x, 0, out=x), "tanh": lambda x: np.tanh(x, out=x)}


def linear_layers(q: QNetwork) -> list[nn.Linear]:
    """The Q-network's linear layers in order (an activation follows each but the last)."""
    return [m for m in q.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def dqn_forward(q: QNetwork, layers: list[nn.Linear], obs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``Q(obs) [R, A]`` and the input of every linear layer, kept for :func:`dqn_backward_huber`."""
    x, inputs = q.encode(obs), []
    for i, lin in enumerate(layers):
        inputs.append(x)
        x = torch.addmm(lin.bias, x, lin.weight.t())  # z = x W^T + b
        if i < len(layers) - 1:
            x = x.relu_() if q.activation == "relu" else x.tanh_()  # h = act(z)
    return q.combine(x), inputs


@torch.no_grad()
def dqn_backward_huber(q: QNetwork, layers: list[nn.Linear], out: torch.Tensor, inputs: list[torch.Tensor],
                       actions: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``loss = mean_i smooth_l1(Q(s_i, a_i) - y_i)`` over the first ``B = len(y)`` rows of a
    :func:`dqn_forward` pass ``out``; writes d loss / d theta into the parameters' ``.grad``
    (overwriting it) and returns the loss. Shapes: out ``[R >= B, A]``, actions ``[B, 1]``, y ``[B]``.

        d loss / d Q(s_i, a_i) = clamp(Q(s_i, a_i) - y_i, -1, 1) / B        (Huber, delta 1)
        layer z = x W^T + b:  dW = dz^T x,  db = sum_i dz,  dx = dz W
        activation h = act(z): dz = dh * act'(z),  relu' = [h > 0] = sign(h),  tanh' = 1 - h^2
    """
    B = len(y)
    q_sa = out[:B].gather(1, actions).squeeze(1)
    loss = F.smooth_l1_loss(q_sa, y)
    g = (q_sa - y).clamp_(-1.0, 1.0).div_(B).unsqueeze(1)  # [B, 1]
    dq = torch.zeros_like(out[:B]).scatter_(1, actions, g)  # [B, A]: one non-zero per row
    # Dueling: dV = sum_a dQ = g, dA = dQ - mean_a dQ = dQ - g / A.
    dz = torch.cat([g, dq - g / dq.shape[1]], 1) if q.dueling else dq
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
            dz.mul_(x.sign()) if q.activation == "relu" else dz.mul_(1.0 - x * x)
    return loss


class FastDQN:
    """The fast path of a :class:`~archlab.rl.dqn.DQN` agent (its networks, not copies): flat
    parameters and their optimizer, NumPy greedy actions, the target update as one ``lerp_``/``copy_``,
    and :meth:`train`, the phase of gradient steps with the hand-written backward pass."""

    def __init__(self, agent: DQN) -> None:
        self.agent = agent
        self.flat = FlatParams([agent.q])
        self.target_flat = FlatParams([agent.q_target])  # the soft update is then one lerp_
        self.target_synced = -1  # num_updates when the target was last copied (-1: not yet)
        self.optimizer = agent.make_optimizer("q", [self.flat.param], fused=True)  # [optim.q]
        self.layers = linear_layers(agent.q)
        self.manual = agent.cfg.activation in MANUAL_ACTIVATIONS
        # The training envs' greedy actions come from NumPy views of the same weights: a 1-row forward
        # pass is ~10 tiny ops, each several times cheaper in NumPy than in torch. The optimizer and
        # load_state_dict update the flat parameter in place, so the views stay current.
        self.np_act = _NUMPY_ACT.get(agent.cfg.activation) if agent.device.type == "cpu" else None
        self.np_layers = [(lin.weight.detach().numpy().T, lin.bias.detach().numpy())
                          for lin in self.layers] if self.np_act else []

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """:meth:`DQN.greedy <archlab.rl.dqn.DQN.greedy>` on NumPy views of the weights."""
        agent = self.agent
        if self.np_act is None:
            return agent.greedy(agent.tensor(obs))
        (w, b), *rest = self.np_layers
        # A one-hot observation times W^T is a row of W^T.
        x = w[obs] + b if agent.spaces.n_obs else obs.reshape(len(obs), -1) @ w + b
        for w, b in rest:
            x = self.np_act(x) @ w + b
        # Dueling: argmax_a Q = argmax_a A, since V(s) and mean_a A(s, a) are the same for every a.
        return (x[:, 1:] if agent.cfg.dueling else x).argmax(1)

    def update_target(self) -> None:
        """theta' <- (1 - tau) theta' + tau theta (tau = 1: a copy, skipped while nothing changed)."""
        agent = self.agent
        with torch.no_grad():
            if agent.cfg.tau < 1.0:
                self.target_flat.param.lerp_(self.flat.param, agent.cfg.tau)
            elif self.target_synced != agent.num_updates:
                self.target_flat.param.copy_(self.flat.param)
                self.target_synced = agent.num_updates

    def train(self, steps: int) -> float:
        """:meth:`DQN.train <archlab.rl.dqn.DQN.train>`: ``steps`` gradient steps; the mean loss."""
        agent = self.agent
        cfg, B, buf, q = agent.cfg, agent.cfg.batch_size, agent.buffer, agent.q
        agent.set_lr(self.optimizer, agent.current_lr("q"))
        # Every minibatch of the phase at once (the reference's draws): [steps * B] -> [steps, B, ...].
        idx = agent.rng.integers(0, len(buf), (steps, B)).reshape(-1)
        obs = agent.tensor(buf.obs[idx]).view(steps, B, *agent.spaces.obs_shape)
        actions = agent.tensor(buf.actions[idx]).view(steps, B, 1)
        rewards = agent.tensor(buf.rewards[idx]).view(steps, B)
        not_done = agent.tensor(1.0 - buf.terminated[idx]).view(steps, B)
        # The target network is fixed during the phase, so one forward pass over the distinct
        # transitions drawn gives every target (early on, with a small buffer, far fewer than steps * B).
        uniq, inverse = np.unique(idx, return_inverse=True)
        inverse = agent.tensor(inverse)
        with torch.no_grad():
            next_q = agent.q_target(agent.tensor(buf.next_obs[uniq]))  # [U, A]
            if not cfg.double:
                y = rewards + cfg.gamma * not_done * next_q.amax(1)[inverse].view(steps, B)  # [steps, B]
            else:
                next_q = next_q[inverse].view(steps, B, -1)  # [steps, B, A]
                # The online network changes every step; it evaluates s and s' in one pass per step.
                both = torch.cat([obs, agent.tensor(buf.next_obs[idx]).view_as(obs)], 1)  # [steps, 2B, ...]
        total = torch.zeros((), device=agent.device)
        for g in range(steps):
            x = both[g] if cfg.double else obs[g]
            if self.manual:
                out, inputs = dqn_forward(q, self.layers, x)
            else:
                out = q(x)
            if cfg.double:  # the online network picks a' = argmax_a' Q(s', a'), the target values it
                with torch.no_grad():
                    a_next = out[B:].argmax(1, keepdim=True)
                    y_g = rewards[g] + cfg.gamma * not_done[g] * next_q[g].gather(1, a_next).squeeze(1)
            else:
                y_g = y[g]
            if self.manual:
                loss = dqn_backward_huber(q, self.layers, out, inputs, actions[g], y_g)
            else:
                loss = F.smooth_l1_loss(out[:B].gather(1, actions[g]).squeeze(1), y_g)
                self.flat.zero_grad()
                loss.backward()
            self.flat.clip_grad_norm(cfg.max_grad_norm)
            self.optimizer.step()
            total += loss.detach()
        agent.num_updates += steps
        return float(total) / steps
