"""FedProx: FedAvg with a proximal term that keeps local models near the global one (Li et al. 2020).

Federated Optimization in Heterogeneous Networks (MLSys 2020), Algorithm 2. Client ``k`` in round ``t``
(approximately) minimises

    h_k(w; x_t) = F_k(w) + (mu / 2) * ||w - x_t||^2

by local SGD from ``w = x_t``; the gradient of the extra term, ``mu * (w - x_t)``, pulls every step
back towards the global model, which limits client drift on heterogeneous data. ``mu = 0`` is
exactly FedAvg. The server step is unchanged (any :mod:`~archlab.federated.server` rule).
"""

from __future__ import annotations

import torch
from torch import nn

from .fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg plus ``mu / 2 * ||w - x_t||^2`` over the trained parameters."""

    def __init__(self, mu: float) -> None:
        self.mu = mu

    def penalty(self, model: nn.Module, global_params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.mu == 0:
            return None
        sq = [(p - global_params[name]).pow(2).sum() for name, p in model.named_parameters() if p.requires_grad]
        return 0.5 * self.mu * torch.stack(sq).sum()
