"""Coalitions of features, shared by the Shapley-value methods and LIME.

A *coalition* ``z in {0, 1}^d`` keeps the features (or groups of features) with ``z_i = 1`` at their
input values and sets the others to the baseline:

    h_x(z) = z * x + (1 - z) * x'          (per group, through ``feature_mask``)
    v(z)   = S_c(h_x(z))                   the "value" of the coalition

``feature_mask`` (Captum's name) is an integer tensor broadcastable to one example's shape whose
values ``0 .. d-1`` name each feature's group (a superpixel, a word, a column); by default every
scalar feature is its own group.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ArchlabError
from .base import Target, repeat_target, score


def groups(inputs: torch.Tensor, feature_mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """The group id of every feature of one example (shape ``inputs.shape[1:]``) and the number of groups."""
    shape = inputs.shape[1:]
    if feature_mask is None:
        return torch.arange(shape.numel(), device=inputs.device).view(shape), shape.numel()
    mask = torch.as_tensor(feature_mask, device=inputs.device)
    if mask.dim() == inputs.dim() and mask.shape[0] == 1:
        mask = mask[0]
    try:
        mask = torch.broadcast_to(mask, shape).long()
    except RuntimeError:
        raise ArchlabError(f"feature_mask of shape {tuple(mask.shape)} does not broadcast to one example "
                           f"of shape {tuple(shape)}") from None
    d = int(mask.max()) + 1
    if int(mask.min()) != 0 or len(torch.unique(mask)) != d:
        raise ArchlabError("feature_mask must number its groups 0 .. d-1 without gaps, "
                           f"got ids {mask.unique().tolist()}")
    return mask, d


def values(model: nn.Module, inputs: torch.Tensor, target: Target, baseline: torch.Tensor, mask: torch.Tensor,
           z: torch.Tensor, batch_rows: int = 4096) -> torch.Tensor:
    """``v(z)`` for every coalition row of ``z`` ``[S, d]`` and every example: ``[B, S]``."""
    b = inputs.shape[0]
    keep = z.to(inputs.device, inputs.dtype)[:, mask]     # [S, *F]: 1 where the feature's group is kept
    per = max(1, batch_rows // b)
    out = []
    with torch.no_grad():
        for start in range(0, len(keep), per):
            k = keep[start:start + per, None]             # [s, 1, *F]
            h = k * inputs[None] + (1 - k) * baseline[None]   # [s, B, *F]
            s = len(k)
            out.append(score(model, h.reshape(s * b, *inputs.shape[1:]), repeat_target(target, s)).view(s, b))
    return torch.cat(out).T.cpu()  # the regressions on coalitions run on the CPU, in float64
