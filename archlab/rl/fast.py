"""The fast path of the on-policy actor-critics (PPO, A2C, REINFORCE): the same updates as the
reference code in ``policies.py``, ``ppo.py``, ``a2c.py`` and ``reinforce.py`` (plain autograd; read
those first), computed with less per-operation overhead. Chosen by the algorithms' ``fast`` setting
(the default) and tested equal to the reference (``tests/rl/test_fast.py``).

The networks are tiny (two [64, 64] MLPs), so per-operation overhead, not arithmetic, sets the pace:

- the rollout's policy step runs in NumPy on actor and critic fused into one MLP
  (:meth:`FastActorCritic.frozen_forward`);
- a gradient step skips autograd. Every loss here is a function of log pi(a_t|s_t), V(s_t) and
  H[pi(.|s_t)] only, so each algorithm states its loss's gradient with respect to those three (a few
  elementwise formulas: :func:`clipped_surrogate`, :func:`a2c_update`, :func:`reinforce_update`) and
  :meth:`FastActorCritic.set_grads` backpropagates it through the distribution and the MLPs by hand;
- every parameter is a view into one flat tensor (:class:`FlatParams`), so gradient clipping and the
  optimizer step are one operation each.

:class:`FlatParams` and the one-node MLP (:class:`FusedMLP`) also serve A3C, DQN, SAC and TD3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .networks import LOG_2PI, Tanh, gaussian_entropy

if TYPE_CHECKING:
    from .a2c import A2C
    from .policies import ActorCritic, ActorCriticAgent, ActorCriticConfig
    from .ppo import PPO
    from .reinforce import REINFORCE


# ------------------------------------------------------------------------------ flat parameters
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


# ------------------------------------------------------------------------------ one-node MLPs
# For networks this small, autograd's per-node bookkeeping costs as much as the math: an MLP as ONE
# node with a hand-written backward (textbook backprop). FastActorCritic.set_grads uses the same two
# functions without autograd at all; _MLPFunction serves FusedMLP when a graph is wanted (A3C).
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


# ------------------------------------------------------------------------------ the actor-critic
@dataclasses.dataclass
class Evaluation:
    """What :meth:`FastActorCritic.evaluate` returns: per-sample ``logp``, ``values``, ``entropy``
    (``[B]``, no graph), and what :meth:`FastActorCritic.set_grads` needs to backpropagate."""

    logp: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor | None
    hidden: tuple
    """Layer inputs and distribution terms of the hand-written backward."""


def supports(cfg: ActorCriticConfig) -> bool:
    """Whether a configuration has a fast path: separate actor and critic MLPs with tanh or ReLU
    (the hand-written backward's cases). Others (a shared body, other activations) train on the reference."""
    return cfg.fast and not cfg.shared and cfg.activation in ("tanh", "relu")


class FastActorCritic:
    """The fast path of an :class:`~archlab.rl.policies.ActorCritic` (its parameters, not a copy):
    forward and backward passes without autograd, and a fused NumPy forward for rollouts."""

    def __init__(self, model: ActorCritic) -> None:
        self.model = model
        self.pi = FusedMLP(model.pi_net)
        self.vf = FusedMLP(model.vf_net)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``model(obs)`` with each MLP one autograd node (A3C's update)."""
        x = self.model.encode(obs)
        if self.model.shared:
            x = self.model.body(x)
        return self.pi(x), self.vf(x).squeeze(-1)

    @torch.no_grad()
    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor, entropy: bool = True) -> Evaluation:
        """log pi(a|s), V(s) and (when asked for) H[pi(.|s)] of a batch, all ``[B]``, without a graph."""
        model = self.model
        x = model.encode(obs)
        pi, h_pi = _mlp_forward(x, self.pi.params[0::2], self.pi.params[1::2], self.pi.act)
        v, h_vf = _mlp_forward(x, self.vf.params[0::2], self.vf.params[1::2], self.vf.act)
        if model.discrete:
            a = actions.long().unsqueeze(-1)
            logp_all = torch.log_softmax(pi, -1)
            logp = logp_all.gather(-1, a).squeeze(-1)
            ent = -(logp_all.exp() * logp_all).sum(-1) if entropy else None
            dist = (a, logp_all, ent)
        else:
            z = (actions - pi) * torch.exp(-model.log_std)                     # (a - mu) / sigma
            logp = (-0.5 * z.square() - model.log_std - 0.5 * LOG_2PI).sum(-1)
            ent = gaussian_entropy(model.log_std).expand(len(z)) if entropy else None
            dist = (z,)
        return Evaluation(logp, v.squeeze(-1), ent, hidden=(h_pi, h_vf, dist))

    @torch.no_grad()
    def set_grads(self, ev: Evaluation, d_logp: torch.Tensor, d_values: torch.Tensor | None,
                  d_entropy: float = 0.0) -> None:
        """Set every parameter's ``.grad`` (views of a :class:`FlatParams`) to dL/dtheta, given
        dL/dlog pi ``[B]``, dL/dV ``[B]`` (``None``: the loss ignores V) and dL/dH, the same for every
        sample (the losses use mean H).

        Categorical, logits z, p = softmax(z):  d log p_a / dz = onehot(a) - p;
                                                 dH / dz_k = -p_k (log p_k + H).
        Gaussian, z = (a - mu) / sigma:          d log pi / d mu = z / sigma;  d log pi / d log sigma = z^2 - 1;
                                                 dH / d log sigma = 1."""
        model = self.model
        h_pi, h_vf, dist = ev.hidden
        if model.discrete:
            a, logp_all, ent = dist
            p = logp_all.exp()
            d_pi = p * -d_logp.unsqueeze(-1)
            d_pi.scatter_add_(-1, a, d_logp.unsqueeze(-1))
            if d_entropy:
                h = ent if ent is not None else -(p * logp_all).sum(-1)
                d_pi -= d_entropy * p * (logp_all + h.unsqueeze(-1))
        else:
            (z,) = dist
            d_pi = d_logp.unsqueeze(-1) * z * torch.exp(-model.log_std)
            d_log_std = (d_logp.unsqueeze(-1) * (z.square() - 1.0)).sum(0) + d_entropy * len(z)
            model.log_std.grad.copy_(d_log_std)
        self._backward_mlp(self.pi, d_pi, h_pi)
        if d_values is None:
            for p in self.vf.params:
                p.grad.zero_()
        else:
            self._backward_mlp(self.vf, d_values.unsqueeze(-1), h_vf)

    @staticmethod
    def _backward_mlp(net: FusedMLP, g: torch.Tensor, hs: list[torch.Tensor]) -> None:
        """Backpropagate ``g = dL/dy`` through ``net``, writing straight into the (flat) gradient buffers."""
        params = net.params
        _mlp_backward(g, hs, params[0::2], isinstance(net.act, nn.ReLU),
                      [p.grad for p in params[0::2]], [p.grad for p in params[1::2]])

    @torch.no_grad()
    def frozen_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``model.forward`` for a stretch where the weights do not change (a rollout), in half the operations.

        Separate actor and critic become one MLP whose output is ``[pi | V]``: the first layers
        concatenated (both read the observation), the later ones block-diagonal. Built once per
        rollout; the per-step forward is then ``len(net_arch) + 1`` matmuls instead of twice that."""
        model = self.model
        pi = [m for m in model.pi_net if isinstance(m, nn.Linear)]
        vf = [m for m in model.vf_net if isinstance(m, nn.Linear)]
        layers = [(torch.cat([pi[0].weight, vf[0].weight]).t(), torch.cat([pi[0].bias, vf[0].bias]))]
        layers += [(torch.block_diag(a.weight, c.weight).t(), torch.cat([a.bias, c.bias]))
                   for a, c in zip(pi[1:], vf[1:], strict=True)]
        last = len(layers) - 1
        if layers[0][0].device.type == "cpu":
            # On CPU the per-step batches are a few rows: NumPy's per-call cost is a fraction of
            # PyTorch's, so the step runs in NumPy on views of the fused weights.
            np_layers = [(w.numpy(), b.numpy()) for w, b in layers]
            relu = isinstance(self.pi.act, nn.ReLU)

            def np_forward(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                x = model.encode(obs).numpy()
                for i, (w, b) in enumerate(np_layers):
                    x = x @ w
                    x += b
                    if i < last:
                        x = np.maximum(x, 0.0, out=x) if relu else np.tanh(x, out=x)
                out = torch.from_numpy(x)
                return out[:, :-1], out[:, -1]

            return np_forward

        def forward(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = model.encode(obs)
            for i, (w, b) in enumerate(layers):
                x = torch.addmm(b, x, w)
                if i < last:
                    x = self.pi.act(x)
            return x[:, :-1], x[:, -1]

        return forward


# ------------------------------------------------------------------------------ the agents' fast updates
def build(agent: ActorCriticAgent) -> None:
    """The fast path's state on an agent whose ``model`` is built: ``agent.flat`` (the model's parameters
    as views of one tensor), ``agent.fast`` and the engine optimizer of ``[optim.policy]`` stepping the
    flat parameter -- Adam's fused kernel, RMSprop's single-tensor loop. (Weight decay, if asked for,
    then applies to the biases too: the reference's module groups exempt them.)"""
    agent.flat = FlatParams([agent.model])
    agent.fast = FastActorCritic(agent.model)
    agent.optimizer = agent.make_optimizer("policy", [agent.flat.param], fused=True)


def gradient_step(agent: ActorCriticAgent, ev: Evaluation, d_logp: torch.Tensor, d_values: torch.Tensor | None,
                  d_entropy: float = 0.0) -> None:
    """theta <- opt(theta, clip(dL/dtheta)) for a loss whose gradient with respect to log pi, V and H
    is given (see :meth:`FastActorCritic.set_grads`): backprop, clip the global norm, step."""
    agent.fast.set_grads(ev, d_logp, d_values, d_entropy)
    if agent.cfg.max_grad_norm is not None:
        agent.flat.clip_grad_norm(agent.cfg.max_grad_norm)
    agent.optimizer.step()
    agent.num_updates += 1


def clipped_surrogate(logp: torch.Tensor, values: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      returns: torch.Tensor, old_values: torch.Tensor, clip: float, clip_vf: float | None,
                      vf_coef: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's objective over a minibatch (eq. 7 and 9, signs flipped to a loss; see ``ppo.py``) and its gradient:

        r_t    = exp(log pi(a_t|s_t) - log pi_old(a_t|s_t))
        L^CLIP = mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)
        V'_t   = V(s_t), or V_old(s_t) + clip(V(s_t) - V_old(s_t), -eps_vf, eps_vf) with value clipping
        L^VF   = mean_t (V'_t - R_t)^2
        loss   = -L^CLIP + vf_coef L^VF

        d loss / d log pi_t = -A_t r_t [r_t A_t <= clip(r_t) A_t] / B      (the clipped branch is constant)
        d loss / d V_t      = 2 vf_coef (V'_t - R_t) [|V_t - V_old_t| <= eps_vf] / B

    Returns ``(-L^CLIP, L^VF, loss, d loss/d log pi, d loss/d V)``; all inputs ``[B]``."""
    n = logp.shape[0]
    ratio = torch.exp(logp - old_logp)
    surr1 = adv * ratio
    surr2 = adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    pg_loss = -torch.minimum(surr1, surr2).mean()
    if clip_vf is None:
        err = values - returns
        err_grad = err
    else:
        delta = values - old_values
        err = old_values + delta.clamp(-clip_vf, clip_vf) - returns
        err_grad = err * (delta.abs() <= clip_vf)
    vf_loss = err.square().mean()
    d_logp = surr1 * (surr1 <= surr2) * (-1.0 / n)
    d_values = err_grad * (2.0 * vf_coef / n)
    return pg_loss, vf_loss, pg_loss + vf_coef * vf_loss, d_logp, d_values


def ppo_update(agent: PPO, b: dict[str, torch.Tensor], clip: float,
               clip_vf: float | None) -> dict[str, torch.Tensor] | None:
    """:meth:`PPO.update <archlab.rl.ppo.PPO.update>` with the gradient of :func:`clipped_surrogate`."""
    cfg = agent.cfg
    want_entropy = cfg.ent_coef != 0.0
    ev = agent.fast.evaluate(b["obs"], b["actions"], want_entropy)
    if cfg.target_kl is not None:
        log_ratio = ev.logp - b["log_probs"]  # KL(pi_old || pi) ~ E[(r - 1) - log r]
        if float((log_ratio.exp() - 1.0 - log_ratio).mean()) > 1.5 * cfg.target_kl:
            return None
    pg_loss, vf_loss, loss, d_logp, d_values = clipped_surrogate(
        ev.logp, ev.values, b["log_probs"], b["advantages"], b["returns"], b["values"], clip, clip_vf, cfg.vf_coef)
    if want_entropy:
        loss = loss - cfg.ent_coef * ev.entropy.mean()                         # - c2 S[pi](s_t)
    gradient_step(agent, ev, d_logp, d_values, -cfg.ent_coef / len(d_logp))
    return {"loss": loss, "policy_loss": pg_loss, "value_loss": vf_loss, "logp": ev.logp}


def a2c_update(agent: A2C, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor,
               returns: torch.Tensor) -> dict[str, torch.Tensor]:
    """:meth:`A2C.update <archlab.rl.a2c.A2C.update>` with its gradient in closed form:
    d loss / d log pi_t = -A_t / B, d loss / d V_t = 2 vf_coef (V_t - R_t) / B, d loss / d H_t = -ent_coef / B."""
    cfg = agent.cfg
    ev = agent.fast.evaluate(obs, actions, cfg.ent_coef != 0.0)
    n = len(adv)
    pg_loss = -(adv * ev.logp).mean()                   # -E[A_t log pi(a_t|s_t)]
    err = ev.values - returns
    vf_loss = err.square().mean()                       # E[(V(s_t) - R_t)^2]
    loss = pg_loss + cfg.vf_coef * vf_loss
    stats = {"policy_loss": pg_loss, "value_loss": vf_loss}
    if ev.entropy is not None:
        loss = loss - cfg.ent_coef * ev.entropy.mean()
        stats["entropy"] = ev.entropy.mean()
    gradient_step(agent, ev, adv * (-1.0 / n), err * (2.0 * cfg.vf_coef / n), -cfg.ent_coef / n)
    return {"loss": loss, **stats}


def reinforce_update(agent: REINFORCE, obs: torch.Tensor, actions: torch.Tensor,
                     returns: torch.Tensor) -> dict[str, torch.Tensor]:
    """:meth:`REINFORCE.update <archlab.rl.reinforce.REINFORCE.update>` with its gradient in closed form
    (A_t a constant): d loss / d log pi_t = -A_t / B, d loss / d V_t = 2 vf_coef (V_t - G_t) / B."""
    cfg = agent.cfg
    ev = agent.fast.evaluate(obs, actions, cfg.ent_coef != 0.0)
    n = len(returns)
    adv = returns - ev.values if cfg.baseline else returns                # A_t = G_t - V(s_t)
    if cfg.normalize_advantage and n > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = -(adv * ev.logp).mean()                                     # -E[A_t log pi(a_t|s_t)]
    loss = pg_loss
    stats = {"policy_loss": pg_loss}
    d_values = None
    if cfg.baseline:
        err = ev.values - returns
        vf_loss = err.square().mean()                                     # E[(V(s_t) - G_t)^2]
        loss = loss + cfg.vf_coef * vf_loss
        stats["value_loss"] = vf_loss
        d_values = err * (2.0 * cfg.vf_coef / n)
    if ev.entropy is not None:
        loss = loss - cfg.ent_coef * ev.entropy.mean()
        stats["entropy"] = ev.entropy.mean()
    gradient_step(agent, ev, adv * (-1.0 / n), d_values, -cfg.ent_coef / n)
    return {"loss": loss, **stats}
