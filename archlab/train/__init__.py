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

# name -> "module:class"; imported lazily so `archlab list` stays fast.
_LOOPS = {
    "supervised": "archlab.train.supervised:Supervised",
    "node": "archlab.train.node:NodeClassification",
    "graph": "archlab.train.graph_level:GraphClassification",
    "link": "archlab.train.link:LinkPrediction",
    "temporal": "archlab.train.temporal:TemporalLinkPrediction",
}


def loop_names() -> list[str]:
    return sorted(_LOOPS)


def get_loop(name: str) -> type:
    if name not in _LOOPS:
        raise ArchlabError(f"unknown loop {name!r}; loops: {', '.join(loop_names())}")
    module, cls = _LOOPS[name].split(":")
    return getattr(importlib.import_module(module), cls)
