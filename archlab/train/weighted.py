"""Supervised classification with a weight per training example (boosting's weak learners, class
re-weighting).

The loss of a micro-batch B is the weighted mean cross-entropy

    loss = sum_{i in B} w_i CE(f(x_i), y_i) / |B|,     w normalized to mean 1 over the training split,

so with equal weights the loop is exactly ``supervised``, and over an epoch it minimizes
``sum_i w_i CE_i / N`` -- the weighted empirical risk that AdaBoost's weak learners fit
(Zhu et al. 2009, Algorithm 2, step (a)). The weights come with the data: pass a
:class:`WeightedDataset` to ``runner.train(data=...)`` (a driver such as ``archlab.toolbox.adaboost``
does); loaded from a recipe alone the data has no weights and every example weighs 1.

Weights travel with the labels as one (B, 2) float64 tensor ``[y, w]`` (labels are exact in float64),
so every ``train.parallel`` strategy slices both by the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..data import Dataset
from ..engine.loop import Context, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from .supervised import Supervised

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class WeightedDataset(Dataset):
    """A :class:`Dataset` with one non-negative weight per training example (``train_weights``, (N,))."""

    train_weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        w = self.train_weights
        if w is not None and (w.shape != (len(self.train),) or not bool(torch.isfinite(w).all())
                              or bool((w < 0).any()) or float(w.sum()) <= 0):
            raise ArchlabError(f"train_weights must be {len(self.train)} finite non-negative numbers, not all 0")


@register_loop("weighted_supervised")
class WeightedSupervised(Supervised):
    """``supervised`` with per-example weights in the cross-entropy (see the module docstring)."""

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        super().__init__(recipe, model, data, ctx)
        w = getattr(data, "train_weights", None)
        w = torch.ones(len(data.train)) if w is None else w.double()
        self.train_w = (w * (len(w) / w.sum())).to(ctx.device, torch.float64)  # mean 1

    def _micro_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.stream.next().to(self.ctx.device)
        x, y = self.train_x[idx], self.train_y[idx]
        if self.augment is not None:
            x = self.augment(x, self.aug_gen)
        return x, torch.stack([y.double(), self.train_w[idx]], dim=1)

    def _batch_loss(self, logits: torch.Tensor, yw: torch.Tensor) -> torch.Tensor:
        y, w = yw[:, 0].long(), yw[:, 1].float()
        ce = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=self.cfg.label_smoothing)
        return (w * ce).mean()
