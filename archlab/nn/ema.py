"""Exponential moving average of a module's weights (the EMA copies of the GAN and diffusion loops)."""

from __future__ import annotations

import torch


@torch.no_grad()
def update_ema(ema: torch.nn.Module, module: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay theta_ema + (1 - decay) theta; buffers (batch-norm statistics, growing stages, a latent
    model's scale factor) are copied, not averaged."""
    for e, p in zip(ema.parameters(), module.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), module.buffers(), strict=True):
        e.copy_(b)
