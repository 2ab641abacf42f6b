"""SmoothGrad (Smilkov, Thorat, Kim, Viégas & Wattenberg 2017, "SmoothGrad: removing noise by adding noise").

Gradients of deep networks fluctuate sharply at small scales, so a single gradient map looks noisy.
SmoothGrad averages the map over Gaussian perturbations of the input (Eq. 3):

    M^_c(x) = 1/n  sum_{k=1..n}  M_c(x + N(0, sigma^2))

with ``M_c`` the saliency map (``base="saliency"``: the absolute gradient, as Captum's
``NoiseTunnel(Saliency)``) or the signed gradient (``base="gradient"``). ``stdevs`` is sigma in the
input's units (the paper suggests 10-20% of the input range).

Noise is drawn as one ``[n_samples * B, *F]`` block, example-major (example ``b``'s samples are rows
``b * n .. b * n + n - 1``), from ``generator`` if given.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ArchlabError
from .base import Target, check_positive, gradient, register_method, repeat_target


@register_method("smoothgrad")
def smoothgrad(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, n_samples: int = 5,
               stdevs: float = 1.0, base: str = "saliency", generator: torch.Generator | None = None) -> torch.Tensor:
    """The mean of ``n_samples`` saliency (or gradient) maps at noisy copies of ``inputs``."""
    check_positive("n_samples", n_samples)
    if not stdevs >= 0:
        raise ArchlabError(f"stdevs must be >= 0, got {stdevs}")
    if base not in ("saliency", "gradient"):
        raise ArchlabError(f"base must be 'saliency' or 'gradient', got {base!r}")
    b = inputs.shape[0]
    x = inputs.detach().repeat_interleave(n_samples, dim=0)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                        device=generator.device if generator is not None else x.device)
    noisy = x + stdevs * noise.to(x.device)
    grads = gradient(model, noisy, repeat_target(target, n_samples, interleave=True))
    if base == "saliency":
        grads = grads.abs()
    return grads.view(b, n_samples, *inputs.shape[1:]).mean(1)
