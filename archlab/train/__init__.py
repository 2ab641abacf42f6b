"""Training loops, one per paradigm. A loop builds a :class:`archlab.engine.driver.Paradigm` from a
recipe; the engine's :class:`~archlab.engine.driver.Driver` runs it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..engine.device import Precision
from ..engine.distributed import DistInfo, average_gradients, mean_across_workers
from ..engine.optim import l1_penalty
from ..errors import ArchlabError


@dataclass
class Context:
    """What the engine hands every loop: resolved device, precision, workers and seed."""

    device: torch.device
    precision: Precision
    dist: DistInfo
    seed: int

def optimizer_step(ctx: Context, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float) -> float:
    """The end of every loop's step, after the backward pass: unscale (fp16), clip the gradient norm
    to ``grad_clip`` (0: no clipping), step the optimizer and then the schedule. Returns the learning
    rate the step used."""
    ctx.precision.unscale(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    ctx.precision.step(optimizer)
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return lr


def accumulated_step(ctx: Context, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, train: Any,
                     micro_loss: Callable[[], torch.Tensor]) -> dict[str, Any]:
    """One optimizer step of a gradient-based loop: ``train.accumulate`` micro-batches, each
    ``micro_loss()`` (draws a batch, returns its mean loss) plus the L1 penalty ``train.l1``, scaled by
    ``1 / accumulate`` and backpropagated; then gradients and the logged loss are averaged over workers
    (no-ops in one process) and :func:`optimizer_step` runs. Returns ``{"loss", "lr"}``."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=ctx.device)
    for _ in range(train.accumulate):
        loss = micro_loss()
        if train.l1:
            loss = loss + train.l1 * l1_penalty(model.parameters())
        loss = loss / train.accumulate
        ctx.precision.backward(loss)
        total += loss.detach()
    average_gradients(model, ctx.dist)
    # Each rank's loss covers its slice only; the global-batch loss is what one process would log and
    # NaN-check, and every rank then sees the same value (they stop at the same step).
    mean_across_workers(total, ctx.dist)
    lr = optimizer_step(ctx, model, optimizer, scheduler, train.grad_clip)
    return {"loss": total, "lr": lr}


# name -> "module:class"; imported lazily so `archlab list` stays fast.
_LOOPS = {
    "supervised": "archlab.train.supervised:Supervised",
    "node": "archlab.train.node:NodeClassification",
    "graph": "archlab.train.graph_level:GraphClassification",
    "link": "archlab.train.link:LinkPrediction",
    "temporal": "archlab.train.temporal:TemporalLinkPrediction",
    "lm": "archlab.train.lm:LanguageModeling",
    "seq2seq": "archlab.train.seq2seq:Seq2Seq",
    "mlm": "archlab.train.mlm:MaskedLM",
    "rl": "archlab.train.rl:ReinforcementLearning",
}


def loop_names() -> list[str]:
    return sorted(_LOOPS)


def get_loop(name: str) -> type:
    if name not in _LOOPS:
        raise ArchlabError(f"unknown loop {name!r}; loops: {', '.join(loop_names())}")
    module, cls = _LOOPS[name].split(":")
    return getattr(importlib.import_module(module), cls)
