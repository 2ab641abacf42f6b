"""Factories for benchmarks/compress.toml: one timed unit = ``calls`` forward passes of a batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import archlab
from archlab.compress import prune_channels, prune_magnitude


def _factory(structured: float = 0.0, unstructured: float = 0.0) -> Callable[..., Callable[[], None]]:
    def make(model: str, batch: int, calls: int, threads: int,
             config: dict[str, Any] | None = None) -> Callable[[], None]:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        net = archlab.create(model, **(config or {}))
        if structured:
            net = prune_channels(net, structured)
        if unstructured:
            prune_magnitude(net, unstructured, "global")
        net.eval()
        x = torch.randn(batch, 1, 28, 28)

        @torch.inference_mode()
        def run() -> None:
            for _ in range(calls):
                net(x)

        return run

    return make


dense = _factory()
unstructured_90 = _factory(unstructured=0.9)
structured_25 = _factory(structured=0.25)
structured_50 = _factory(structured=0.5)
structured_75 = _factory(structured=0.75)
