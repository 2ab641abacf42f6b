"""Continual learning on a task stream: one model, tasks one after another (``train.loop = "continual"``).

``train.steps`` spans the whole stream, ``train.steps / loop.tasks`` steps per task (van de Ven & Tolias:
2,000 per Split MNIST task); step s trains task ``s // steps_per_task`` on a batch of
that task only (``data.batch_size``, a seeded permutation per task in the checkpoint), with the loss
of the method named by ``loop.method`` (:mod:`archlab.continual`):

    for task t = 0..T-1:
        repeat steps_per_task:  (x, y) ~ task t;  L = method.loss(x, y, t);  theta <- optimizer(theta, grad L)
        R[t, :] = test accuracy on every task;  method.end_task(t)

The optimizer is the recipe's ``[optim]`` (van de Ven & Tolias 2019: Adam, lr 1e-3, betas 0.9/0.999; their
code's default ``--optimizer adam`` keeps Adam's state across tasks, ``loop.reset_optimizer`` clears it at
every task boundary, like their ``adam_reset``). ``R`` (T x T, on the test split), the
accuracy of the untrained model on each task (for forward transfer) and the summaries of
:mod:`archlab.continual.metrics` are the run's result: ``test_acc`` is the average accuracy over all
tasks at the end; ``val_acc`` the same on the validation split, over the tasks seen so far.
``plots/accuracy_matrix.png`` (heat map of R) and ``plots/task_accuracy.png`` (accuracy per task
against tasks trained) are written into every run directory, the numbers into ``accuracy_matrix.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..continual import METHODS, MethodContext
from ..continual.metrics import plot_curves, plot_matrix, summarize
from ..continual.streams import TaskStream
from ..data import Dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..io import atomic_write_bytes
from .supervised import BatchStream

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class ContinualConfig:
    """``[loop]`` of the continual loop."""

    stream: Literal["split", "permuted"] = "split"
    """Split MNIST (digits in consecutive groups) or Permuted MNIST (a pixel permutation per task)."""
    scenario: Literal["task", "domain", "class"] = "class"
    """Task-IL (the task is given: its own output units), Domain-IL (shared units), Class-IL (all units so far)."""
    tasks: int = 5
    """Tasks in the stream (split: must divide the number of classes)."""
    class_order: Literal["fixed", "seeded"] = "fixed"
    """Split streams: digits in natural order (0/1, 2/3, ...) or relabelled by the run's seed as in van de
    Ven & Tolias' code (seed 0 natural, other seeds other digit pairs; see archlab.continual.streams)."""
    method: Literal["finetune", "joint", "ewc", "online_ewc", "si", "lwf", "replay", "dgr", "packnet",
                    "progressive"] = "finetune"
    """How earlier tasks are protected (see archlab.continual)."""
    reset_optimizer: bool = False
    """Fresh optimizer state (Adam moments) at every task boundary (the paper's code: off by default)."""
    perm_seed: int = 0
    """Seed of Permuted MNIST's pixel permutations."""
    ewc_lambda: float = 5000.0
    """EWC / Online EWC penalty strength lambda."""
    ewc_gamma: float = 1.0
    """Online EWC: decay of the running Fisher."""
    fisher_samples: int = 0
    """Training examples per Fisher estimate (0: the whole task)."""
    si_c: float = 1.0
    """SI penalty strength c."""
    si_xi: float = 0.1
    """SI damping xi."""
    lwf_temperature: float = 2.0
    """LwF distillation temperature T."""
    lwf_softmax: Literal["active", "old"] = "active"
    """LwF, Class-IL: the distilled softmax over every unit active now, zero targets on the new task's
    (van de Ven & Tolias' code), or over the previous tasks' units only."""
    buffer_size: int = 1000
    """Replay: reservoir buffer slots."""
    dgr_hidden: list[int] = field(default_factory=lambda: [400, 400])
    """DGR: the VAE generator's hidden widths (encoder; the decoder mirrors them)."""
    dgr_latent: int = 100
    """DGR: the VAE generator's latent size."""
    dgr_targets: Literal["hard", "soft"] = "hard"
    """DGR: replayed samples labelled by the previous solver's most likely unit (DGR) or its softened
    outputs at ``lwf_temperature`` (DGR+distill)."""
    packnet_prune: float = 0.75
    """PackNet: fraction of the weights a task trained that are pruned (freed for later tasks) after it."""
    packnet_retrain: float = 0.25
    """PackNet: fraction of each task's steps spent retraining the kept weights after pruning."""
    progressive_adapter: int = 100
    """Progressive nets: hidden width of the lateral adapters (Rusu et al. 2016, eq. 2)."""

    def __post_init__(self) -> None:
        if not 1 <= self.tasks <= 100:
            raise ValueError(f"tasks must be in [1, 100], got {self.tasks}")
        if not 0 <= self.ewc_lambda <= 1e15 or not 0 <= self.ewc_gamma <= 1 or not 0 <= self.si_c <= 1e15:
            raise ValueError("need 0 <= ewc_lambda <= 1e15, 0 <= ewc_gamma <= 1 and 0 <= si_c <= 1e15")
        if not 0 < self.si_xi <= 1e6 or not 0 < self.lwf_temperature <= 1e3:
            raise ValueError("need 0 < si_xi <= 1e6 and 0 < lwf_temperature <= 1000")
        if not 0 < self.packnet_prune < 1 or not 0 < self.packnet_retrain < 1:
            raise ValueError("need 0 < packnet_prune < 1 and 0 < packnet_retrain < 1")
        if (not 1 <= self.dgr_latent <= 65536 or not self.dgr_hidden
                or not all(1 <= h <= 65536 for h in self.dgr_hidden)):
            raise ValueError("need 1 <= dgr_latent <= 65536 and dgr_hidden a non-empty list of widths in [1, 65536]")
        if not 1 <= self.progressive_adapter <= 65536:
            raise ValueError("need 1 <= progressive_adapter <= 65536")
        if (not 1 <= self.buffer_size <= 10**7 or not 0 <= self.fisher_samples <= 10**7
                or not 0 <= self.perm_seed < 2**32):
            raise ValueError("need 1 <= buffer_size <= 1e7, 0 <= fisher_samples <= 1e7 and 0 <= perm_seed < 2**32")


@register_loop("continual")
class Continual(Loop):
    """Continual learning: train on a stream of tasks, report the accuracy matrix and forgetting."""

    Config = ContinualConfig
    model_families = ("classic",)
    trainables = ("model", "generator", "columns")  # the methods' own networks: DGR's VAE, progressive columns
    metrics = ("val_acc", "test_acc", "test_bwt", "test_forgetting", "test_fwt")
    monitor = ("val_acc", "max")
    progress_keys = ("loss", "task")

    @classmethod
    def _stream(cls, recipe: Recipe, data: Dataset) -> TaskStream:
        cfg = recipe.loop
        if cfg.stream == "split" and data.num_classes % cfg.tasks:
            raise ArchlabError(f"loop.tasks: split streams divide the {data.num_classes} classes of "
                               f"{recipe.data.name!r} into equal tasks; {cfg.tasks} does not divide them")
        return TaskStream(data, cfg.stream, cfg.scenario, cfg.tasks, cfg.perm_seed, cfg.class_order, recipe.seed)

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Dataset) -> dict[str, Any]:
        stream = cls._stream(recipe, data)
        return {"in_features": stream.features, "num_classes": stream.outputs}

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: Any) -> None:
        if not recipe.train.steps or recipe.train.steps % recipe.loop.tasks:
            raise ArchlabError(f"train.steps: the continual loop needs a step budget that splits evenly over the "
                               f"{recipe.loop.tasks} tasks, got {recipe.train.steps}")
        stream = cls._stream(recipe, data)
        out = getattr(model.config, "num_classes", None)
        if out != stream.outputs:
            raise ArchlabError(f"model.num_classes: the {recipe.loop.stream} stream in the {recipe.loop.scenario}-IL "
                               f"scenario needs {stream.outputs} output units, {recipe.model_name!r} has {out}")

    def __init__(self, recipe: Recipe, model: Any, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the continual loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        cfg = self.cfg
        self.stream = self._stream(recipe, data)
        bs = recipe.data.batch_size
        self.batches = [BatchStream(len(idx), bs, seed=ctx.seed + 1000 * t)
                        for t, idx in enumerate(self.stream.index["train"])]
        self.total_steps = recipe.train.steps
        self.iters = self.total_steps // cfg.tasks
        self.eval_every = recipe.train.eval_every or self.iters
        self.opt = self.trainable("model", model)
        self.method = METHODS[cfg.method](MethodContext(cfg, model, self.stream, ctx.device, ctx.seed, bs,
                                                        iters=self.iters, trainable=self.trainable))
        T = cfg.tasks
        self.R = torch.full((T, T), float("nan"), dtype=torch.float64)
        self.initial = torch.full((T,), float("nan"), dtype=torch.float64)
        self.trained = 0  # tasks finished

    # -- training ------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        iters = self.iters
        task = step // iters
        if step == 0:
            self.initial = self.task_accuracies("test", seen=self.cfg.tasks - 1)
        if step % iters == 0 and step and self.cfg.reset_optimizer:
            self.opt.optimizer.state.clear()
        self.method.begin_step(task, step % iters)
        self.model.train()
        idx = self.stream.index["train"][task][self.batches[task].next()]
        self.method.observe(task, idx)
        x, target = self.stream.batch("train", task, idx)
        x, target = x.to(self.ctx.device), target.to(self.ctx.device)
        self.opt.zero_grad()
        with self.ctx.precision.autocast():
            loss, logs = self.method.loss(x, target, task)
        self.opt.backward(loss)
        self.method.after_backward()
        lr = self.opt.step()
        self.method.after_step()
        if step % iters == iters - 1:  # the task's last step: a row of R, then the method's bookkeeping
            self.R[task] = self.task_accuracies("test", seen=task)
            self.method.end_task(task)
            self.trained = task + 1
        return {"loss": loss.detach(), "task": task + 1, "lr": lr, **logs}

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def task_accuracies(self, split: str, seen: int) -> torch.Tensor:
        """Accuracy on every task of ``split`` (T,), the units each scenario allows after tasks 0..seen."""
        self.model.eval()
        accs = []
        for t, idx in enumerate(self.stream.index[split]):
            if not len(idx):
                accs.append(float("nan"))
                continue
            correct = 0
            for start in range(0, len(idx), 2048):
                x, target = self.stream.batch(split, t, idx[start:start + 2048])
                logits = self.method.forward(x.to(self.ctx.device), t).float()
                active = self.stream.active(t, seen).to(logits.device)
                correct += int((active[logits[:, active].argmax(1)] == target.to(logits.device)).sum())
            accs.append(correct / len(idx))
        return torch.tensor(accs, dtype=torch.float64)

    def evaluate(self, split: str) -> dict[str, float]:
        seen = max(self.trained - 1, 0)
        if split == "val":
            if not len(self.data.val):
                return {}
            return {"val_acc": float(self.task_accuracies("val", seen)[: seen + 1].mean())}
        if self.trained == self.cfg.tasks:  # a complete run: the summaries of R
            out = summarize(self.R, self.initial)
        else:  # evaluated before the stream ended (archlab eval of the saved final model reads the file)
            out = {"acc": float(self.task_accuracies(split, self.cfg.tasks - 1).mean())}
        return {f"{split}_{k}": v for k, v in out.items()}

    # -- state and pictures ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "batches": [b.state_dict() for b in self.batches],
                "method": self.method.state_dict(), "R": self.R, "initial": self.initial, "trained": self.trained}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        for b, s in zip(self.batches, state["batches"], strict=True):
            b.load_state_dict(s)
        self.method.load_state_dict(state["method"])
        self.R, self.initial, self.trained = state["R"].clone(), state["initial"].clone(), int(state["trained"])

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        out = Path(run_dir) / "plots"
        out.mkdir(exist_ok=True)
        rows = self.R[: self.trained]
        if not len(rows):
            return
        title = f"{self.recipe.name}: {self.cfg.method}, {self.cfg.stream} MNIST, {self.cfg.scenario}-IL"
        plot_matrix(rows, out / "accuracy_matrix.png", title)
        plot_curves(rows, out / "task_accuracy.png", title)
        record = {"R": rows.tolist(), "initial": self.initial.tolist(),
                  **(summarize(self.R, self.initial) if self.trained == self.cfg.tasks else {})}
        atomic_write_bytes(Path(run_dir) / "accuracy_matrix.json", (json.dumps(record, indent=1) + "\n").encode())

    @classmethod
    def evaluate_run(cls, run_dir: str | os.PathLike, recipe: Recipe, ctx: Context) -> dict[str, float]:
        """The summaries of the run's accuracy matrix (``accuracy_matrix.json``), and the saved final model's
        average accuracy over all tasks recomputed (``test_acc``, equal to the matrix's last row mean) --
        for methods whose inference needs their own state (PackNet's masks, progressive columns) the
        matrix's ``acc`` instead."""
        from ..registry import load

        model = load(run_dir, map_location=str(ctx.device))
        loop = cls(recipe, model, cls.load_data(recipe), ctx)
        path = Path(run_dir) / "accuracy_matrix.json"
        saved = json.loads(path.read_text()) if path.is_file() else {}
        out = {f"test_{k}": saved[k] for k in ("bwt", "forgetting", "fwt") if k in saved}
        if loop.method.plain_inference:
            out["test_acc"] = float(loop.task_accuracies("test", recipe.loop.tasks - 1).mean())
        elif "acc" in saved:  # inference needs the method's state (masks, columns), kept in the checkpoint only
            out["test_acc"] = saved["acc"]
        return out
