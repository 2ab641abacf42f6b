"""Experience replay with a reservoir buffer (Rolnick et al. 2019, "Experience Replay for Continual
Learning"; reservoir sampling: Vitter 1985, Algorithm R), and joint training (the upper bound).

**Replay.** Every training example the stream shows enters a buffer of ``buffer_size`` slots by
reservoir sampling: the n-th example seen (0-based) takes a free slot while there is one, otherwise
it replaces slot j ~ U{0..n} when j < size -- so at any time the buffer is a uniform sample of
everything seen so far. While task t trains, each step adds a batch drawn from the buffer's examples
of earlier tasks, each with its own task's units, weighted like van de Ven & Tolias' replay:

    L = 1/(t+1) * CE(current batch) + t/(t+1) * CE(replayed batch)

The buffer stores positions in the dataset and task ids, not images.

**Joint.** Each step's batch is drawn uniformly from all the training data of the tasks so far
(task t trains on tasks 0..t together): the non-incremental upper bound.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Method, MethodContext, masked_cross_entropy, mixed_batch, register_method


class Reservoir:
    """A uniform sample of size ``size`` of a stream of (task, index) items (Algorithm R)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.tasks = torch.full((size,), -1, dtype=torch.long)
        self.index = torch.full((size,), -1, dtype=torch.long)
        self.seen = 0
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, task: int, index: torch.Tensor) -> None:
        for i in index.tolist():
            if self.seen < self.size:
                slot = self.seen
            else:
                slot = int(torch.randint(self.seen + 1, (1,), generator=self.gen))
            if slot < self.size:
                self.tasks[slot], self.index[slot] = task, i
            self.seen += 1

    def sample(self, n: int, before_task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` items (with replacement) among those of tasks < ``before_task``; empty if none."""
        pool = torch.nonzero((self.tasks >= 0) & (self.tasks < before_task)).flatten()
        if not len(pool):
            return self.tasks[:0], self.index[:0]
        pick = pool[torch.randint(len(pool), (n,), generator=self.gen)]
        return self.tasks[pick], self.index[pick]

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "index": self.index, "seen": self.seen, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks, self.index, self.seen = state["tasks"].clone(), state["index"].clone(), int(state["seen"])
        self.gen.set_state(state["gen"])


@register_method("replay")
class Replay(Method):
    """Experience replay: mix every batch with one drawn from a reservoir buffer of earlier tasks."""

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.buffer = Reservoir(self.cfg.buffer_size, ctx.seed + 104729)

    def loss(self, x: torch.Tensor, target: torch.Tensor, task: int) -> tuple[torch.Tensor, dict[str, float]]:
        ce = self.current_loss(x, target, task)
        tasks, index = self.buffer.sample(self.ctx.batch_size, task)
        if not len(tasks):
            return ce, {}
        rx, rt, mask = mixed_batch(self.stream, tasks, index, task, self.ctx.device)
        replayed = masked_cross_entropy(self.model(rx), rt, mask)
        w = 1.0 / (task + 1)
        return w * ce + (1 - w) * replayed, {"replay_loss": float(replayed.detach())}

    def observe(self, task: int, index: torch.Tensor) -> None:
        """The loop shows the method the dataset positions of each training batch."""
        self.buffer.add(task, index)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])


@register_method("joint")
class Joint(Method):
    """Joint training: every batch drawn from all the data of the tasks so far (upper bound)."""

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.gen = torch.Generator().manual_seed(ctx.seed + 1299709)

    def loss(self, x: torch.Tensor, target: torch.Tensor, task: int) -> tuple[torch.Tensor, dict[str, float]]:
        pool = self.stream.index["train"][: task + 1]
        all_index = torch.cat(pool)
        all_tasks = torch.cat([torch.full((len(p),), t, dtype=torch.long) for t, p in enumerate(pool)])
        pick = torch.randint(len(all_index), (len(x),), generator=self.gen)
        tasks, index = all_tasks[pick], all_index[pick]
        jx, jt, mask = mixed_batch(self.stream, tasks, index, task, self.ctx.device)
        return masked_cross_entropy(self.model(jx), jt, mask), {}

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
