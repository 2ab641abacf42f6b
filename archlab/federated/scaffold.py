"""SCAFFOLD: control variates that correct client drift (Karimireddy et al. 2020).

SCAFFOLD: Stochastic Controlled Averaging for Federated Learning (ICML 2020), Algorithm 1 with
option II. The server keeps a control variate ``c`` and every client ``i`` its own ``c_i`` (both
start at 0, one tensor per trained parameter). Client ``i`` in round ``t``, from ``y = x_t``:

    K local steps:   y <- y - eta_l * (g_i(y) - c_i + c)             (:meth:`Scaffold.correct`)
    c_i^+ <- c_i - c + (x_t - y) / (K * eta_l)                         (:meth:`Scaffold.end_client`)

and after the round (``S`` the sampled clients, ``N`` all clients):

    x_{t+1} <- x_t + eta_g * mean_{i in S} (y_i - x_t)                 (the loop's server step)
    c       <- c + (1 / N) * sum_{i in S} (c_i^+ - c_i)               (:meth:`Scaffold.end_round`)

``-c_i + c`` replaces the client's own gradient direction by an estimate of the global one. With a
momentum client optimizer ``(x_t - y) / (K * eta_l)`` is no longer the mean gradient exactly; the
paper's algorithm uses plain SGD. Per-client variates are kept only for clients that have trained
(they travel in the checkpoint), so memory grows with the clients seen, at most ``N`` model copies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .fedavg import FedAvg


class Scaffold(FedAvg):
    """FedAvg with SCAFFOLD's gradient correction and control variates."""

    def __init__(self, model: nn.Module) -> None:
        self.c = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
        self.c_i: dict[int, dict[str, torch.Tensor]] = {}
        self._dc: dict[str, torch.Tensor] = {n: torch.zeros_like(v) for n, v in self.c.items()}

    def client_variate(self, client: int) -> dict[str, torch.Tensor]:
        if client not in self.c_i:
            self.c_i[client] = {n: torch.zeros_like(v) for n, v in self.c.items()}
        return self.c_i[client]

    @torch.no_grad()
    def correct(self, model: nn.Module, client: int) -> None:
        c_i = self.client_variate(client)
        for n, p in model.named_parameters():
            if p.grad is not None and n in self.c:
                p.grad.add_(self.c[n] - c_i[n])

    @torch.no_grad()
    def end_client(self, client: int, model: nn.Module, global_params: dict[str, torch.Tensor], steps: int,
                   lr: float) -> None:
        if steps == 0 or lr == 0:
            return
        c_i = self.client_variate(client)
        for n, y in model.named_parameters():
            if n not in self.c:
                continue
            new = c_i[n] - self.c[n] + (global_params[n] - y) / (steps * lr)
            self._dc[n].add_(new - c_i[n])
            c_i[n] = new

    @torch.no_grad()
    def end_round(self, clients: list[int], total_clients: int) -> None:
        for n, dc in self._dc.items():
            self.c[n].add_(dc / total_clients)
            dc.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"c": self.c, "c_i": self.c_i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.c = {n: v.clone() for n, v in state["c"].items()}
        self.c_i = {int(k): {n: v.clone() for n, v in d.items()} for k, d in state["c_i"].items()}
