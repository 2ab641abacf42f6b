"""Factories for the DP-SGD bench: each returns a zero-argument callable doing one noisy, clipped step."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from archlab import create
from archlab.privacy import DPSGD

SIGMA, CLIP, LR = 1.3, 1.5, 0.25


def _batch(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)


def ours(batch: int) -> Callable[[], None]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create("dp_cnn")
    x, y = _batch(batch)
    dp = DPSGD(model, torch.optim.SGD(model.parameters(), lr=LR), F.cross_entropy, SIGMA, CLIP, batch)
    return lambda: dp.step(x, y)


def peer(batch: int) -> Callable[[], None]:
    import warnings

    from opacus import PrivacyEngine

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create("dp_cnn")
    x, y = _batch(batch)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, _ = PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), data_loader=loader,
            noise_multiplier=SIGMA, max_grad_norm=CLIP)

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step
