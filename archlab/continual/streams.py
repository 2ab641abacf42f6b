"""Task streams for continual learning: Split MNIST and Permuted MNIST in the three scenarios of
van de Ven & Tolias 2019 ("Three scenarios for continual learning", arXiv:1904.07734, Sec. 2).

- **Split MNIST**: the ten digits in ``tasks`` consecutive groups (5 tasks: 0/1, 2/3, 4/5, 6/7, 8/9), or,
  with ``class_order="seeded"``, consecutive groups of a seeded relabelling of the digits as in van de
  Ven & Tolias' code (``data.py``: for seed s > 0 digit d is renamed p[d], p the
  ``numpy.random.RandomState(s).permutation`` of the classes, seed 0 keeps the natural order), so every
  seed sees other digit pairs (seed 1: 4/6, 0/5, 3/9, 2/7, 8/1; :func:`class_permutation`). Output units
  follow the new names: task t always owns units per*t .. per*(t+1)-1 (Task- and Class-IL).
- **Permuted MNIST**: every task is all ten digits with its own fixed pixel permutation (task 0 is
  the unpermuted MNIST; the others are drawn from ``perm_seed``).

The scenario decides what the network's output units mean and which of them a task may use:

=========  ==============================================  ===================================
scenario   Split MNIST (5 tasks)                             Permuted MNIST (T tasks)
=========  ==============================================  ===================================
task       10 units; task t uses its own 2 (multi-head)      10 T units; task t uses its own 10
domain     2 units shared: "first or second digit of task"   10 units shared by every task
class      10 units; all digits seen so far are active       10 T units; all seen so far active
=========  ==============================================  ===================================

A stream keeps the dataset once and hands out batches by index: permutations are applied per batch,
so ten permuted copies of MNIST never sit in memory. Shapes: ``batch`` -> x (B, 784), targets (B,).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..data.registry import Dataset, Split

Stream = Literal["split", "permuted"]
Scenario = Literal["task", "domain", "class"]
ClassOrder = Literal["fixed", "seeded"]


def class_permutation(classes: int, seed: int) -> list[int]:
    """p with p[label] = the label's new name (van de Ven & Tolias' ``data.py``: seed 0 keeps the
    order, any other seed ``np.random.seed(seed); np.random.permutation(classes)`` -- the first draw
    of their script after seeding, reproduced here with the same generator)."""
    if seed == 0:
        return list(range(classes))
    return [int(v) for v in np.random.RandomState(seed).permutation(classes)]


class TaskStream:
    """Tasks carved from one classification dataset, their targets and their output units."""

    def __init__(self, data: Dataset, stream: Stream, scenario: Scenario, tasks: int, perm_seed: int = 0,
                 class_order: ClassOrder = "fixed", order_seed: int = 0) -> None:
        self.data, self.stream, self.scenario, self.tasks = data, stream, scenario, tasks
        classes = data.num_classes
        features = 1
        for s in data.input_shape:
            features *= s
        self.features = features
        if stream == "split":
            per = classes // tasks
            # ``name[label]``: the label's position in the task sequence (tasks take consecutive names).
            name = class_permutation(classes, order_seed) if class_order == "seeded" else list(range(classes))
            label_of = sorted(range(classes), key=lambda c: name[c])  # name -> dataset label
            self.task_classes = [label_of[t * per:(t + 1) * per] for t in range(tasks)]
            self.perms: list[torch.Tensor | None] = [None] * tasks
            self.units = [torch.arange(per) + (0 if scenario == "domain" else t * per) for t in range(tasks)]
        else:
            gen = torch.Generator().manual_seed(perm_seed)
            self.task_classes = [list(range(classes))] * tasks
            self.perms = [None] + [torch.randperm(features, generator=gen) for _ in range(tasks - 1)]
            self.units = [torch.arange(classes) + (0 if scenario == "domain" else t * classes) for t in range(tasks)]
        self.outputs = int(max(int(u.max()) for u in self.units)) + 1
        # Per task: dataset label -> position among the task's classes (-1: not in the task).
        self.slot = []
        for c in self.task_classes:
            slot = torch.full((classes,), -1, dtype=torch.long)
            slot[torch.tensor(c)] = torch.arange(len(c))
            self.slot.append(slot)
        # Per split and task: indices of its examples in the dataset's split.
        self.index = {name: [self._members(getattr(data, name), t) for t in range(tasks)]
                      for name in ("train", "val", "test")}

    def _members(self, split: Split, task: int) -> torch.Tensor:
        wanted = torch.tensor(self.task_classes[task])
        return torch.nonzero(torch.isin(split.y, wanted)).flatten()

    def target(self, y: torch.Tensor, task: int) -> torch.Tensor:
        """Dataset labels of task ``task`` -> output-unit indices."""
        return self.units[task][self.slot[task][y]]

    def batch(self, split: str, task: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``idx`` (positions in the dataset's split) as task ``task`` presents them."""
        s: Split = getattr(self.data, split)
        x = s.x[idx].flatten(1)
        perm = self.perms[task]
        if perm is not None:
            x = x[:, perm]
        return x, self.target(s.y[idx], task)

    def active(self, task: int, seen: int) -> torch.Tensor:
        """Output units the model may choose among for task ``task`` once tasks 0..seen were trained:
        the task's own units (task-IL), else every unit of the tasks so far (domain- and class-IL)."""
        if self.scenario == "task":
            return self.units[task]
        return torch.cat(self.units[: max(task, seen) + 1]).unique()
