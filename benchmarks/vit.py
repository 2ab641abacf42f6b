"""Factories for ``archlab bench vit``: forward + backward of archlab's ``vit`` (head "none": the final hidden
states) versus Hugging Face ``ViTModel`` (no pooler), same configuration and weights, same images.

The loss is the mean square of the final hidden states, so both sides do the same encoder work and nothing else.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

import archlab


def _pair(image_size: int, patch_size: int, in_channels: int, dim: int, depth: int, heads: int, mlp_dim: int,
          threads: int):
    from transformers import ViTModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours = archlab.create("vit", image_size=image_size, patch_size=patch_size, in_channels=in_channels, dim=dim,
                          depth=depth, heads=heads, mlp_dim=mlp_dim, head="none")
    with tempfile.TemporaryDirectory() as d:
        ours.save_hf(d)
        peer = ViTModel.from_pretrained(d, add_pooling_layer=False)
    return ours.train(), peer.train()


def _step(fn: Callable[[torch.Tensor], torch.Tensor], params, batch: int, in_channels: int, image_size: int,
          precision: str) -> Callable[[], None]:
    x = torch.randn(batch, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(1))
    params = list(params)

    def step() -> None:
        for p in params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
            loss = fn(x).float().pow(2).mean()
        loss.backward()

    return step


def ours(image_size: int = 224, patch_size: int = 16, in_channels: int = 3, dim: int = 192, depth: int = 12,
         heads: int = 3, mlp_dim: int = 768, batch: int = 8, precision: str = "fp32", threads: int = 2,
         **_: Any) -> Callable[[], None]:
    model, _peer = _pair(image_size, patch_size, in_channels, dim, depth, heads, mlp_dim, threads)
    return _step(model, model.parameters(), batch, in_channels, image_size, precision)


def peer(image_size: int = 224, patch_size: int = 16, in_channels: int = 3, dim: int = 192, depth: int = 12,
         heads: int = 3, mlp_dim: int = 768, batch: int = 8, precision: str = "fp32", threads: int = 2,
         **_: Any) -> Callable[[], None]:
    _ours, model = _pair(image_size, patch_size, in_channels, dim, depth, heads, mlp_dim, threads)
    return _step(lambda x: model(pixel_values=x).last_hidden_state, model.parameters(), batch, in_channels,
                 image_size, precision)
