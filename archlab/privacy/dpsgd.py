"""DP-SGD: differentially private SGD by per-example clipping and Gaussian noise (Abadi et al. 2016).

Deep Learning with Differential Privacy (CCS 2016), Algorithm 1, with Poisson sampling (every example
joins a step's batch independently with probability ``q``, which the RDP accountant in
:mod:`archlab.privacy.rdp` assumes). One step on the batch ``L``:

    g_i   = grad_theta loss(theta; x_i)                   per example, by torch.func: vmap(grad(loss))
    g_i  <- g_i * min(1, C / (||g_i|| + 1e-6))             clip the whole example's gradient to norm C
    g     = (sum_i g_i + N(0, sigma^2 C^2 I)) / (q N)       noise once per step; divide by the *expected*
                                                             batch size q N (the actual size is private)
    theta <- optimizer(theta, g)

``||g_i||`` is the norm over all parameters together ("flat" clipping). The 1e-6 keeps the factor
finite for a zero gradient (the same guard Opacus uses, so clipped gradients agree to rounding).

``DPSGD(..., fast=True)`` gets ``sum_i g_i`` (clipped) from :mod:`archlab.privacy.dpsgd_fast` instead: one batched
forward and backward, per-example norms from layer inputs and output gradients, no ``vmap``; tested equal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .dpsgd_fast import clipped_grad_sum, unsupported_layers

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample_grads(model: nn.Module, loss_fn: Loss, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: (B, *param.shape)}``: the gradient of ``loss_fn(model(x_i), y_i)`` for every example ``i``.

    The model must not mix examples (no BatchNorm in training mode); it is called on batches of one.
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")(params, x, y)


def clip_per_sample(grads: dict[str, torch.Tensor], max_norm: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scale every example's gradient (over all parameters) to norm at most ``max_norm``.
    Returns the clipped gradients and the per-example norms before clipping, shape (B,)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], dim=1).norm(dim=1)
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return {n: g * factor.view(-1, *([1] * (g.dim() - 1))) for n, g in grads.items()}, norms


def poisson_batch(n: int, sample_rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of one Poisson-sampled batch: each of ``range(n)`` kept with probability ``sample_rate``."""
    return torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten()


class DPSGD:
    """Turns any optimizer over ``model`` into DP-SGD: :meth:`step` computes, clips, noises and applies the
    gradient of one batch. ``expected_batch_size`` is ``q * N``; the noise std ``noise_multiplier * max_grad_norm``.
    ``fast``: the clipped sum from :func:`archlab.privacy.dpsgd_fast.clipped_grad_sum` (``loss_fn`` must then
    average over the batch, and every trainable layer be one it supports), else from ``vmap`` per-example gradients;
    ``channels_last`` (with ``fast``): its forward on 4-d inputs in channels-last layout (see that function)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Loss, noise_multiplier: float,
                 max_grad_norm: float, expected_batch_size: int, generator: torch.Generator | None = None,
                 fast: bool = False, channels_last: bool = False) -> None:
        if noise_multiplier < 0 or max_grad_norm <= 0 or expected_batch_size < 1:
            raise ValueError("need noise_multiplier >= 0, max_grad_norm > 0 and expected_batch_size >= 1")
        if fast and unsupported_layers(model):
            raise ValueError(f"the DP-SGD fast path does not support: {', '.join(unsupported_layers(model))}")
        if channels_last and not fast:
            raise ValueError("channels_last is an option of the fast path (fast=True)")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.sigma, self.clip, self.expected = noise_multiplier, max_grad_norm, expected_batch_size
        self.generator, self.fast, self.channels_last = generator, fast, channels_last

    def privatize(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Set every parameter's ``.grad`` to the noisy clipped mean gradient of the batch (x, y). Returns the
        batch's mean loss (detached) where the fast path computed it on the way, else None."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        loss = None
        if len(x) and self.fast:
            sums, _, loss = clipped_grad_sum(self.model, self.loss_fn, x, y, self.clip,
                                             channels_last=self.channels_last)
        elif len(x):
            clipped, _ = clip_per_sample(per_sample_grads(self.model, self.loss_fn, x, y), self.clip)
            sums = {n: g.sum(0) for n, g in clipped.items()}
        for n, p in params.items():
            summed = sums[n] if len(x) else torch.zeros_like(p)
            noise = torch.normal(0.0, self.sigma * self.clip, size=p.shape, device=p.device, generator=self.generator)
            p.grad = (summed + noise) / self.expected
        return loss

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One DP-SGD step on the batch (x, y)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.privatize(x, y)
        self.optimizer.step()
