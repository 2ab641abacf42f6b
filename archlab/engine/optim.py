"""Optimizers with weight-decay groups, and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """L2 penalty (decoupled for AdamW); never applied to biases and norm weights."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    """Term added to the denominator (Adam, AdamW, RMSprop)."""
    alpha: float = 0.99
    """RMSprop: smoothing constant of the running average of squared gradients."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = False
    schedule: Literal["constant", "cosine", "linear", "step"] = "constant"
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over this many steps, before the schedule."""
    min_lr_ratio: float = 0.0
    """cosine/linear decay end at ``lr * min_lr_ratio``."""
    step_size: int = 1000
    """step schedule: multiply by ``gamma`` every ``step_size`` steps."""
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    """step schedule: if given, decay by ``gamma`` at these steps instead of every ``step_size``."""

    def __post_init__(self) -> None:
        # Written as `not a <= x <= b` so that NaN fails too (torch would report it with a traceback).
        # The upper bounds are far beyond any sensible value: they catch typos such as lr = 1e308.
        if not 0 <= self.lr <= 100:
            raise ValueError(f"lr must be a number in [0, 100], got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if not 0 <= self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        if not 0 <= self.weight_decay <= 100 or not 0 <= self.momentum < 1 + 1e-9:
            raise ValueError(f"need 0 <= weight_decay <= 100 and 0 <= momentum <= 1, got {self.weight_decay}, "
                             f"{self.momentum}")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 < self.gamma <= 1e3:
            raise ValueError(f"need 0 <= min_lr_ratio <= 1 and 0 < gamma <= 1000, got {self.min_lr_ratio}, "
                             f"{self.gamma}")
        if self.step_size < 1 or self.warmup_steps < 0 or any(m < 0 for m in self.milestones):
            raise ValueError("step_size must be >= 1, warmup_steps and milestones >= 0")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and conv kernels; never biases, norm scales or other 1-D parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module | Sequence[torch.Tensor], cfg: OptimConfig,
                    fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names over a module's parameters (weight decay on matrices and kernels
    only, see :func:`param_groups`) or over a list of tensors (one group; weight decay on all of them).

    ``fused``: for a few large tensors (e.g. parameters packed into one flat tensor), Adam's and
    AdamW's single fused kernel (CPU, CUDA) and RMSprop's plain per-tensor loop instead of the foreach
    kernels, which pay off over many small tensors."""
    if isinstance(model, nn.Module):
        groups = param_groups(model, cfg.weight_decay)
    else:
        groups = [{"params": list(model), "weight_decay": cfg.weight_decay}]
    # foreach kernels update all tensors of a group in a few launches instead of one per parameter.
    impl = {"foreach": True}
    if fused:
        device = groups[0]["params"][0].device.type
        impl = {"fused": True} if cfg.name in ("adam", "adamw") and device in ("cpu", "cuda") else {"foreach": False}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **impl)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, **impl)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **impl)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        if cfg.milestones:
            return cfg.gamma ** sum(step >= m for m in cfg.milestones)
        return cfg.gamma ** (step // cfg.step_size)
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # linear
        shape = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))


def l1_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of |w| over weight matrices/kernels (biases and norms excluded, as for weight decay)."""
    terms = [p.abs().sum() for p in params if p.ndim >= 2]
    return torch.stack(terms).sum() if terms else torch.zeros(())
