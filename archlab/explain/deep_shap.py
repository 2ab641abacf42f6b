"""DeepSHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions", Sec. 4.2):
DeepLIFT's multipliers with the expectation over a background distribution as the reference.

SHAP values take the absent features from a background distribution rather than one reference input.
DeepLIFT with reference ``b`` approximates the SHAP values of the linearised model around ``b``, so
averaging over background samples ``b_1 .. b_K`` approximates the SHAP values with that background:

    phi_i(x) = 1/K sum_k (x_i - b_{k,i}) * m_i(x, b_k)          (m: Rescale-rule multipliers, see deeplift.py)

and inherits summation-to-delta on average: ``sum_i phi_i(x) = F(x) - 1/K sum_k F(b_k)``. As Captum's
``DeepLiftShap``, every input is paired with every background sample in one batch of ``B * K`` rows.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ArchlabError
from .base import Target, register_method, repeat_target
from .deeplift import deeplift


@register_method("deep_shap")
def deep_shap(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
              baselines: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Mean DeepLIFT attributions over the background samples ``baselines`` ``[K, *F]`` (K >= 2)."""
    x = inputs.detach()
    b = torch.as_tensor(baselines, dtype=x.dtype, device=x.device)
    if b.dim() != x.dim() or b.shape[1:] != x.shape[1:] or len(b) < 2:
        raise ArchlabError(f"deep_shap needs baselines of shape [K >= 2, {', '.join(map(str, x.shape[1:]))}] "
                           f"(background samples), got {tuple(b.shape)}")
    k = len(b)
    xs = x.repeat_interleave(k, dim=0)                   # input i's copies are rows i*K .. i*K + K - 1
    bs = b.repeat(len(x), *([1] * (x.dim() - 1)))
    attr = deeplift(model, xs, repeat_target(target, k, interleave=True), baselines=bs, eps=eps)
    return attr.view(len(x), k, *x.shape[1:]).mean(1)
