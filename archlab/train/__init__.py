"""Training loops, one per paradigm. A loop builds a :class:`archlab.engine.driver.Paradigm` from a
recipe; the engine's :class:`~archlab.engine.driver.Driver` runs it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from ..engine.device import Precision
from ..engine.distributed import DistInfo
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
