"""Episodic meta-learning: one step = one meta-batch of N-way K-shot tasks (``train.loop = "episodic"``).

Every step draws ``loop.meta_batch`` episodes from a seeded :class:`~archlab.data.episodes.EpisodeSampler`
over the training classes (its generator is in the checkpoint, so a resumed run draws the same
tasks), asks the learner for each episode's meta-loss (:mod:`archlab.meta.base`), averages them and
steps the ``[optim]`` optimizer once:

    for tau in 1..meta_batch:  (S_tau, Q_tau) ~ sampler;  L += learner.meta_loss(S_tau, Q_tau) / meta_batch
    theta <- optimizer(theta, grad L)

Evaluation classifies the queries of *fixed* episodes -- the same ``loop.val_episodes`` validation
episodes at every evaluation, ``loop.test_episodes`` test episodes (a different fixed seed) for the
final numbers -- drawn with ``test_ways``/``test_shots`` from the held-out classes. ``{split}_acc``
is the mean episode accuracy and ``{split}_acc_ci95`` the half-width of its 95% confidence interval
(1.96 standard errors over episodes), the way few-shot papers report it.

On a dataset with fixed episodes (``omniglot_runs``: Lake's 20 one-shot runs) there is nothing to
train on: ``archlab eval RUN --set data.name=omniglot_runs`` reports ``oneshot_acc``, the accuracy
over all queries of all runs (400 for Lake's runs).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data.episodes import Episode, EpisodeSampler, FewShotData, load_fewshot
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..io import atomic_write_bytes, pyplot

if TYPE_CHECKING:
    from ..recipe import Recipe

_EVAL_SEEDS = {"val": 1_000_003, "test": 2_000_003}  # fixed: every run and evaluation sees the same episodes


@dataclass
class EpisodicConfig:
    """``[loop]`` of the episodic loop."""

    ways: int = 5
    """N: classes per training episode."""
    shots: int = 1
    """K: labelled support examples per class."""
    queries: int = 15
    """Query examples per class in each episode."""
    meta_batch: int = 32
    """Episodes averaged into one meta-gradient step."""
    test_ways: int = 0
    """N of the evaluation episodes (0: the same as ways)."""
    test_shots: int = 0
    """K of the evaluation episodes (0: the same as shots)."""
    test_queries: int = 0
    """Queries per class of the evaluation episodes (0: the same as queries)."""
    val_episodes: int = 100
    """Fixed validation episodes scored at every evaluation."""
    test_episodes: int = 1000
    """Fixed test episodes of the final score."""

    def __post_init__(self) -> None:
        for key in ("ways", "shots", "queries", "meta_batch"):
            if not 1 <= getattr(self, key) <= 10_000:
                raise ValueError(f"{key} must be in [1, 10000], got {getattr(self, key)}")
        for key in ("test_ways", "test_shots", "test_queries"):
            if not 0 <= getattr(self, key) <= 10_000:
                raise ValueError(f"{key} must be in [0, 10000], got {getattr(self, key)}")
        if self.ways < 2 or self.test_ways == 1:
            raise ValueError("episodes need at least 2 ways")
        if not 1 <= self.val_episodes <= 100_000 or not 1 <= self.test_episodes <= 100_000:
            raise ValueError("val_episodes and test_episodes must be in [1, 100000]")

    @property
    def eval_shape(self) -> tuple[int, int, int]:
        return self.test_ways or self.ways, self.test_shots or self.shots, self.test_queries or self.queries


@register_loop("episodic")
class Episodic(Loop):
    """Meta-learning on N-way K-shot episodes: one step = one meta-batch of tasks."""

    Config = EpisodicConfig
    model_families = ("meta",)
    data_kind = "episodes"
    metrics = ("val_acc", "val_loss", "test_acc", "test_acc_ci95", "test_loss", "oneshot_acc")
    monitor = ("val_acc", "max")
    progress_keys = ("loss", "acc")

    @classmethod
    def load_data(cls, recipe: Recipe) -> FewShotData:
        return load_fewshot(recipe.data.name, recipe.data.options)

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: FewShotData) -> dict[str, Any]:
        c, h, _ = data.input_shape
        return {"in_channels": c, "image_size": h}

    @classmethod
    def check_fit(cls, recipe: Recipe, data: FewShotData, model: Any) -> None:
        cfg, mc = recipe.loop, model.config
        if (mc.in_channels, mc.image_size, mc.image_size) != tuple(data.input_shape):
            raise ArchlabError(f"model: {recipe.model_name!r} takes images of shape ({mc.in_channels}, "
                               f"{mc.image_size}, {mc.image_size}), {recipe.data.name!r} has {tuple(data.input_shape)}")
        ways = max([cfg.ways, cfg.eval_shape[0]] + [e.ways for e in data.fixed_episodes])
        if getattr(mc, "ways", ways) < ways:
            raise ArchlabError(f"model.ways: {recipe.model_name!r} has {mc.ways} outputs but the episodes are "
                               f"{ways}-way; set model.ways = {ways}")

    def __init__(self, recipe: Recipe, model: Any, data: FewShotData, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the episodic loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        cfg, tc = self.cfg, recipe.train
        self.sampler: EpisodeSampler | None = None
        if len(data.train):  # evaluation-only data (Lake's runs) has no training split
            self.sampler = EpisodeSampler(data.train, cfg.ways, cfg.shots, cfg.queries, ctx.seed, "training split")
            per_epoch = max(1, len(data.train) // (cfg.ways * (cfg.shots + cfg.queries) * cfg.meta_batch))
            self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
            self.eval_every = tc.eval_every or max(1, self.total_steps // 10)
        self._fixed: dict[str, list[Episode]] = {}
        self.opt = self.trainable("model", model)

    # -- training ------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        if self.sampler is None:
            raise ArchlabError(f"dataset {self.data.name!r} has no training split: it only evaluates a trained run")
        self.model.train()
        self.opt.zero_grad()
        n = self.cfg.meta_batch
        total, query_loss, correct, count = 0.0, 0.0, 0, 0
        for _ in range(n):
            ep = self.sampler.sample().to(self.ctx.device)
            with self.ctx.precision.autocast():
                loss, logits = self.model.meta_loss(ep.support_x, ep.support_y, ep.query_x, ep.query_y)
            self.opt.backward(loss / n)
            total += float(loss.detach()) / n
            query_loss += float(F.cross_entropy(logits.detach().float(), ep.query_y)) / n
            correct += int((logits.argmax(1) == ep.query_y).sum())
            count += len(ep.query_y)
        return {"loss": total, "query_loss": query_loss, "acc": correct / count, "lr": self.opt.step()}

    # -- evaluation ----------------------------------------------------------------------------------
    def episodes(self, split: str) -> list[Episode]:
        """The fixed evaluation episodes of ``split`` (drawn once, from a seed that depends only on the split)."""
        if split not in self._fixed:
            ways, shots, queries = self.cfg.eval_shape
            count = self.cfg.val_episodes if split == "val" else self.cfg.test_episodes
            sampler = EpisodeSampler(getattr(self.data, split), ways, shots, queries, _EVAL_SEEDS[split],
                                     f"{split} split")
            self._fixed[split] = [sampler.sample() for _ in range(count)]
        return self._fixed[split]

    def classify(self, ep: Episode) -> torch.Tensor:
        """Query logits of one episode, the learner in evaluation mode."""
        self.model.eval()
        ep = ep.to(self.ctx.device)
        with torch.no_grad(), self.ctx.precision.autocast():
            return self.model.predict(ep.support_x, ep.support_y, ep.query_x).float()

    def evaluate(self, split: str) -> dict[str, float]:
        if self.data.fixed_episodes:
            if split != "test":
                return {}
            runs = self.data.fixed_episodes
            correct = sum(int((self.classify(ep).argmax(1).cpu() == ep.query_y).sum()) for ep in runs)
            return {"oneshot_acc": correct / sum(len(ep.query_y) for ep in runs)}
        if not len(getattr(self.data, split).y):
            return {}
        accs, losses = [], []
        for ep in self.episodes(split):
            logits = self.classify(ep).cpu()
            accs.append(float((logits.argmax(1) == ep.query_y).float().mean()))
            losses.append(float(F.cross_entropy(logits, ep.query_y)))
        acc = torch.tensor(accs, dtype=torch.float64)
        ci = 1.96 * float(acc.std()) / math.sqrt(len(accs)) if len(accs) > 1 else 0.0
        return {f"{split}_acc": float(acc.mean()), f"{split}_acc_ci95": ci, f"{split}_loss": sum(losses) / len(losses)}

    # -- state and pictures ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "sampler": self.sampler.state_dict() if self.sampler else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """``plots/episode.png``: the first test episode's support set and queries with the predictions."""
        if self.data.fixed_episodes or not len(self.data.test.y):
            return
        ep = self.episodes("test")[0]
        pred = self.classify(ep).argmax(1).cpu()
        out = Path(run_dir) / "plots"
        out.mkdir(exist_ok=True)
        draw_episode(ep, pred, out / "episode.png", f"{self.recipe.name}: first test episode")
        record = {"support_y": ep.support_y.tolist(), "query_y": ep.query_y.tolist(), "predicted": pred.tolist()}
        atomic_write_bytes(out / "episode.json", (json.dumps(record) + "\n").encode())


def draw_episode(ep: Episode, pred: torch.Tensor, path: Path, title: str, max_queries: int = 20) -> None:
    """Support images (top row, one per class) and queries (below, the first few of every class) titled
    with their predicted class; wrong predictions in red."""
    plt = pyplot()
    ways = ep.ways
    per_class = max(1, max_queries // ways)
    shown = [int(i) for k in range(ways) for i in torch.nonzero(ep.query_y == k).flatten()[:per_class]]
    cols = max(ways, 10)
    rows = 1 + math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    firsts = [int(torch.nonzero(ep.support_y == k)[0]) for k in range(ways)]
    for k, i in enumerate(firsts):
        axes[0, k].imshow(ep.support_x[i, 0].cpu().numpy(), cmap="gray_r")
        axes[0, k].set_title(f"class {k}", fontsize=7)
    for n, i in enumerate(shown):
        ax = axes[1 + n // cols, n % cols]
        ax.imshow(ep.query_x[i, 0].cpu().numpy(), cmap="gray_r")
        ok = int(pred[i]) == int(ep.query_y[i])
        ax.set_title(f"{int(pred[i])} ({int(ep.query_y[i])})", fontsize=7, color="green" if ok else "red")
    fig.suptitle(f"{title}\ntop: support (one per class); below: predicted (true) class", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
