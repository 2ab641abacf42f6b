"""Server optimizers: how the server turns the clients' averaged update into a new global model.

Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2 (FedOpt). After a round the server
holds the weighted mean of the client updates, ``delta_t = sum_i w_i (x_i - x_t)``, and treats it as a
*pseudo-gradient* (a step direction, sign flipped):

    fedavg      x_{t+1} = x_t + eta * delta_t                    (eta = 1: McMahan et al. 2017's average)
    fedavgm     v_t = beta * v_{t-1} + delta_t;  x_{t+1} = x_t + eta * v_t          (Hsu et al. 2019)
    fedadagrad  v_t = v_{t-1} + delta_t^2
    fedyogi     v_t = v_{t-1} - (1 - beta2) * delta_t^2 * sign(v_{t-1} - delta_t^2)
    fedadam     v_t = beta2 * v_{t-1} + (1 - beta2) * delta_t^2
    (adaptive)  m_t = beta1 * m_{t-1} + (1 - beta1) * delta_t;   x_{t+1} = x_t + eta * m_t / (sqrt(v_t) + tau)

with ``m_{-1} = 0`` and ``v_{-1} = tau^2`` (Algorithm 2 asks ``v_{-1} >= tau^2``), and no bias
correction (Reddi et al. leave it out; their ``tau`` controls the adaptivity instead). Every rule
acts elementwise on every floating tensor of the model's state (parameters and float buffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ServerName = Literal["fedavg", "fedavgm", "fedadagrad", "fedyogi", "fedadam"]


@dataclass
class ServerOptConfig:
    name: ServerName = "fedavg"
    lr: float = 1.0
    """eta, the server learning rate."""
    momentum: float = 0.9
    """beta of fedavgm."""
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    """Adaptivity of fedadagrad/fedyogi/fedadam (Reddi et al. tune it in 1e-5 .. 1)."""


class ServerOptimizer:
    """One of the five rules above over a dict of named tensors (the global model's float state)."""

    def __init__(self, cfg: ServerOptConfig, like: dict[str, torch.Tensor]) -> None:
        self.cfg = cfg
        self.m = {k: torch.zeros_like(v) for k, v in like.items()} if cfg.name != "fedavg" else {}
        adaptive = cfg.name in ("fedadagrad", "fedyogi", "fedadam")
        self.v = {k: torch.full_like(v, cfg.tau ** 2) for k, v in like.items()} if adaptive else {}

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> None:
        """Update ``params`` in place from the averaged client update ``delta`` (same keys)."""
        c = self.cfg
        for k, x in params.items():
            d = delta[k]
            if c.name == "fedavg":
                x.add_(d, alpha=c.lr)
                continue
            if c.name == "fedavgm":
                self.m[k].mul_(c.momentum).add_(d)
                x.add_(self.m[k], alpha=c.lr)
                continue
            m, v, d2 = self.m[k], self.v[k], d * d
            m.mul_(c.beta1).add_(d, alpha=1 - c.beta1)
            if c.name == "fedadagrad":
                v.add_(d2)
            elif c.name == "fedyogi":
                v.sub_((1 - c.beta2) * d2 * torch.sign(v - d2))
            else:  # fedadam
                v.mul_(c.beta2).add_(d2, alpha=1 - c.beta2)
            x.add_(c.lr * m / (v.sqrt() + c.tau))

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for mine, saved in ((self.m, state["m"]), (self.v, state["v"])):
            for k in mine:
                mine[k].copy_(saved[k])
