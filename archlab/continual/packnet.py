"""PackNet (Mallya & Lazebnik 2018, "PackNet: Adding Multiple Tasks to a Single Network by Iterative
Pruning"): each task claims a share of the weights by magnitude pruning and freezes it; later tasks
train only the weights nobody has claimed; a task is evaluated with its own binary mask.

Every weight matrix / kernel W (parameters with 2+ dimensions) carries an owner map o (same shape):
o = k for entries task k claimed, o = -1 for free entries. While task t trains (``ctx.iters`` steps):

1. steps 0 .. P-1 (P = (1 - ``packnet_retrain``) * iters): train the free entries (o = -1) only;
2. at step P, prune (their Sec. 3): among the free entries this task changed, per layer, the
   ``1 - packnet_prune`` fraction largest in |W| gets o = t; every other free entry is set to 0;
3. steps P .. iters-1: retrain the entries with o = t only (the freed ones stay 0).

Biases are trained by task 0 and frozen afterwards (the paper's choice: biases are not pruned and are
shared). Frozen entries are held exactly: their gradient is masked and, after each optimizer step,
they are copied back (Adam's momentum would otherwise still move them). Task j is evaluated with

    W_j = W * [0 <= o <= j]      (plus the free entries while task j itself is not yet pruned)

so the function task j computes never changes once it is pruned: zero forgetting by construction,
R[i, j] = R[j, j] for i >= j. Task-IL only (inference needs the task's identity). Models with
running statistics (BatchNorm) are refused: those buffers would change under later tasks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call

from ..errors import ArchlabError
from .base import Method, MethodContext, register_method


@register_method("packnet")
class PackNet(Method):
    """Iterative pruning with per-task masks; earlier tasks' weights frozen; Task-IL inference by mask."""

    plain_inference = False

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        if ctx.stream.scenario != "task":
            raise ArchlabError(f"loop.method: packnet evaluates each task with its own mask, so it needs the task "
                               f"at test time: use loop.scenario = 'task', not {ctx.stream.scenario!r}")
        if any(getattr(m, "track_running_stats", False) for m in self.model.modules()):
            raise ArchlabError("loop.method: packnet freezes weights per task; a model with BatchNorm running "
                               "statistics would still change them (use an MLP without norm)")
        self.params = dict(self.model.named_parameters())
        self.weights = [n for n, p in self.params.items() if p.dim() >= 2]
        self.owner = {n: torch.full(self.params[n].shape, -1, dtype=torch.long, device=ctx.device)
                      for n in self.weights}
        iters = max(ctx.iters, 1)
        self.prune_at = min(max(int(round((1 - self.cfg.packnet_retrain) * iters)), 0), iters - 1)
        self.pruned = -1  # last task pruned
        self.task = 0
        self.start: dict[str, torch.Tensor] = {}  # weights at the task's start (what it changed)
        self.hold: dict[str, torch.Tensor] = {}  # values the frozen entries are held at

    # -- masks -----------------------------------------------------------------------------------------
    def trainable_mask(self, name: str) -> torch.Tensor | bool:
        """Entries of parameter ``name`` the current phase may change."""
        if name not in self.owner:
            return self.task == 0  # biases: task 0 only
        return self.owner[name] == (self.task if self.pruned == self.task else -1)

    def inference_mask(self, name: str, task: int) -> torch.Tensor:
        o = self.owner[name]
        used = (o >= 0) & (o <= task)
        return used | (o == -1) if task > self.pruned else used

    @torch.no_grad()
    def prune(self, task: int) -> None:
        """Claim for ``task`` the largest ``1 - packnet_prune`` of the free entries it changed, zero the rest."""
        for n in self.weights:
            p, o = self.params[n], self.owner[n]
            free = o == -1
            changed = free & (p != self.start[n])
            k = int(round((1 - self.cfg.packnet_prune) * int(changed.sum())))
            keep = torch.zeros_like(free)
            if k > 0:
                flat = torch.nonzero(changed.flatten()).flatten()
                top = p.flatten()[flat].abs().topk(k).indices
                keep.view(-1)[flat[top]] = True
            o[keep] = task
            p[free & ~keep] = 0.0
        self.pruned = task

    def _hold_now(self) -> None:
        self.hold = {n: p.detach().clone() for n, p in self.params.items()}

    # -- hooks -----------------------------------------------------------------------------------------
    def begin_step(self, task: int, i: int) -> None:
        if i == 0:
            self.task = task
            self.start = {n: self.params[n].detach().clone() for n in self.weights}
            self._hold_now()
        if i == self.prune_at:
            self.prune(task)
            self._hold_now()

    def after_backward(self) -> None:
        for n, p in self.params.items():
            if p.grad is not None:
                m = self.trainable_mask(n)
                if m is False:
                    p.grad = None
                elif m is not True:
                    p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self) -> None:
        for n, p in self.params.items():
            m = self.trainable_mask(n)
            if m is True:
                continue
            if m is False:
                p.copy_(self.hold[n])
            else:
                p.copy_(torch.where(m, p, self.hold[n]))

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        masked = {n: self.params[n] * self.inference_mask(n, task) for n in self.weights}
        return functional_call(self.model, masked, (x,), strict=False)

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "start": self.start, "hold": self.hold, "pruned": self.pruned,
                "task": self.task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.owner = {n: t.clone() for n, t in state["owner"].items()}
        self.start = {n: t.clone() for n, t in state["start"].items()}
        self.hold = {n: t.clone() for n, t in state["hold"].items()}
        self.pruned, self.task = int(state["pruned"]), int(state["task"])
