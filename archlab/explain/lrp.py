"""Layer-wise relevance propagation (Bach, Binder, Montavon, Klauschen, Müller & Samek 2015, "On
Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation";
rules as in Montavon, Binder, Lapuschkin, Samek & Müller 2019, "Layer-Wise Relevance Propagation:
An Overview").

LRP starts from the target score, ``R_out = S_c(x)``, and redistributes relevance backwards layer by
layer. For a linear-type layer ``z_k = sum_j a_j w_jk + b_k`` (Linear, Conv, BatchNorm, average pooling):

    epsilon rule:   R_j = sum_k  a_j w_jk / (z_k + eps * sign(z_k))  R_k
    alpha-beta:     R_j = sum_k ( alpha (a_j w_jk)^+ / z_k^+  -  beta (a_j w_jk)^- / z_k^- ) R_k,
                    z_k^+ = sum_j (a_j w_jk)^+,  z_k^- = sum_j (a_j w_jk)^-,  alpha - beta = 1

The alpha-beta rule applies to Linear and Conv layers; pooling and BatchNorm use the epsilon rule.
Relevance passes unchanged through elementwise activations (ReLU, Tanh) and max pooling routes it to
the maximum (winner takes all). *Conservation*: with ``alpha - beta = 1`` the alpha-beta rule keeps
``sum_j R_j = sum_k R_k`` (biases are left out of ``z^+`` and ``z^-``) at every unit that has both positive
and negative contributions; where ``z^-_k = 0`` (all inputs push the same way, common after a ReLU)
the beta share of ``R_k`` has nowhere to go and is lost, which is why alpha=1, beta=0 (always conserving
for ReLU networks) is the usual choice below the top layers. The epsilon rule keeps it up to what the
biases and ``eps`` absorb, exactly for bias-free layers as ``eps -> 0``.

Implementation, plain autograd: the *gradient* that flows back is the relevance. A forward hook on each
linear-type layer returns a tensor equal to its output ``z`` whose derivative with respect to the
layer input ``a`` is the rule's redistribution matrix: with ``u = a - a.detach()`` (zero, gradient 1),

    z + F(a.detach() * u) / z_stab.detach()       epsilon rule: d/da_j = sum_k a_j w_jk / z_stab_k

where ``F`` is the layer without its bias (the alpha-beta rule sums four such terms with ``W^+``,
``W^-``, ``a^+``, ``a^-``). Tanh passes its gradient unchanged (the relevance is not rescaled by
``tanh'``). The input's gradient, started from ``S_c`` at the target, is then the input relevance. As in
Captum, every leaf module must be one this file knows (layers used functionally are not seen).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError
from .base import Target, forward_hooks, leaf_modules, register_method, select

LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d,
          nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
PASS = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Dropout, nn.Flatten, nn.Identity)  # plain gradient
TANH = (nn.Tanh,)


Map = Callable[[torch.Tensor], torch.Tensor]


def _without_bias(module: nn.Module, weight: Map) -> Map:
    """``v -> F(v)``: the layer's linear map with its weight passed through ``weight`` and no bias."""
    if isinstance(module, nn.Linear):
        return lambda v: F.linear(v, weight(module.weight))
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[module.weight.dim() - 2]
        if module.padding_mode != "zeros":
            raise ArchlabError(f"LRP supports zero-padded convolutions only, got padding_mode={module.padding_mode!r}")
        return lambda v: conv(v, weight(module.weight), None, module.stride, module.padding, module.dilation,
                              module.groups)
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):  # eval mode: z = scale * a + shift
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        shape = (1, -1) + (1,) * (2 if isinstance(module, nn.BatchNorm2d) else 0)
        return lambda v: v * weight(scale).view(shape)
    return module.forward  # average pooling: linear with positive weights, no bias


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0)


def _epsilon_hook(eps: float):
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], z: torch.Tensor) -> torch.Tensor:
        a = args[0]
        u = a - a.detach()
        lin = _without_bias(module, lambda w: w)
        return z.detach() + lin(a.detach() * u) / _stab(z.detach(), eps)  # value z (u is 0)
    return hook


def _alpha_beta_hook(alpha: float, beta: float, eps: float):
    epsilon_rule = _epsilon_hook(eps)

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], z: torch.Tensor) -> torch.Tensor:
        if not isinstance(module, WEIGHTED):  # pooling, BatchNorm: the epsilon rule
            return epsilon_rule(module, args, z)
        a = args[0]
        u = a - a.detach()
        ap, an = a.detach().clamp(min=0), a.detach().clamp(max=0)
        pos = _without_bias(module, lambda w: w.clamp(min=0))
        neg = _without_bias(module, lambda w: w.clamp(max=0))
        with torch.no_grad():
            zp = pos(ap) + neg(an)        # sum of the positive contributions a_j w_jk
            zn = neg(ap) + pos(an)        # sum of the negative ones
        share_p = (pos(ap * u) + neg(an * u)) / (zp + eps)
        share_n = (neg(ap * u) + pos(an * u)) / (zn - eps)
        return z.detach() + alpha * share_p - beta * share_n
    return hook


def _tanh_hook(_module: nn.Module, args: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
    a = args[0]
    return y.detach() + (a - a.detach())  # value tanh(a), gradient 1: relevance passes unchanged


@register_method("lrp")
def lrp(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, rule: str = "epsilon",
        epsilon: float = 1e-9, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """Input relevance by the ``epsilon`` or ``alpha_beta`` rule; sums to ``S_target(x)`` when conserved."""
    if rule == "epsilon":
        if not epsilon >= 0:
            raise ArchlabError(f"epsilon must be >= 0, got {epsilon}")
        linear_hook = _epsilon_hook(epsilon)
    elif rule == "alpha_beta":
        if not (beta >= 0 and abs(alpha - beta - 1) < 1e-9):
            raise ArchlabError(f"the alpha-beta rule needs beta >= 0 and alpha - beta = 1, got {alpha}, {beta}")
        linear_hook = _alpha_beta_hook(alpha, beta, max(epsilon, 1e-12))
    else:
        raise ArchlabError(f"unknown LRP rule {rule!r}; choose 'epsilon' or 'alpha_beta'")
    linear, tanh = [], []
    for name, m in leaf_modules(model):
        if isinstance(m, LINEAR):
            linear.append(m)
        elif isinstance(m, TANH):
            tanh.append(m)
        elif not isinstance(m, PASS):
            raise ArchlabError(f"LRP has no rule for layer {name!r} ({type(m).__name__}); supported: "
                               + ", ".join(t.__name__ for t in LINEAR + PASS + TANH))
    x = inputs.detach().requires_grad_(True)
    with forward_hooks(linear, linear_hook), forward_hooks(tanh, _tanh_hook), torch.enable_grad():
        s = select(model(x), target)
        (relevance,) = torch.autograd.grad(s, x, grad_outputs=s.detach())
    return relevance
