"""Factories for ``archlab bench efficient``: inference latency of the MNIST recipes' networks.

One timed unit = one forward pass (eval mode, no gradients, fp32) of a batch of 28x28 digits through the
model exactly as its recipe builds it (``recipes/classic/mnist_*.toml``, ``[model]`` table), on
``threads`` CPU threads. There is no peer: ``timm`` (the library a user would pick for these networks)
pulls torch 2.14 and torchvision with it, which cannot sit beside this project's torch 2.13, so this is
a sweep of archlab's own models against the ResNet-20 baseline.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import torch

import archlab

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "classic"


def _forward(recipe: str, batch: int, threads: int) -> Callable[[], None]:
    torch.set_num_threads(threads)
    table = dict(tomllib.loads((RECIPES / f"{recipe}.toml").read_text())["model"])
    torch.manual_seed(0)
    model = archlab.create(table.pop("name"), **table).eval()
    x = torch.randn(batch, 1, 28, 28)

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def mobilenetv2(batch: int = 1, threads: int = 1, **_: object) -> Callable[[], None]:
    return _forward("mnist_mobilenetv2", batch, threads)


def efficientnet_b0(batch: int = 1, threads: int = 1, **_: object) -> Callable[[], None]:
    return _forward("mnist_efficientnet_b0", batch, threads)


def resnet20(batch: int = 1, threads: int = 1, **_: object) -> Callable[[], None]:
    return _forward("mnist_resnet20", batch, threads)
