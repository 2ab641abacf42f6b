"""Data-parallel helpers over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

``archlab train --nproc N`` relaunches itself through ``torch.distributed.run`` (exactly what
``torchrun`` does), which sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT for every worker.
Each worker sees the same global batch order, takes its 1/N slice, and gradients are averaged with
one all-reduce per step, so N workers compute the same update as one process with the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun / ``--nproc``; a no-op otherwise."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(model: nn.Module, info: DistInfo) -> None:
    """All-reduce (mean) every gradient, coalesced into one flat buffer to keep it to one collective."""
    if not info.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def mean_across_workers(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average ``t`` over all workers in place (e.g. a loss, so every rank logs the global-batch value)."""
    if info.enabled:
        dist.all_reduce(t)
        t /= info.world_size
    return t


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device | str = "cpu") -> bool:
    """Rank 0's decision, on every rank (used for Ctrl-C so all workers stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m archlab <argv>`` in ``nproc`` workers via torch.distributed.run; return exit code."""
    from torch.distributed import run as torchrun

    args = ["--standalone", f"--nproc-per-node={nproc}", "--module", "archlab", *argv]
    try:
        torchrun.main(args)
    except SystemExit as exc:  # torchrun exits via SystemExit on success paths too
        return int(exc.code or 0)
    except Exception as exc:  # ChildFailedError: a worker failed; its own stderr already said why
        print(f"archlab: distributed run failed: {type(exc).__name__}", flush=True)
        return 1
    return 0
