"""Progressive neural networks (Rusu et al. 2016, "Progressive Neural Networks", arXiv:1606.04671):
one column per task; a new task trains a fresh column that reads the frozen earlier columns through
lateral adapters, so nothing an earlier task computes ever changes.

Column k is an MLP with the recipe model's widths (``in_features``, ``hidden``; ReLU, no norm or
dropout), with layers i = 1..L (L-1 hidden, the last the output layer over all ``outputs`` units):

    h_1^(k) = relu(W_1^(k) x)
    h_i^(k) = relu(W_i^(k) h_{i-1}^(k) + U_i^(k) relu(V_i^(k) (alpha_i^(k) * [h_{i-1}^(1); ..; h_{i-1}^(k-1)])))
                                                                                     (their eq. 2, i >= 2)

(the output layer the same without the outer relu). [.;.] concatenates the earlier columns' layer
i-1 activations (k-1 columns x width, (B, (k-1) w)); V_i^(k) projects them to ``progressive_adapter``
units, U_i^(k) to the layer's width, alpha_i^(k) a learned scalar (initialised to 1). Column 0 has no
laterals.

Task t (Task-IL) trains column t only: columns < t run without gradient and their parameters, like
those of columns > t, get no gradient (the optimizer skips them), so R[i, j] = R[j, j] for i >= j.
Task j is evaluated with columns 0..j and column j's output units. The columns are the method's own
network, optimized by ``[optim.columns]`` (default: the recipe's ``[optim]``); the recipe's model only
fixes their widths and is not trained (its saved weights are the untrained initialisation; the columns
live in the run's checkpoint, and the run's numbers in ``accuracy_matrix.json``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError
from .base import Method, MethodContext, active_cross_entropy, register_method


class Lateral(nn.Module):
    """U relu(V (alpha * h_prev)): (B, k w) -> (B, out), the adapter of Rusu et al. eq. 2."""

    def __init__(self, d_in: int, adapter: int, d_out: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(()))
        self.V = nn.Linear(d_in, adapter)
        self.U = nn.Linear(adapter, d_out, bias=False)

    def forward(self, h_prev: torch.Tensor) -> torch.Tensor:
        return self.U(F.relu(self.V(self.alpha * h_prev)))


class Column(nn.Module):
    """Column ``k``: layers ``widths[0] -> .. -> widths[-1]``, laterals from the ``k`` earlier columns."""

    def __init__(self, widths: list[int], k: int, adapter: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.laterals = nn.ModuleList(Lateral(k * widths[i], adapter, widths[i + 1])
                                      for i in range(1, len(widths) - 1) if k)

    def forward(self, x: torch.Tensor, previous: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """x (B, D), ``previous[c][i]`` layer-i output of earlier column c -> this column's layer outputs
        (the last: logits (B, outputs))."""
        outs: list[torch.Tensor] = []
        h = x
        for i, layer in enumerate(self.layers):
            a = layer(h)
            if i >= 1 and previous:
                a = a + self.laterals[i - 1](torch.cat([p[i - 1] for p in previous], dim=1))
            h = a if i == len(self.layers) - 1 else F.relu(a)
            outs.append(h)
        return outs


class ProgressiveNet(nn.Module):
    """``tasks`` columns; ``forward(x, task)`` runs columns 0..task (earlier ones without gradient) ->
    logits (B, outputs) of column ``task``."""

    def __init__(self, widths: list[int], tasks: int, adapter: int) -> None:
        super().__init__()
        self.columns = nn.ModuleList(Column(widths, k, adapter) for k in range(tasks))

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        previous: list[list[torch.Tensor]] = []
        with torch.no_grad():
            for k in range(task):
                previous.append(self.columns[k](x, previous))
        return self.columns[task](x, previous)[-1]


@register_method("progressive")
class Progressive(Method):
    """Progressive networks: a new column per task, earlier columns frozen, lateral adapters."""

    plain_inference = False

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        if ctx.stream.scenario != "task":
            raise ArchlabError(f"loop.method: progressive evaluates task j with column j, so it needs the task at "
                               f"test time: use loop.scenario = 'task', not {ctx.stream.scenario!r}")
        hidden = getattr(self.model.config, "hidden", None)
        if not hidden or ctx.trainable is None:
            raise ArchlabError("loop.method: progressive builds its columns from an MLP's widths (model.hidden)")
        widths = [ctx.stream.features, *hidden, ctx.stream.outputs]
        self.net = ProgressiveNet(widths, ctx.stream.tasks, self.cfg.progressive_adapter).to(ctx.device)
        self.opt = ctx.trainable("columns", self.net)
        self.task = 0

    def loss(self, x: torch.Tensor, target: torch.Tensor, task: int) -> tuple[torch.Tensor, dict[str, float]]:
        self.task = task
        self.net.train()
        logits = self.net(x, task)
        return active_cross_entropy(logits, target, self.stream.units[task].to(x.device)), {}

    def after_backward(self) -> None:
        for k, column in enumerate(self.net.columns):  # only the current column moves (Adam skips None grads)
            if k != self.task:
                for p in column.parameters():
                    p.grad = None
        self.opt.step()
        self.opt.zero_grad()

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        self.net.eval()
        return self.net(x, task)

    def state_dict(self) -> dict[str, Any]:
        return {"columns": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["columns"])
