"""Weight initialisation schemes shared by every model family.

Every model config has ``init: InitScheme = "default"`` and calls :func:`init_weights` at the end of
its ``__init__``. The schemes, for a weight ``W`` with ``fan_in`` / ``fan_out`` inputs / outputs:

- ``"default"``: leave PyTorch's own initialisation untouched (Kaiming-uniform with ``a=sqrt(5)``
  for Linear/Conv, ``U(-1/sqrt(H), 1/sqrt(H))`` for recurrent layers).
- ``"xavier"`` (Glorot & Bengio 2010): ``W ~ U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``.
- ``"he"`` (He et al. 2015): ``W ~ N(0, 2 / fan)`` with ``fan = fan_out`` for convolutions (as in
  the ResNet papers, which keeps the backward signal's variance) and ``fan = fan_in`` for Linear.
- ``"orthogonal"`` (Saxe et al. 2014): ``W`` a (semi-)orthogonal matrix; conv kernels are
  flattened to ``[out, in * k...]`` first.

Whatever the scheme (except ``"default"``), every bias of these layers is zero and every affine
normalisation layer starts as the identity (weight 1, bias 0).

Recurrent layers (``nn.RNN/LSTM/GRU`` and their cells) stack one matrix per gate in each
``weight_ih`` / ``weight_hh`` (``[gates * H, in]``); the scheme is applied to each gate's block
separately, because each gate is its own affine map: with ``"orthogonal"`` every gate's recurrent
matrix ``W_h* in R^{H x H}`` is exactly orthogonal, which is what keeps the recurrence from
exploding or vanishing at initialisation. Layers not listed (embeddings, custom parameters) keep
PyTorch's initialisation.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

InitScheme = Literal["default", "xavier", "he", "orthogonal"]
INIT_SCHEMES: tuple[str, ...] = get_args(InitScheme)

# _NormBase covers BatchNorm*, SyncBatchNorm and InstanceNorm*.
_NORMS = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def _init_matrix(weight: torch.Tensor, scheme: str, fan_mode: Literal["fan_in", "fan_out"]) -> None:
    if scheme == "xavier":
        nn.init.xavier_uniform_(weight)
    elif scheme == "he":
        nn.init.kaiming_normal_(weight, mode=fan_mode, nonlinearity="relu")
    else:
        nn.init.orthogonal_(weight)


@torch.no_grad()
def init_weights(module: nn.Module, scheme: str) -> nn.Module:
    """Initialise every Linear, Conv, recurrent and normalisation layer of ``module`` in place.

    Args:
        module: any module; its submodules are visited recursively.
        scheme: one of :data:`INIT_SCHEMES` (see the module docstring).

    Returns:
        ``module`` itself, for chaining.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return module
    for m in module.modules():
        if isinstance(m, (nn.Linear, _ConvNd)):
            _init_matrix(m.weight, scheme, "fan_out" if isinstance(m, _ConvNd) else "fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.RNNBase, nn.RNNCellBase)):
            for name, p in m.named_parameters(recurse=False):
                if name.startswith("bias"):
                    nn.init.zeros_(p)
                elif name.startswith(("weight_ih", "weight_hh")):
                    for gate in p.split(m.hidden_size, dim=0):
                        _init_matrix(gate, scheme, "fan_in")
                else:  # LSTM projection weight_hr: a single [proj_size, H] matrix
                    _init_matrix(p, scheme, "fan_in")
        elif isinstance(m, _NORMS):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module
