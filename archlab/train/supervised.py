"""Supervised classification: minibatch SGD-family training on an in-memory dataset.

One step = ``accumulate`` micro-batches -> one optimizer update:

    loss = CE(f(x), y; loop.label_smoothing) + l1 * sum|W|     (per micro-batch, averaged)
    g    = mean over workers of grad(loss)                      (``--nproc``: one all-reduce)
    W   <- optimizer(W, clip(g)),  lr <- schedule(step)

Batches come from :class:`BatchStream`: a seeded permutation per epoch, drop-last, with its
position in the checkpoint so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data import Dataset, Split, make_transform
from ..engine.loop import Context, Loop, probe_forward, register_loop
from ..engine.parallel import STRATEGIES
from ..errors import ArchlabError
from ..models.base import ArchModel

if TYPE_CHECKING:
    from ..recipe import Recipe


class BatchStream:
    """Global batches of indices, reshuffled every epoch from a private generator (drop-last).

    Every worker draws the same global order; ``--nproc`` workers then take disjoint slices.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size > n:
            raise ArchlabError(f"data.batch_size {batch_size} is larger than the training split ({n} examples)")
        self.n = n
        self.batch_size = batch_size
        self.per_epoch = n // batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.pos = self.per_epoch  # forces a fresh permutation on the first call
        self.perm = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        if self.pos >= self.per_epoch:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
            self.epoch += 1
        b = self.batch_size
        idx = self.perm[self.pos * b:(self.pos + 1) * b]
        self.pos += 1
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "epoch": self.epoch, "pos": self.pos, "perm": self.perm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.epoch, self.pos, self.perm = state["epoch"], state["pos"], state["perm"]


@torch.no_grad()
def classification_scores(forward: Callable[[torch.Tensor], torch.Tensor], part: Split, split: str, batch_size: int,
                          device: torch.device,
                          autocast: Callable[[], Any] = contextlib.nullcontext) -> dict[str, float]:
    """``{split}_acc`` and ``{split}_loss`` (mean cross-entropy) of ``forward`` over ``part``, in batches of
    ``batch_size`` moved to ``device``; each forward pass runs under ``autocast()``, the logits in fp32."""
    correct, loss_sum = 0, 0.0
    for i in range(0, len(part), batch_size):
        x = part.x[i:i + batch_size].to(device)
        y = part.y[i:i + batch_size].to(device)
        with autocast():
            logits = forward(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    return {f"{split}_acc": correct / len(part), f"{split}_loss": loss_sum / len(part)}


def total_steps(recipe: Recipe, n_train: int) -> tuple[int, int]:
    """(optimizer steps of the run, steps per epoch)."""
    per_epoch = max(1, n_train // (recipe.data.batch_size * recipe.train.accumulate))
    steps = recipe.train.steps or max(1, round(recipe.train.epochs * per_epoch))
    return steps, per_epoch


@dataclass
class SupervisedConfig:
    """``[loop]`` of the supervised (and seq2seq) loop."""

    label_smoothing: float = 0.0
    """Cross-entropy against (1 - s) one-hot + s / classes (Szegedy et al. 2016); 0: plain labels."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@register_loop("supervised")
class Supervised(Loop):
    """Classification of in-memory arrays (images, signals): minibatch steps, cross-entropy."""

    Config = SupervisedConfig
    model_families = ("classic", "transformers", "search", "quantum")  # search: networks derived by NAS (darts_net)
    parallel = STRATEGIES

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        """One forward pass on two training examples: the output must be (2, classes) logits."""
        x = data.train.x[:2]
        shortest = min(x.shape[2:] or x.shape[1:])  # signals (N, L) / (N, C, L); images (N, C, H, W)
        if recipe.data.augment and make_transform(recipe.data.augment).max_offset >= shortest:
            raise ArchlabError(f"data.augment: shifts and crops must be smaller than the examples of "
                               f"{recipe.data.name!r} ({shortest} long), got {list(recipe.data.augment)}")
        out = probe_forward(model, x, f"model {recipe.model_name!r}", repr(recipe.data.name))
        if not isinstance(out, torch.Tensor) or out.shape != (len(x), data.num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ArchlabError(f"model {recipe.model_name!r} gives outputs of shape {shape} on {recipe.data.name!r}, "
                               f"which has {data.num_classes} classes: need ({len(x)}, {data.num_classes}) logits")

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        world = ctx.dist.world_size
        if dc.batch_size % world:
            raise ArchlabError(f"data.batch_size {dc.batch_size} must be divisible by --nproc {world}")
        self.train_x = data.train.x.to(ctx.device)
        self.train_y = data.train.y.to(ctx.device)
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        self.aug_gen = torch.Generator().manual_seed(ctx.seed + 1)
        self.augment = make_transform(dc.augment) if dc.augment else None
        self.total_steps, per_epoch = total_steps(recipe, len(data.train))
        has_val = len(data.val) > 0
        self.eval_every = (tc.eval_every or per_epoch) if has_val else 0
        self.opt = self.trainable("model", self.model)
        self.forward = torch.compile(self.model) if tc.compile else self.model

    def _micro_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The global micro-batch (every worker draws the same; train.parallel picks each one's part)."""
        idx = self.stream.next().to(self.ctx.device)
        x, y = self.train_x[idx], self.train_y[idx]
        if self.augment is not None:
            x = self.augment(x, self.aug_gen)  # on the global batch, so workers agree with one process
        return x, y

    def _batch_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)

    def train_step(self, step: int) -> dict[str, Any]:
        tc = self.recipe.train
        return self.opt.batch_step(tc.accumulate, tc.l1, self._micro_batch, self.forward, self._batch_loss)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        part: Split = getattr(self.data, split)
        if len(part) == 0:
            return {}
        self.model.eval()
        return classification_scores(self.forward, part, split, self.recipe.data.eval_batch_size, self.ctx.device,
                                     self.ctx.precision.autocast)

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """Pictures of a few test examples from models that draw them (``plot_examples(x, y, folder)``,
        e.g. ViT's attention rollout) into ``RUN/plots``."""
        if hasattr(self.model, "plot_examples"):
            self.model.plot_examples(self.data.test.x[:8], self.data.test.y[:8], Path(run_dir) / "plots")

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "stream": self.stream.state_dict(), "aug_gen": self.aug_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self.stream.load_state_dict(state["stream"])
        self.aug_gen.set_state(state["aug_gen"])
