"""Networks and action distributions shared by the algorithms.

The distributions are plain functions on tensors rather than ``torch.distributions`` objects: the
rollout loop calls them every environment step, where object construction and argument validation
cost more than the math.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError


class _NumpyTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_numpy(np.tanh(x.detach().numpy()))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)  # grad * (1 - y^2)


class Tanh(nn.Module):
    """``nn.Tanh`` computed by NumPy for CPU float32 tensors: PyTorch's CPU tanh kernel is about 7x
    slower than NumPy's vectorized one (46 us vs 7 us for 256 x 64), and tanh was the largest single
    cost of the on-policy algorithms' small MLPs. Other devices and dtypes use ``torch.tanh``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            return torch.tanh(x)
        if x.requires_grad and torch.is_grad_enabled():
            return _NumpyTanh.apply(x)
        return torch.from_numpy(np.tanh(x.detach().numpy()))


_ACT = {"tanh": Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}
LOG_2PI = math.log(2 * math.pi)


def activation(name: str) -> type[nn.Module]:
    if name not in _ACT:
        raise ArchlabError(f"unknown activation {name!r}; choose one of {', '.join(sorted(_ACT))}")
    return _ACT[name]


def mlp(sizes: Sequence[int], act: str = "tanh", out_gain: float | None = None,
        hidden_gain: float | None = None) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ``act`` between them (none after the last).

    With gains given, weights are orthogonal with those gains and biases zero (the initialization
    of OpenAI baselines / SB3's on-policy networks); otherwise PyTorch's default."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        gain = out_gain if last else hidden_gain
        if gain is not None:
            nn.init.orthogonal_(lin.weight, gain)
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(activation(act)())
    return nn.Sequential(*layers)


def encode_obs(obs: torch.Tensor, n_obs: int) -> torch.Tensor:
    """Discrete observations (state indices) become one-hot vectors; Box observations pass through."""
    return F.one_hot(obs.long(), n_obs).float() if n_obs else obs.float()


# ------------------------------------------------------------------------------ categorical
def categorical_sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One action per row of ``logits [B, A]`` -> ``[B]``."""
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)


def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


# ------------------------------------------------------------------------------ diagonal Gaussian
def gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    return mean + log_std.exp() * torch.randn(mean.shape, generator=generator, device=mean.device)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(a; mean, diag(exp(log_std)^2)), summed over action dimensions -> ``[B]``."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    return (log_std + 0.5 * (1.0 + LOG_2PI)).sum(-1)


def squashed_gaussian(mean: torch.Tensor, log_std: torch.Tensor,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SAC's tanh-squashed Gaussian (Haarnoja et al. 2018, appendix C): a reparameterized sample
    ``a = tanh(u)``, ``u ~ N(mean, std)``, and its log-density

        log pi(a|s) = log N(u; mean, std) - sum_i log(1 - tanh(u_i)^2)

    using the stable identity ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``."""
    u = mean + log_std.exp() * torch.randn(mean.shape, generator=generator, device=mean.device)
    logp = gaussian_log_prob(mean, log_std, u)
    logp = logp - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), logp


# The squashed Gaussian of SAC's actor, shared by the reference (sac.py) and its fast path (fast_offpolicy.py).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
"""Clamp of the actor's log standard deviation (SB3 / softlearning)."""
LOG2 = math.log(2.0)


def mean_log_std(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The actor network's output ``[B, 2 dim(A)]`` -> mean and clamped log std ``[B, dim(A)]``
    (one fused head for SB3's two heads ``mu`` and ``log_std``; same initialization)."""
    mean, log_std = out.chunk(2, -1)
    return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


def squashed_sample(mean: torch.Tensor, log_std: torch.Tensor,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A reparameterized sample of the tanh-squashed Gaussian and its log-density (Haarnoja et al. 2018, appendix C):

        a = tanh(u),  u = mean + std * eps,  eps ~ N(0, I)
        log pi(a|s) = sum_i [-eps_i^2 / 2 - log std_i - log(2 pi) / 2 - log(1 - tanh(u_i)^2)]

    with ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (stable). The same density as
    :func:`squashed_gaussian`; also returns ``std * eps``, which the fast path's
    hand-written backward pass needs. Shapes: ``[B, d]`` -> a, noise ``[B, d]``,
    log pi ``[B]``."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device)
    noise = log_std.exp() * eps
    u = mean + noise
    log_det = 2.0 * (LOG2 - u - F.softplus(-2.0 * u))
    logp = (-0.5 * eps * eps - log_std - log_det).sum(-1) - 0.5 * LOG_2PI * mean.shape[-1]
    return torch.tanh(u), logp, noise
