"""Factories for ``archlab bench explain``: archlab.explain versus Captum (Integrated Gradients) and shap
(KernelSHAP), same model, weights, images, baselines and budget.

- ``ig``: Integrated Gradients with ``n_steps`` Gauss-Legendre points for a batch of MNIST-sized images,
  every path point in one batch on both sides (Captum: ``internal_batch_size=None``).
- ``kernel_shap``: KernelSHAP over a grid of 4x4-pixel superpixels (49 groups), ``n_samples`` coalitions per
  image on both sides. shap's ``KernelExplainer`` explains one image at a time through a NumPy function of
  the coalition mask (the usual way to use it on images); archlab evaluates all coalitions of all images in
  one batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import archlab
import archlab.explain as E


def _setup(model: str, batch: int, threads: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if model == "vit":  # the vit_mnist recipe's model
        net = archlab.create("vit", image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=6,
                             heads=4, mlp_dim=128)
    else:
        net = archlab.create(model)
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    target = torch.arange(batch) % 10
    return net.eval(), x, target


def _grid() -> torch.Tensor:
    cells = torch.arange(28) // 4
    return cells[:, None] * 7 + cells[None]


def ours(method: str = "ig", model: str = "lenet5", batch: int = 32, n_steps: int = 256, n_samples: int = 512,
         threads: int = 2, fast: bool = True, **_: Any) -> Callable[[], None]:
    net, x, target = _setup(model, batch, threads)
    if method == "ig":   # fast=False: the reference, without integrated_gradients_fast.py's first-layer path
        return lambda: E.attribute(net, x, target, "integrated_gradients", n_steps=n_steps, fast=fast)
    mask = _grid()[None]
    return lambda: E.attribute(net, x, target, "kernel_shap", feature_mask=mask, n_samples=n_samples)


def reference(**params: Any) -> Callable[[], None]:
    """``ours`` without the fast path (Integrated Gradients' reference), to time the two side by side."""
    return ours(**{**params, "fast": False})


def peer(method: str = "ig", model: str = "lenet5", batch: int = 32, n_steps: int = 256, n_samples: int = 512,
         threads: int = 2, **_: Any) -> Callable[[], None]:
    net, x, target = _setup(model, batch, threads)
    if method == "ig":
        from captum.attr import IntegratedGradients

        warnings.filterwarnings("ignore", module="captum")
        ig = IntegratedGradients(net)
        return lambda: ig.attribute(x, target=target, n_steps=n_steps)
    import shap

    mask = _grid()

    def run() -> None:
        for i in range(len(x)):
            xi, ti = x[i], int(target[i])

            def f(z: np.ndarray, xi: torch.Tensor = xi, ti: int = ti) -> np.ndarray:
                keep = torch.from_numpy(z).float()[:, mask][:, None]          # [S, 1, 28, 28]
                with torch.no_grad():
                    return net(keep * xi).numpy()[:, ti]

            shap.KernelExplainer(f, np.zeros((1, 49))).shap_values(np.ones((1, 49)), nsamples=n_samples, silent=True)

    return run
