"""Differentially private classification with DP-SGD (``train.loop = "dpsgd"``; Abadi et al. 2016).

One step (see :mod:`archlab.privacy.dpsgd`):

    L     <- Poisson sample: every training example independently with probability q = loop.sample_rate
    g     <- (sum_{i in L} clip_C(grad loss(x_i)) + N(0, sigma^2 C^2 I)) / (q N)
    theta <- optimizer(theta, g)          ([optim]; the schedule steps once per step)

``train.epochs`` counts expected passes: a run has ``round(epochs / q)`` steps. After every evaluation
and at the end the loop reports ``epsilon``, the (epsilon, loop.delta)-DP guarantee of the steps taken
so far from the RDP accountant (:func:`archlab.privacy.epsilon`). Evaluation is not private (it reads
the held-out splits only). The Poisson generator is part of the checkpoint, so a resumed run draws the
batches (and the noise, from the driver's saved RNG) an uninterrupted one would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..engine.loop import Context, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..privacy import DPSGD, epsilon, poisson_batch
from ..privacy.dpsgd_fast import unsupported_layers
from .supervised import Supervised

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class DPSGDConfig:
    """``[loop]`` of the DP-SGD loop."""

    sample_rate: float = 0.004
    """q: the probability that an example joins a step's batch (expected batch size q N)."""
    noise_multiplier: float = 1.0
    """sigma: the noise std in units of max_grad_norm."""
    max_grad_norm: float = 1.0
    """C: every example's gradient is clipped to this L2 norm (over all parameters)."""
    delta: float = 1e-5
    """delta of the reported (epsilon, delta) guarantee."""
    fast: bool = False
    """the clipped gradient sum from one batched forward and backward (archlab.privacy.dpsgd_fast) instead of
    vmap per-example gradients; equal to rounding; Linear, Conv1d/2d/3d, LayerNorm and GroupNorm layers only."""
    channels_last: bool = False
    """with fast: run the forward of image models (4-d inputs) in channels-last layout (PyTorch's CPU pooling and
    convolutions are faster there; the model's forward must not .view() its conv features)."""

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1 or not 0 <= self.noise_multiplier <= 1e3:
            raise ValueError("need 0 < sample_rate <= 1 and 0 <= noise_multiplier <= 1000")
        if not 0 < self.max_grad_norm <= 1e6 or not 0 < self.delta < 1:
            raise ValueError("need 0 < max_grad_norm <= 1e6 and 0 < delta < 1")
        if self.channels_last and not self.fast:
            raise ValueError("channels_last is an option of the fast path: set fast = true too")


@register_loop("dpsgd")
class PrivateSGD(Supervised):
    """DP-SGD on an in-memory classification dataset: Poisson batches, per-example clipping, noise."""

    Config = DPSGDConfig
    model_families = ("classic",)
    metrics = ("val_acc", "val_loss", "test_acc", "test_loss", "epsilon")
    parallel = ("ddp",)  # per-example clipping and noise are one process's (it refuses --nproc > 1 anyway)

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules()):
            raise ArchlabError(f"model {recipe.model_name!r} has BatchNorm, which mixes the examples of a batch; "
                               "DP-SGD needs per-example gradients (set model.norm to 'none' or 'layer')")
        bad = unsupported_layers(model) if recipe.loop.fast else []
        if bad:
            raise ArchlabError(f"loop.fast: the DP-SGD fast path does not support {', '.join(bad)}; "
                               "set loop.fast = false")
        tc = recipe.train
        if tc.accumulate != 1 or tc.l1 or tc.grad_clip or recipe.data.augment or tc.compile:
            raise ArchlabError("train.accumulate, train.l1, train.grad_clip, train.compile and data.augment are not "
                               "used by the dpsgd loop (clipping is loop.max_grad_norm); leave them at their defaults")
        super().check_fit(recipe, data, model)

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the dpsgd loop runs in one process; drop --nproc")
        super().__init__(recipe, model, data, ctx)
        cfg: DPSGDConfig = self.cfg
        n = len(data.train)
        tc = recipe.train
        self.total_steps = tc.steps or max(1, round(tc.epochs / cfg.sample_rate))
        per_epoch = max(1, round(1 / cfg.sample_rate))
        self.eval_every = tc.eval_every or per_epoch
        self.opt = self.trainable("model", self.model)  # again: its schedule must know the new total_steps
        self.sampler = torch.Generator().manual_seed(ctx.seed + 2)
        self.dp = DPSGD(self.model, self.opt.optimizer, F.cross_entropy, cfg.noise_multiplier, cfg.max_grad_norm,
                        expected_batch_size=max(1, round(cfg.sample_rate * n)), fast=cfg.fast,
                        channels_last=cfg.channels_last)
        self.steps_done = 0

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        idx = poisson_batch(len(self.train_y), self.cfg.sample_rate, self.sampler).to(self.ctx.device)
        x, y = self.train_x[idx], self.train_y[idx]
        fast = self.cfg.fast and len(x) > 0  # the fast path's own forward gives the batch's loss
        if not fast:
            with torch.no_grad():  # the batch's loss before the update, for the log
                loss = F.cross_entropy(self.model(x), y) if len(x) else torch.zeros(())
        self.opt.zero_grad()
        batch_loss = self.dp.privatize(x, y)
        if fast:
            loss = batch_loss
        lr = self.opt.step()
        self.steps_done = step + 1
        return {"loss": loss, "lr": lr, "batch": len(idx)}

    def _epsilon(self) -> float:
        c = self.cfg
        return epsilon(sample_rate=c.sample_rate, noise_multiplier=c.noise_multiplier, steps=self.steps_done,
                       delta=c.delta)

    def evaluate(self, split: str) -> dict[str, float]:
        out = super().evaluate(split)
        return {**out, "epsilon": self._epsilon()} if split == "val" and out else out

    def final_metrics(self) -> dict[str, float]:
        return {**super().final_metrics(), "epsilon": self._epsilon()}

    @classmethod
    def evaluate_run(cls, run_dir: str | os.PathLike, recipe: Recipe, ctx: Context) -> dict[str, float]:
        """``archlab eval``: accuracy and loss of the saved model (epsilon is in the run's summary.json: the
        number of steps taken is not part of the saved model)."""
        return {k: v for k, v in super().evaluate_run(run_dir, recipe, ctx).items() if k != "epsilon"}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sampler": self.sampler.get_state(), "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sampler.set_state(state["sampler"])
        self.steps_done = state["steps_done"]
