"""DeepLIFT with the Rescale rule (Shrikumar, Greenside & Kundaje 2017, "Learning Important Features
Through Propagating Activation Differences").

DeepLIFT explains the *difference* of the output from its value at a reference input ``x'``:
``Delta t = F(x) - F(x')``. It assigns contributions ``C_{Delta x_i, Delta t}`` that satisfy
summation-to-delta, ``sum_i C = Delta t`` (Eq. 1), and propagates them with multipliers
``m = C / Delta x`` through a chain rule (Eq. 3). Linear layers keep their weights as multipliers.
For an elementwise nonlinearity ``y = f(z)`` the Rescale rule (Sec. 3.5.2) uses the secant slope

    m_{Delta z, Delta y} = (f(z) - f(z')) / (z - z')          (the gradient f'(z) when |z - z'| < eps)

so the attributions are ``C_i = (x_i - x'_i) * m_i``, where ``m`` is the ordinary backward pass with
every nonlinearity's derivative replaced by its secant slope.

Implementation: the input and the reference go through the model as one batch ``[x; x']``; a forward
hook on every supported activation module (ReLU, LeakyReLU, ELU, Sigmoid, Tanh, Softplus) returns a
tensor with the same value whose gradient is the secant slope of its half of the batch. Activations
called as functions (``F.relu``) are invisible to hooks and keep their plain gradient. Max pooling keeps
its plain gradient too (a "gradient" rule), whereas Captum applies its own max-pool rule: the two agree
on models without max pooling.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Target, baseline_like, forward_hooks, register_method, select

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus)


def _rescale_hook(eps: float):
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        z = args[0]
        zx, zr = z.detach().chunk(2)           # inputs of this layer for x and for the reference
        yx, yr = out.detach().chunk(2)
        dz = zx - zr
        with torch.enable_grad():               # f'(z) where the secant is undefined
            zz = zx.clone().requires_grad_(True)
            (slope,) = torch.autograd.grad(module.forward(zz).sum(), zz)  # .forward: no hooks
        secant = torch.where(dz.abs() < eps, slope, (yx - yr) / torch.where(dz.abs() < eps, 1.0, dz))
        m = torch.cat([secant, secant])
        return out.detach() + (z - z.detach()) * m  # value f(z), gradient m
    return hook


@register_method("deeplift")
def deeplift(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
             baselines: float | torch.Tensor | None = None, eps: float = 1e-10) -> torch.Tensor:
    """``(x - x') * m`` with Rescale-rule multipliers ``m``; ``sum = F(x) - F(x')`` for supported models."""
    x = inputs.detach()
    base = baseline_like(x, baselines)
    acts = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    xx = x.clone().requires_grad_(True)
    both = torch.cat([xx, base])
    with forward_hooks(acts, _rescale_hook(eps)), torch.enable_grad():
        out = model(both)
        (m,) = torch.autograd.grad(select(out[: x.shape[0]], target).sum(), xx)
    return (x - base) * m
