"""Device selection and mixed precision."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from ..errors import ArchlabError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ArchlabError("device cuda requested but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ArchlabError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


class Precision:
    """Autocast context + loss scaling for one precision.

    fp32: nothing. bf16: autocast to bfloat16 on CPU (AMX) or CUDA; no scaler needed (same exponent
    range as fp32). fp16: CUDA only, autocast + GradScaler to keep small gradients representable.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        if name == "fp16" and device.type != "cuda":
            raise ArchlabError("precision fp16 needs a CUDA device; use bf16 on CPU")
        if name not in ("fp32", "bf16", "fp16"):
            raise ArchlabError(f"unknown precision {name!r}; choose fp32, bf16 or fp16")
        self.name = name
        self.device = device
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Call before clipping so that the clip threshold applies to true gradients."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
