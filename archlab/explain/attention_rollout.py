"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", Sec. 3).

Raw attention of one layer says little about which *inputs* a token's final representation comes
from, because every layer mixes tokens again and the residual connection carries each token through.
Rollout models both: per layer, the head-averaged attention plus the identity (the residual path),
renormalised so that every row sums to one, and the layers multiplied from the first up,

    A~_l = normalize_rows( mean_heads(A_l) + I )          R = A~_L  A~_{L-1} ... A~_1

``R[i, j]`` is then the share of token ``i``'s last-layer representation that flows from input token
``j``. The map of an image classifier is the class token's row over the patches, ``R[0, 1:]``,
reshaped to the patch grid: ``[B, 1, grid, grid]`` (upsample it to draw it over the image).
``discard_ratio`` first zeroes that fraction of the weakest links of each head-averaged matrix, a
common noise filter. Rollout is class-agnostic: ``target`` is accepted for the common signature and
not used.

The model must return its attention weights: ``model.forward_with_attention(x) -> (logits,
[A_1, ..., A_L])`` with ``A_l`` of shape ``[B, heads, T, T]`` (archlab's ViT does).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ArchlabError
from .base import Target, register_method


def rollout(attentions: list[torch.Tensor], discard_ratio: float = 0.0) -> torch.Tensor:
    """``R = A~_L ... A~_1`` from per-layer weights ``[B, H, T, T]`` (first layer first): ``[B, T, T]``."""
    if not attentions:
        raise ArchlabError("attention rollout needs the attention weights of at least one layer")
    if not 0.0 <= discard_ratio < 1.0:
        raise ArchlabError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    b, _, t, _ = attentions[0].shape
    eye = torch.eye(t, dtype=torch.float32, device=attentions[0].device)
    r = eye.expand(b, t, t)
    for att in attentions:
        a = att.float().mean(dim=1)                                    # fuse the heads: [B, T, T]
        drop = int(t * t * discard_ratio)
        if drop:
            weakest = a.flatten(1).topk(drop, dim=1, largest=False).indices
            a = a.flatten(1).scatter(1, weakest, 0.0).view(b, t, t)
        a = a + eye
        r = (a / a.sum(-1, keepdim=True)) @ r
    return r


@register_method("attention_rollout")
def attention_rollout(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                      discard_ratio: float = 0.0) -> torch.Tensor:
    """The class token's rollout over the patches: ``[B, 1, grid, grid]``."""
    forward = getattr(model, "forward_with_attention", None)
    if forward is None:
        raise ArchlabError(f"{type(model).__name__} does not return attention weights (no forward_with_attention); "
                           "attention rollout needs a transformer such as archlab's vit")
    with torch.no_grad():
        _, attentions = forward(inputs.detach())
    r = rollout(list(attentions), discard_ratio)
    n = r.shape[-1] - 1
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ArchlabError(f"{n} tokens after the class token do not form a square patch grid")
    return r[:, 0, 1:].reshape(-1, 1, grid, grid)
