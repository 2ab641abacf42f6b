"""Grad-CAM (Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra 2017, "Grad-CAM: Visual Explanations
from Deep Networks via Gradient-based Localization").

A layer's feature maps ``A^k`` (``[B, K, H, W]``, by default the output of the last convolution that
still has more than one position, see :func:`.base.find_layer`) keep
the spatial layout of the image and, deep in the network, class-level semantics. Grad-CAM weighs each
map by the spatially averaged gradient of the class score (Eq. 1) and keeps the positive part (Eq. 2):

    alpha_k^c = 1/(H W) sum_{i,j} dS_c / dA^k_{ij}
    L^c       = ReLU( sum_k alpha_k^c A^k )                       -> [B, 1, H, W]

``relu_attributions=False`` skips the ReLU (Captum's ``LayerGradCam`` default is False; the paper's
is the ReLU, used here). :func:`upsample` brings the map to the input resolution for display or for
Guided Grad-CAM. Works for any layer whose output is ``[B, K, *spatial]`` (1-d, 2-d or 3-d), and for a
``[B, K]`` layer (then ``alpha = dS/dA`` and the map is ``sum_k alpha_k A_k``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Target, find_layer, register_method, select


def layer_activation_and_gradient(model: nn.Module, inputs: torch.Tensor, target: Target,
                                  layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of ``layer`` for ``inputs`` and the gradient of the target score with respect to it."""
    seen: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: object, out: torch.Tensor) -> None:
        seen.append(out)

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = inputs.detach().requires_grad_(True)  # so that the layer output is part of a graph
            scores = select(model(x), target)
            if not seen:
                raise RuntimeError("the chosen layer was not called in the forward pass")
            (grad,) = torch.autograd.grad(scores.sum(), seen[0])
    finally:
        handle.remove()
    return seen[0].detach(), grad


def upsample(cam: torch.Tensor, size: tuple[int, ...], mode: str = "nearest") -> torch.Tensor:
    """A ``[B, 1, *spatial]`` map resized to ``size`` (the input's spatial shape)."""
    if tuple(cam.shape[2:]) == tuple(size):
        return cam
    return F.interpolate(cam, size=size, mode=mode)


@register_method("gradcam")
def gradcam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
            layer: str | nn.Module | None = None, relu_attributions: bool = True) -> torch.Tensor:
    """``ReLU(sum_k alpha_k A^k)`` at ``layer``: shape ``[B, 1, *layer spatial dims]``."""
    acts, grads = layer_activation_and_gradient(model, inputs, target, find_layer(model, layer, inputs))
    spatial = tuple(range(2, grads.dim()))
    alpha = grads.mean(dim=spatial, keepdim=True) if spatial else grads
    cam = (alpha * acts).sum(dim=1, keepdim=True)
    return F.relu(cam) if relu_attributions else cam
