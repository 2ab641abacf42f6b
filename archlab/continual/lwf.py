"""Learning without Forgetting (Li & Hoiem 2017, TPAMI), in the form van de Ven & Tolias 2019 use
for all three scenarios (their Sec. 4: "replay" of the current task's inputs, labelled by the model
as it was after the previous task).

While task t (0-based) trains, a frozen copy of the model from the end of task t-1 labels the current
inputs with soft targets at temperature T, and the loss mixes the new task with their distillation,
each task so far weighted equally:

    L = 1/(t+1) * CE(current) + t/(t+1) * T^2 * KD
    KD = - sum_{u in old} softmax(z_old[old] / T)_u log softmax(z[S] / T)_u

In Task-IL the distillation is taken per previous task on its own units and averaged (S = old = that
task's units); in Domain-IL S = old = the shared units. In Class-IL ``old`` are the units active before
task t and S (``lwf_softmax``) is either every unit active now ("active", the default: van de Ven &
Tolias' code, ``encoder.py`` + ``utils.loss_fn_kd``, pads the old model's probabilities with zeros for
the new task's units, so the distillation also pushes the new units down on the current inputs) or
the old units only ("old": the new units get no distillation gradient at all).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from .base import Method, MethodContext, active_cross_entropy, register_method


def distillation(logits: torch.Tensor, old_logits: torch.Tensor, units: torch.Tensor,
                 temperature: float, softmax_units: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * soft cross-entropy of the new outputs against the old ones on ``units``, mean over the batch.
    ``softmax_units`` (a superset of ``units``, ``units`` first): the new outputs' softmax runs over them,
    the targets are zero on the extra ones (default: ``units``)."""
    soft = F.softmax(old_logits[:, units] / temperature, dim=1)
    over = units if softmax_units is None else softmax_units
    log_p = F.log_softmax(logits[:, over] / temperature, dim=1)[:, : len(units)]
    return -(soft * log_p).sum(1).mean() * temperature ** 2


@register_method("lwf")
class LwF(Method):
    """LwF: distil the previous model's outputs on the current task's inputs."""

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.previous: torch.nn.Module | None = None

    def loss(self, x: torch.Tensor, target: torch.Tensor, task: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.model(x)
        ce = active_cross_entropy(logits, target, self.stream.active(task, task).to(x.device))
        if self.previous is None or task == 0:
            return ce, {}
        with torch.no_grad():
            old = self.previous(x)
        if self.stream.scenario == "task":
            kd = sum(distillation(logits, old, self.stream.units[j].to(x.device), self.cfg.lwf_temperature)
                     for j in range(task)) / task
        else:
            before = self.stream.active(task - 1, task - 1).to(x.device)
            now = None
            if self.stream.scenario == "class" and self.cfg.lwf_softmax == "active":
                new = self.stream.units[task].to(x.device)
                now = torch.cat([before, new[~torch.isin(new, before)]])
            kd = distillation(logits, old, before, self.cfg.lwf_temperature, now)
        w = 1.0 / (task + 1)
        return w * ce + (1 - w) * kd, {"distill": float(kd.detach())}

    def end_task(self, task: int) -> None:
        self.previous = copy.deepcopy(self.model).eval()
        for p in self.previous.parameters():
            p.requires_grad_(False)

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous.state_dict() if self.previous is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["previous"] is not None:
            self.end_task(-1)
            self.previous.load_state_dict(state["previous"])
