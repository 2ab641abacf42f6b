"""Occlusion (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks", Sec. 4.2).

Slide a window over the input, replace what it covers by the baseline, and record how much the target
score drops. Each feature's attribution is the average drop over the windows that cover it:

    A_i = ( sum_{windows W containing i} [S(x) - S(x with W set to the baseline)] ) / #{W containing i}

Window positions start at multiples of ``strides`` along every non-batch axis (the window spans the
channel axis too if ``sliding_window_shapes`` says so); as in Captum, ``ceil((D - w) / s) + 1``
positions are used per axis, the last window clipped at the border. Only forward passes: the method
needs no gradient and treats the model as a black box. ``perturbations_per_eval`` occluded copies of
the batch go through the model at once.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from ..errors import ArchlabError
from .base import Target, baseline_like, check_positive, register_method, repeat_target, score


def window_masks(shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...]) -> torch.Tensor:
    """One boolean mask of ``shape`` per window position: ``[P, *shape]``."""
    starts = []
    for d, w, s in zip(shape, window, strides, strict=True):
        if not 1 <= w <= d:
            raise ArchlabError(f"sliding window {window} does not fit inputs of shape {shape}")
        if s < 1 or (s > w and d > w):
            raise ArchlabError(f"strides must be in [1, window size], got {strides} for window {window}")
        starts.append([k * s for k in range(math.ceil((d - w) / s) + 1)])
    masks = torch.zeros(math.prod(len(s) for s in starts), *shape, dtype=torch.bool)
    for p, corner in enumerate(itertools.product(*starts)):
        masks[p][tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True))] = True
    return masks


@register_method("occlusion")
def occlusion(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
              sliding_window_shapes: tuple[int, ...], strides: int | tuple[int, ...] = 1,
              baselines: float | torch.Tensor | None = None, perturbations_per_eval: int = 16) -> torch.Tensor:
    """Average score drop over the occluding windows covering each feature, shape of ``inputs``."""
    x = inputs.detach()
    shape = tuple(x.shape[1:])
    window = tuple(sliding_window_shapes)
    if len(window) != len(shape):
        raise ArchlabError(f"sliding_window_shapes {window} needs one size per input axis after the batch "
                           f"(inputs {tuple(x.shape)})")
    stride = (strides,) * len(shape) if isinstance(strides, int) else tuple(strides)
    check_positive("perturbations_per_eval", perturbations_per_eval)
    masks = window_masks(shape, window, stride).to(x.device)
    base = baseline_like(x, baselines)
    b = x.shape[0]
    with torch.no_grad():
        full = score(model, x, target)                           # [B]
        total = torch.zeros_like(x)
        count = torch.zeros(shape, dtype=x.dtype, device=x.device)
        for start in range(0, len(masks), perturbations_per_eval):
            m = masks[start:start + perturbations_per_eval]      # [P, *F]
            p = len(m)
            occluded = torch.where(m[:, None], base[None], x[None])   # [P, B, *F]
            drop = full[None] - score(model, occluded.reshape(p * b, *shape), repeat_target(target, p)).view(p, b)
            total += (drop.view(p, b, *([1] * len(shape))) * m[:, None]).sum(0)
            count += m.sum(0)
    return total / count
