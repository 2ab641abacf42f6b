"""Guided Grad-CAM (Selvaraju et al. 2017, Sec. 3.1): Guided Backpropagation x upsampled Grad-CAM.

Grad-CAM is class-discriminative but coarse (the resolution of the chosen layer); Guided
Backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller 2015, "Striving for Simplicity", Sec. 3.4)
is fine-grained but hardly class-discriminative. Their pointwise product has both:

    G^c = GuidedBackprop^c(x)  *  upsample(Grad-CAM^c)            -> shape of the input

Guided Backpropagation is the gradient with every ReLU's backward pass replaced by

    dL/dz = max(0, dL/dy) * [z > 0]

i.e. only positive signals flowing back through active units survive. As in Captum, this applies to
``nn.ReLU`` modules (a functional ``F.relu`` keeps its ordinary gradient) and the Grad-CAM map is
upsampled to the input's spatial size with ``interpolate_mode`` ("nearest" by default).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Target, forward_hooks, register_method, select
from .gradcam import gradcam, upsample


class _GuidedReLU(torch.autograd.Function):
    """``y = max(z, 0)``; backward: ``max(g, 0) * [z > 0]``."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd.Function signature
        ctx.save_for_backward(z)
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (z,) = ctx.saved_tensors
        return grad.clamp(min=0) * (z > 0)


def _guided(_module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> torch.Tensor:
    return _GuidedReLU.apply(args[0])


def guided_backprop(model: nn.Module, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
    """Guided Backpropagation: the gradient through "guided" ReLUs, shape of ``inputs``."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    x = inputs.detach().requires_grad_(True)
    with forward_hooks(relus, _guided), torch.enable_grad():
        (grad,) = torch.autograd.grad(select(model(x), target).sum(), x)
    return grad


@register_method("guided_gradcam")
def guided_gradcam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                   layer: str | nn.Module | None = None, interpolate_mode: str = "nearest") -> torch.Tensor:
    """Guided Backpropagation times the Grad-CAM map upsampled to the input, shape of ``inputs``."""
    cam = gradcam(model, inputs, target, layer=layer, relu_attributions=True)
    return guided_backprop(model, inputs, target) * upsample(cam, tuple(inputs.shape[2:]), interpolate_mode)
