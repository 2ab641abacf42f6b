"""What a continual-learning method is to the task-stream loop, and the lower bound: fine-tuning.

The loop (``train.loop = "continual"``) trains one model on the tasks of a
:class:`~archlab.continual.streams.TaskStream` one after another. A method shapes that training
through these hooks:

- ``loss(x, target, task)``: the training loss of one batch of the current task (cross-entropy over
  the units the scenario makes active, plus the method's penalty, replay or distillation terms);
- ``after_backward()``: the gradients of that loss are in ``p.grad`` (SI reads them);
- ``after_step()``: the optimizer has moved the parameters (SI integrates the path);
- ``begin_step(task, i)``: step i of the task is about to run;
- ``forward(x, task)``: logits at evaluation (the model's, or routed by task: PackNet, progressive nets);
- ``end_task(task)``: the last step of ``task`` is done (EWC's Fisher, SI's importance, LwF's copy).

Everything a method accumulates is in its ``state_dict`` (tensors), so runs resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .streams import TaskStream

#: Methods by the name ``loop.method`` gives.
METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


@dataclass
class MethodContext:
    """What a method is built from: the loop's ``[loop]`` settings, the model, the stream."""

    cfg: Any
    model: nn.Module
    stream: TaskStream
    device: torch.device
    seed: int
    batch_size: int
    iters: int = 0
    """Steps per task."""
    trainable: Callable[[str, nn.Module], Any] | None = None
    """The loop's named-optimizer factory (``Loop.trainable``): methods that train networks of their own
    (DGR's generator, progressive columns) get them optimized by ``[optim.generator]`` through it."""


def active_cross_entropy(logits: torch.Tensor, target: torch.Tensor, active: torch.Tensor,
                         reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy restricted to the ``active`` output units (``target`` must be one of them)."""
    position = torch.full((logits.shape[1],), -1, dtype=torch.long, device=logits.device)
    position[active] = torch.arange(len(active), device=logits.device)
    return F.cross_entropy(logits[:, active], position[target], reduction=reduction)


@register_method("finetune")
class Method:
    """Fine-tuning: plain training on each task in turn, no protection of earlier tasks (lower bound)."""

    name: ClassVar[str] = ""
    plain_inference: ClassVar[bool] = True
    """False when :meth:`forward` needs the method's state (masks, extra columns), not just the model."""

    def __init__(self, ctx: MethodContext) -> None:
        self.ctx, self.cfg, self.model, self.stream = ctx, ctx.cfg, ctx.model, ctx.stream

    def current_loss(self, x: torch.Tensor, target: torch.Tensor, task: int) -> torch.Tensor:
        """Cross-entropy of the current task's batch over the units active while training ``task``."""
        active = self.stream.active(task, task).to(x.device)
        return active_cross_entropy(self.model(x), target, active)

    def loss(self, x: torch.Tensor, target: torch.Tensor, task: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.current_loss(x, target, task), {}

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Logits (B, outputs) of inputs of task ``task`` at evaluation: the model's, unless the method
        routes by task (PackNet's masks, progressive columns)."""
        return self.model(x)

    def begin_step(self, task: int, i: int) -> None:
        """Step ``i`` (0-based, of ``ctx.iters``) of ``task`` is about to run (PackNet prunes mid-task)."""

    def observe(self, task: int, index: torch.Tensor) -> None:
        """The dataset positions of the training batch just drawn for ``task`` (replay fills its buffer)."""

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def end_task(self, task: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (what the penalties of EWC and SI cover)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def mixed_batch(stream: TaskStream, tasks: torch.Tensor, idx: torch.Tensor, seen: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Examples of several tasks: ``idx[b]`` is a training example of task ``tasks[b]``. Returns x (B, D),
    targets (B,) and a (B, outputs) mask of the units each example may use once tasks 0..seen were trained."""
    xs, ts, masks, order = [], [], [], []
    for t in tasks.unique().tolist():
        rows = torch.nonzero(tasks == t).flatten()
        x, target = stream.batch("train", t, idx[rows])
        mask = torch.zeros(len(rows), stream.outputs, dtype=torch.bool)
        mask[:, stream.active(t, seen)] = True
        xs.append(x)
        ts.append(target)
        masks.append(mask)
        order.append(rows)
    back = torch.argsort(torch.cat(order))  # restore the batch's order (keeps the loss independent of grouping)
    return (torch.cat(xs)[back].to(device), torch.cat(ts)[back].to(device), torch.cat(masks)[back].to(device))


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where example b chooses among the units with ``mask[b]`` only."""
    return F.cross_entropy(logits.masked_fill(~mask, float("-inf")), target)
