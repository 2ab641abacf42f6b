"""The step driver: one engine that runs every training paradigm.

A paradigm (supervised, adversarial, RL, episodic, federated, continual, bilevel ...) is an object
with the small interface of :class:`Paradigm`: it knows how to do *one step* of its own kind and
how to evaluate; the driver owns everything around the steps: progress, metric logging, periodic
evaluation, early stopping, checkpoints (periodic, final, on Ctrl-C), resume, and the NaN guard.
What a "step" is belongs to the paradigm (an optimizer step, a GAN generator+discriminator update,
an environment rollout + update, a meta-batch of episodes, a federated round, a continual-task
chunk, an alternating architecture/weight update) — see docs/engine.md.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import NonFiniteLoss
from .checkpoint import CheckpointManager
from .distributed import DistInfo, broadcast_flag
from .metrics import MetricsLogger
from .progress import Progress
from .seed import rng_state, set_rng_state
from .stopping import EarlyStopping


class Paradigm(Protocol):
    """What a training loop gives the driver."""

    total_steps: int
    """Number of steps of a complete run."""
    eval_every: int
    """Evaluate (``evaluate("val")``) every this many steps; 0 never during training."""

    def train_step(self, step: int) -> dict[str, Any]:
        """Do step ``step`` (0-based). Return scalars to log; ``loss`` (tensor or float) is NaN-checked."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on a split, named ``{split}_{metric}`` (e.g. ``val_acc``)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly: models, optimizers, schedulers, data position."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class DriverConfig:
    log_every: int = 50
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    early_stopping: int = 0
    monitor: str = "val_acc"
    monitor_mode: str = "max"
    progress: bool = True
    desc: str = ""


@dataclass
class Outcome:
    steps: int
    """Steps completed."""
    status: str
    """completed | early_stopped."""
    best: float | None = None
    last_eval: dict[str, float] = field(default_factory=dict)


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) arrived; a checkpoint of the last completed step was written."""

    def __init__(self, step: int, path: str | None) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint {path}")
        self.step = step
        self.path = path


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().float().item()
    return v


class Driver:
    def __init__(self, paradigm: Paradigm, cfg: DriverConfig, checkpoints: CheckpointManager | None,
                 metrics: MetricsLogger | None, dist: DistInfo | None = None,
                 device: torch.device | None = None) -> None:
        self.p = paradigm
        self.cfg = cfg
        self.ckpt = checkpoints
        self.metrics = metrics
        self.dist = dist or DistInfo()
        self.device = device or torch.device("cpu")
        self.early = EarlyStopping(cfg.early_stopping, cfg.monitor_mode)
        self._stop_requested = False
        # Train loss is logged as the mean over each logging interval (part of the checkpoint, so a
        # resumed run logs exactly what an uninterrupted one would).
        self._loss_sum, self._loss_n = 0.0, 0

    # -- checkpoints ------------------------------------------------------------------------------
    def _state(self, step: int) -> dict[str, Any]:
        return {"step": step, "paradigm": self.p.state_dict(), "rng": rng_state(),
                "early": self.early.state_dict(), "loss_window": [self._loss_sum, self._loss_n]}

    def save(self, step: int) -> str | None:
        if self.ckpt is None or not self.dist.is_main:
            return None
        return str(self.ckpt.save(step, self._state(step)))

    def restore(self, warn: Any = None) -> int:
        """Load the newest valid checkpoint; return its step (0 when there is none)."""
        if self.ckpt is None:
            return 0
        found = self.ckpt.load_latest(warn=warn)
        if found is None:
            # Starting over: records of an attempt that died before its first checkpoint must go too.
            if self.metrics is not None and self.dist.is_main:
                self.metrics.truncate_after(0)
            return 0
        step, state = found
        self.p.load_state_dict(state["paradigm"])
        set_rng_state(state["rng"])
        self.early.load_state_dict(state["early"])
        self._loss_sum, self._loss_n = state["loss_window"]
        if self.metrics is not None and self.dist.is_main:
            self.metrics.truncate_after(step)
        return step

    # -- signals ----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self._stop_requested = True

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, start_step: int = 0) -> Outcome:
        total = self.p.total_steps
        progress = Progress(total, self.cfg.desc, enabled=self.cfg.progress and self.dist.is_main)
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not in the main thread: leave signals alone
                pass
        status = "completed"
        last_eval: dict[str, float] = {}
        step = start_step
        try:
            # A paradigm whose steps vary in size (RL iterations of whole episodes) sets total_steps to
            # an upper bound and says when its own budget is spent.
            finished = getattr(self.p, "finished", lambda: False)
            while step < total and not finished():
                out = self.p.train_step(step)
                loss = _scalar(out.get("loss", 0.0))
                if not math.isfinite(loss):
                    raise NonFiniteLoss(f"loss is {loss} at step {step + 1}; the last good checkpoint is kept")
                step += 1
                self._loss_sum += loss
                self._loss_n += 1
                if step % self.cfg.log_every == 0 or step == total:
                    logged = {k: _scalar(v) for k, v in out.items()}
                    logged["loss"] = self._loss_sum / self._loss_n
                    self._loss_sum, self._loss_n = 0.0, 0
                    if self.metrics is not None and self.dist.is_main:
                        self.metrics.log(step, "train", **logged)
                    shown = getattr(self.p, "progress_keys", ("loss",))
                    progress.update(step, **{k: v for k, v in logged.items() if k in shown})
                else:
                    progress.update(step)
                if self.p.eval_every and (step % self.p.eval_every == 0 or step == total or finished()):
                    last_eval = self.p.evaluate("val")
                    if last_eval:
                        if self.metrics is not None and self.dist.is_main:
                            self.metrics.log(step, "val", **last_eval)
                        progress.update(step, force=not progress.tty, **last_eval)
                        if self.cfg.monitor in last_eval:
                            self.early.update(last_eval[self.cfg.monitor])
                if self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0 and step < total:
                    self.save(step)
                if broadcast_flag(self._stop_requested, self.dist, self.device):
                    path = self.save(step)
                    progress.close(step)
                    raise Interrupted(step, path)
                if self.early.should_stop:
                    status = "early_stopped"
                    progress.message(f"early stopping at step {step}: {self.cfg.monitor} did not improve "
                                     f"for {self.early.patience} evaluations (best {self.early.best:.4g})")
                    break
            self.save(step)
            progress.close(step)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
        best = self.early.best if math.isfinite(self.early.best) else None
        return Outcome(steps=step, status=status, best=best, last_eval=last_eval)

