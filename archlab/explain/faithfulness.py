"""Faithfulness of an attribution map: deletion and insertion curves (Petsiuk, Das & Saenko 2018,
"RISE: Randomized Input Sampling for Explanation of Black-box Models", Sec. 4.1).

If a map ranks the pixels that matter first, then

- **deletion**: removing pixels in that order (setting them to ``baseline``) makes the class
  probability fall fast -- a *low* area under the curve is good;
- **insertion**: adding them in that order to a blurred copy of the image (so that the model sees
  no sharp edges it did not get from the map) makes the probability rise fast -- a *high* area is good.
  ``start="baseline"`` inserts into the blank baseline image instead: on MNIST a blurred digit is
  still recognised (a random ranking already scores ~0.9 from blur), so insertion into black
  separates the methods better.

Each curve has ``steps + 1`` points: the softmax probability of the target class after
``round(k / steps * N)`` of the ``N`` positions were changed, ``k = 0 .. steps``; its area is the
trapezoid rule over the fraction in [0, 1]. Attributions with channels are summed over the channel
axis first, so a position (all of its channels) is deleted or inserted at once. A random ranking is the
reference every method has to beat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError
from .base import check_positive


def gaussian_blur(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """``[B, C, H, W]`` images blurred by a separable Gaussian of std ``sigma`` (reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _order(attributions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Positions ``[B, H*W]`` from the most to the least important."""
    a = attributions
    if a.dim() == images.dim():
        a = a.sum(1) if a.shape[1] > 1 else a[:, 0]
    if a.shape[-2:] != images.shape[-2:]:
        raise ArchlabError(f"attributions of shape {tuple(attributions.shape)} do not cover images of shape "
                           f"{tuple(images.shape)} (upsample layer maps first)")
    return a.flatten(1).argsort(dim=1, descending=True, stable=True)


@torch.no_grad()
def curve(model: nn.Module, images: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
          mode: str = "deletion", steps: int = 28, baseline: float = 0.0, blur_sigma: float = 2.0,
          start: str = "blur") -> torch.Tensor:
    """Target-class probabilities ``[B, steps + 1]`` along the deletion or insertion path (insertion
    from a blurred copy, ``start="blur"``, or from the baseline image, ``start="baseline"``)."""
    check_positive("steps", steps)
    if images.dim() != 4:
        raise ArchlabError(f"deletion/insertion curves need images [B, C, H, W], got {tuple(images.shape)}")
    b, c, h, w = images.shape
    order = _order(attributions, images)
    if mode == "deletion":
        start, end = images, torch.full_like(images, baseline)
    elif mode == "insertion" and start in ("blur", "baseline"):
        start, end = gaussian_blur(images, blur_sigma) if start == "blur" else torch.full_like(images, baseline), images
    else:
        raise ArchlabError(f"mode must be 'deletion' or 'insertion' (start 'blur' or 'baseline'), got {mode!r}, "
                           f"{start!r}")
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=images.device).expand(b, -1))   # position -> its rank
    probs = []
    for k in range(steps + 1):
        changed = (rank < round(k / steps * h * w)).view(b, 1, h, w)
        x = torch.where(changed, end, start)
        probs.append(model(x).softmax(-1).gather(1, target.view(-1, 1))[:, 0])
    return torch.stack(probs, dim=1)


def area(probs: torch.Tensor) -> torch.Tensor:
    """Area under each curve ``[B, K+1]`` over the fraction in [0, 1] (trapezoid rule): ``[B]``."""
    k = probs.shape[1] - 1
    return (probs[:, 1:] + probs[:, :-1]).sum(1) / (2 * k)
