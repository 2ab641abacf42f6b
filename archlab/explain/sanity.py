"""Sanity check for saliency methods: cascading model-parameter randomization (Adebayo, Gilmer,
Muelly, Goodfellow, Hardt & Kim 2018, "Sanity Checks for Saliency Maps", Sec. 3.1).

An explanation of a *trained* model should depend on what the model learned. Re-initialise the
weights layer by layer from the output down to the input and compare each map with the map of the
trained model; a method that keeps producing the same picture (say, an edge detector of the input)
explains the input, not the model, and *fails* the check. The similarity is the Spearman rank
correlation of the absolute maps (the paper's "ABS" variant), averaged over examples; the explained
class is the trained model's prediction throughout.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from .base import leaf_modules


def average_ranks(t: torch.Tensor) -> torch.Tensor:
    """Ranks ``0 .. n-1`` of each row of ``t`` ``[B, n]``, tied values sharing their average rank."""
    t = t.contiguous()
    ordered = t.sort(dim=1).values
    lo = torch.searchsorted(ordered, t, right=False)
    hi = torch.searchsorted(ordered, t, right=True)
    return (lo + hi - 1).double() / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b`` (``[B, ...]`` -> ``[B]``):
    the Pearson correlation of their average ranks (ties matter: maps with many exact zeros)."""
    def centred(t: torch.Tensor) -> torch.Tensor:
        r = average_ranks(t.flatten(1))
        r = r - r.mean(1, keepdim=True)
        return r / r.norm(dim=1, keepdim=True).clamp(min=1e-12)

    return (centred(a) * centred(b)).sum(1)


def layers_top_down(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules with parameters, from the output layer down to the first one."""
    return [(n, m) for n, m in leaf_modules(model) if any(True for _ in m.parameters(recurse=False))][::-1]


def cascading_randomization(model: nn.Module, images: torch.Tensor, target: torch.Tensor,
                            explain: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                            seed: int = 0) -> list[tuple[str, float]]:
    """``[(layer randomised last, mean Spearman |map| correlation with the trained model's map), ...]``,
    starting with ``("none", 1.0)``; layers are re-initialised cumulatively from the top."""
    reference = explain(model, images, target).abs()
    randomized = copy.deepcopy(model)
    torch.manual_seed(seed)
    out = [("none", 1.0)]
    for name, layer in layers_top_down(randomized):
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
        else:
            for p in layer.parameters(recurse=False):
                nn.init.normal_(p, std=0.05)
        out.append((name, float(spearman(reference, explain(randomized, images, target).abs()).mean())))
    return out
