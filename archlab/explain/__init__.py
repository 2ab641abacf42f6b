"""Interpretability: which input features a prediction rests on, through one API.

    import archlab.explain as E
    attr = E.attribute(model, images, target=labels, method="integrated_gradients", n_steps=64)
    E.methods()          # every method name

One method per file, each a plain function ``method(model, inputs, target, **options)`` that returns
attributions with the shape of ``inputs`` (Grad-CAM: the shape of its layer's map). ``model`` is any
``nn.Module`` returning ``[B, C]`` scores; registered archlab models add conveniences (a default
Grad-CAM layer). Keyword names follow Captum's where the concept is the same. Faithfulness metrics
(deletion / insertion curves) are in :mod:`archlab.explain.faithfulness`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ArchlabError
from . import (  # noqa: F401 - importing a method module registers it
    attention_flow,
    attention_rollout,
    deep_shap,
    deeplift,
    gradcam,
    guided_gradcam,
    input_x_gradient,
    integrated_gradients,
    kernel_shap,
    lime,
    lrp,
    occlusion,
    saliency,
    shapley,
    smoothgrad,
)
from .base import METHODS, Target, eval_mode


def methods() -> list[str]:
    """Names of every attribution method, as ``attribute(..., method=NAME)`` accepts them."""
    return sorted(METHODS)


def attribute(model: nn.Module, inputs: torch.Tensor, target: Target = None, method: str = "integrated_gradients",
              **options: Any) -> torch.Tensor:
    """Attributions of ``model``'s ``target`` score at ``inputs`` by ``method`` (the model is put in eval mode
    for the call and restored after); ``options`` are the method's keywords (see its module)."""
    fn = METHODS.get(method)
    if fn is None:
        raise ArchlabError(f"unknown attribution method {method!r}; methods: {', '.join(methods())}")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ArchlabError("inputs must be a non-empty tensor [B, ...]")
    try:
        with eval_mode(model):
            return fn(model, inputs, target, **options).detach()
    except TypeError as e:
        if "unexpected keyword argument" in str(e) or "missing" in str(e):
            raise ArchlabError(f"{method}: {e}") from None
        raise


__all__ = ["attribute", "methods"]
