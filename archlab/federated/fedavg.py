"""FedAvg and FedSGD: clients run local SGD from the global model; the server averages (McMahan et al. 2017).

Communication-Efficient Learning of Deep Networks from Decentralized Data, Algorithm 1. Round ``t``:

    S_t  <- a random subset of max(C * K, 1) of the K clients                     (the loop samples)
    for each client k in S_t, from x_t:                                            (ClientUpdate)
        for each local epoch e = 1..E, for each batch b of size B of the client's n_k examples:
            w <- w - eta * grad l(w; b)
        x^k_{t+1} <- w
    x_{t+1} <- sum_k (n_k / n) x^k_{t+1}        i.e.  x_t + sum_k (n_k / n) (x^k_{t+1} - x_t)

The server step is written as the second form, so that it becomes one case of the server optimizers
in :mod:`archlab.federated.server` (``fedavg`` with ``eta = 1``). FedSGD is the special case
``E = 1, B = n_k`` (one full-batch gradient step per client; the loop's ``full_batch``).

:class:`FedAvg` is also the base class of the other client algorithms: FedProx adds a term to the
local loss (:meth:`penalty`), SCAFFOLD corrects the local gradients (:meth:`correct`) and keeps
per-client state (:meth:`end_client`, :meth:`end_round`, :meth:`state_dict`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class FedAvg:
    """Plain local training: cross-entropy, the client optimizer, no correction."""

    def penalty(self, model: nn.Module, global_params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """An extra term of the local objective (None: none)."""
        return None

    def correct(self, model: nn.Module, client: int) -> None:
        """Change the local gradients in place before the optimizer step (default: no change)."""

    def local_train(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    global_params: dict[str, torch.Tensor], client: int) -> tuple[int, float]:
        """ClientUpdate: one optimizer step per batch. Returns (steps taken, summed loss of the steps)."""
        model.train()
        losses = []
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            extra = self.penalty(model, global_params)
            (loss if extra is None else loss + extra).backward()
            self.correct(model, client)
            optimizer.step()
            losses.append(loss.detach())
        # The losses leave the tensors once, at the end (not a .item() per step), and are added up in step order
        # in double precision as before (an explicit loop: sum() of floats compensates from Python 3.12 on).
        loss_sum = 0.0
        for v in torch.stack(losses).tolist() if losses else []:
            loss_sum += v
        return len(losses), loss_sum

    def end_client(self, client: int, model: nn.Module, global_params: dict[str, torch.Tensor], steps: int,
                   lr: float) -> None:
        """After client ``client`` trained ``steps`` steps at learning rate ``lr`` (default: nothing to keep)."""

    def end_round(self, clients: list[int], total_clients: int) -> None:
        """After the server aggregated the round of ``clients`` (default: nothing to do)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
