"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic
Intelligence", Eq. 3-5).

While task mu trains, every parameter accumulates its contribution to the decrease of the loss along
the optimisation path (a discrete path integral over the steps t, with g the gradient of the
training loss at the step and Delta theta the step's parameter change):

    omega_i^mu = sum_t  -g_i(t) * Delta theta_i(t)

At the end of the task it becomes an importance, normalised by how far the parameter moved,

    Omega_i += omega_i^mu / ( (theta_i(end) - theta_i(start))^2 + xi )

and later tasks pay c * sum_i Omega_i (theta_i - theta*_i)^2, theta* the parameters at the end of
the last task. As in the authors' and van de Ven & Tolias' code, g is the gradient of the full
training loss (surrogate included).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Method, MethodContext, parameters, register_method


@register_method("si")
class SI(Method):
    """SI: importance from each parameter's share of the loss decrease along the training path."""

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        params = parameters(self.model)
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        self.omega = {k: v.clone() for k, v in zeros.items()}        # running path integral of this task
        self.importance = {k: v.clone() for k, v in zeros.items()}   # Omega
        self.anchor = {k: v.detach().clone() for k, v in params.items()}  # theta* (end of the previous task)
        self.start = {k: v.detach().clone() for k, v in params.items()}   # theta at the start of this task
        self.before: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.tasks_done = 0

    def loss(self, x: torch.Tensor, target: torch.Tensor, task: int) -> tuple[torch.Tensor, dict[str, float]]:
        ce = self.current_loss(x, target, task)
        if not self.tasks_done:
            return ce, {}
        pen = self.cfg.si_c * sum((self.importance[k] * (p - self.anchor[k]).pow(2)).sum()
                                  for k, p in parameters(self.model).items())
        return ce + pen, {"penalty": float(pen.detach())}

    def after_backward(self) -> None:
        params = parameters(self.model)
        self.grads = {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}
        self.before = {k: p.detach().clone() for k, p in params.items()}

    def after_step(self) -> None:
        for k, p in parameters(self.model).items():
            if k in self.grads:
                self.omega[k] -= self.grads[k] * (p.detach() - self.before[k])

    def end_task(self, task: int) -> None:
        for k, p in parameters(self.model).items():
            moved = p.detach() - self.start[k]
            self.importance[k] += self.omega[k] / (moved.pow(2) + self.cfg.si_xi)
            self.omega[k].zero_()
            self.anchor[k] = p.detach().clone()
            self.start[k] = p.detach().clone()
        self.tasks_done += 1

    def state_dict(self) -> dict[str, Any]:
        return {"omega": self.omega, "importance": self.importance, "anchor": self.anchor, "start": self.start,
                "tasks_done": self.tasks_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.omega, self.importance = dict(state["omega"]), dict(state["importance"])
        self.anchor, self.start, self.tasks_done = dict(state["anchor"]), dict(state["start"]), int(state["tasks_done"])
