"""The step driver: one engine that runs every training paradigm.

A paradigm (supervised, adversarial, RL, episodic, federated, continual, bilevel ...) is a
:class:`~archlab.engine.loop.Loop`: it knows how to do *one step* of its own kind and how to
evaluate; the driver owns everything around the steps: progress, metric logging, periodic
evaluation, best-model selection, early stopping, checkpoints (every N steps, every few minutes of
wall time, final, on Ctrl-C), resume, and the NaN guard.
What a "step" is belongs to the paradigm (an optimizer step, a GAN generator+discriminator update,
an environment rollout + update, a meta-batch of episodes, a federated round, a continual-task
chunk, an alternating architecture/weight update) — see docs/engine.md.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import NonFiniteLoss
from .checkpoint import CheckpointManager
from .distributed import DistInfo, broadcast_flag
from .metrics import MetricsLogger
from .progress import Progress
from .seed import rng_state, set_rng_state
from .stopping import EarlyStopping

if TYPE_CHECKING:
    from .loop import Loop


@dataclass
class DriverConfig:
    log_every: int = 50
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 3
    early_stopping: int = 0
    monitor: str = "val_acc"
    monitor_mode: str = "max"
    keep_best: bool = False
    """Keep the weights of the best evaluation (``loop.best_state()``) and restore them at the end."""
    tie_break: str | None = None
    """On equal monitor values the evaluation with the lower value of this metric is better."""
    progress: bool = True
    desc: str = ""


class BestTracker:
    """The best validation evaluation so far: its score, step and (``keep_best``) the loop's weights."""

    def __init__(self, monitor: str, mode: str, tie_break: str | None) -> None:
        self.monitor, self.mode, self.tie_break = monitor, mode, tie_break
        self.best: dict[str, Any] | None = None  # {"score", "tie", "step", "state"}

    def is_better(self, scores: dict[str, float]) -> bool:
        if self.best is None:
            return True
        new, old = scores[self.monitor], self.best["score"]
        if new == old and self.tie_break is not None:
            return scores.get(self.tie_break, math.inf) < self.best["tie"]
        return new > old if self.mode == "max" else new < old

    def update(self, step: int, scores: dict[str, float], state: Any) -> None:
        self.best = {"score": scores[self.monitor], "step": step, "state": state,
                     "tie": scores.get(self.tie_break, math.inf) if self.tie_break else math.inf}

    def state_dict(self) -> dict[str, Any] | None:
        return self.best

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.best = state


@dataclass
class Outcome:
    steps: int
    """Steps completed."""
    status: str
    """completed | early_stopped | stopped (by the ``on_eval`` callback)."""
    best: float | None = None
    best_step: int | None = None
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
    def __init__(self, paradigm: Loop, cfg: DriverConfig, checkpoints: CheckpointManager | None,
                 metrics: MetricsLogger | None, dist: DistInfo | None = None,
                 device: torch.device | None = None,
                 on_eval: Callable[[int, dict[str, float]], bool] | None = None) -> None:
        self.p = paradigm
        # Called after every validation evaluation with (step, scores); True ends the run there with
        # status "stopped" (a hyperparameter search's pruner uses it; the run still finishes normally).
        self.on_eval = on_eval
        self.cfg = cfg
        self.ckpt = checkpoints
        self.metrics = metrics
        self.dist = dist or DistInfo()
        self.device = device or torch.device("cpu")
        self.early = EarlyStopping(cfg.early_stopping, cfg.monitor_mode)
        self.best = BestTracker(cfg.monitor, cfg.monitor_mode, cfg.tie_break)
        self._last_save = time.monotonic()
        self._stop_requested = False
        # Train loss is logged as the mean over each logging interval (part of the checkpoint, so a
        # resumed run logs exactly what an uninterrupted one would).
        self._loss_sum, self._loss_n = 0.0, 0

    # -- checkpoints ------------------------------------------------------------------------------
    def _state(self, step: int) -> dict[str, Any]:
        return {"step": step, "paradigm": self.p.state_dict(), "rng": rng_state(),
                "early": self.early.state_dict(), "best": self.best.state_dict(),
                "loss_window": [self._loss_sum, self._loss_n]}

    def save(self, step: int) -> str | None:
        self._last_save = time.monotonic()
        if self.ckpt is None:
            return None
        # Every worker builds the state (sharded train.parallel strategies gather their shards here, a
        # collective); rank 0 writes it.
        state = self._state(step)
        if not self.dist.is_main:
            return None
        return str(self.ckpt.save(step, state))

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
        self.best.load_state_dict(state["best"])
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
            finished = self.p.finished  # loops whose steps vary in size (RL) end on their own budget
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
                    progress.update(step, **{k: v for k, v in logged.items() if k in self.p.progress_keys})
                else:
                    progress.update(step)
                if self.p.eval_every and (step % self.p.eval_every == 0 or step == total or finished()):
                    last_eval = self.p.evaluate("val")
                    if last_eval:
                        if self.metrics is not None and self.dist.is_main:
                            self.metrics.log(step, "val", **last_eval)
                        progress.update(step, force=not progress.tty, **last_eval)
                        self._track(step, last_eval)
                        if self.on_eval is not None and self.on_eval(step, last_eval):
                            status = "stopped"
                            progress.message(f"stopped at step {step} by the evaluation callback")
                            break
                if step < total and self._checkpoint_due(step):
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
        b = self.best.best
        return Outcome(steps=step, status=status, best=None if b is None else b["score"],
                       best_step=None if b is None else b["step"], last_eval=last_eval)

    def _track(self, step: int, scores: dict[str, float]) -> None:
        """Early stopping and best-model selection on the monitored validation metric."""
        if self.cfg.monitor not in scores:
            return
        self.early.update(scores[self.cfg.monitor])
        if self.best.is_better(scores):
            self.best.update(step, scores, self.p.best_state() if self.cfg.keep_best else None)

    def _checkpoint_due(self, step: int) -> bool:
        every, minutes = self.cfg.checkpoint_every, self.cfg.checkpoint_minutes
        if every and step % every == 0:
            return True
        # Wall time is read by every rank but only rank 0's decision counts: share it.
        late = bool(minutes) and time.monotonic() - self._last_save >= 60 * minutes
        return broadcast_flag(late, self.dist, self.device) if self.dist.enabled else late

    def final_metrics(self) -> dict[str, Any]:
        """The loop's final metrics plus ``best_{monitor}`` and ``best_step`` of the best evaluation;
        for ``keep_best`` loops the best evaluation's weights are restored first and the last weights'
        metrics are added as ``final_*``."""
        b = self.best.best
        if b is None:
            return self.p.final_metrics()
        if not self.cfg.keep_best:
            return {**self.p.final_metrics(), f"best_{self.cfg.monitor}": b["score"], "best_step": b["step"]}
        last = self.p.final_metrics()
        self.p.load_best(b["state"])
        return {**self.p.final_metrics(), **{f"final_{k}": v for k, v in last.items()}, "best_step": b["step"]}

