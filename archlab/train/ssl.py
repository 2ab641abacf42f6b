"""Self-supervised pretraining: two augmented views per example, the method's loss, no labels.

One step (the same for every method of the ``ssl`` family -- SimCLR, MoCo v2, BYOL, SwAV, MAE):

    x      = next batch of the training split          (labels are not read)
    v1, v2 = views(x), views(x)                         (``loop.augment``, independent random draws)
    L      = model.ssl_loss(v1, v2)                     (NT-Xent / InfoNCE with a queue / BYOL regression;
                                                         MAE takes one view and masks it itself)
    theta <- optimizer(theta, grad L)                   (only ``model.trained_modules()``)
    model.after_step(progress)                          (momentum encoders: theta' <- m theta' + (1 - m) theta)

Labels are used only to *measure* the representation (:mod:`archlab.train.probe`): every evaluation
reports the k-NN accuracy of the frozen features (train split as the memory bank, Wu et al. 2018);
the final metrics add the linear probe (logistic regression, L2 chosen on the validation split).
The checkpoint holds the whole model (momentum copies, MoCo's queue), the optimizer, the batch order
and the augmentation generator, so resuming is bit-exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..data import Dataset
from ..data.augment import make_views
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from .probe import extract, knn_accuracy, linear_probe, plot_embedding
from .supervised import BatchStream, total_steps

if TYPE_CHECKING:
    from ..models.ssl.base import SSLModel
    from ..recipe import Recipe

Where = Literal["encoder", "projection"]


@dataclass
class SSLLoopConfig:
    """``[loop]`` of the self-supervised loop."""

    augment: list[str] = field(default_factory=lambda: ["shift:5"])
    """how each view is drawn (archlab.data.augment specs, applied in order)"""
    knn_k: int = 200
    """neighbours that vote in the k-NN probe (200 in Wu et al. 2018)"""
    knn_temperature: float = 0.1
    """votes weigh exp(cosine / T)"""
    knn_features: Where = "encoder"
    """features of the k-NN probe: the encoder output h or the projection z"""
    probe_features: Where = "encoder"
    """features of the linear probe"""
    linear_probe: bool = True
    """add the linear probe (val/test_linear_acc) to the final metrics"""
    knn_bank: int = 0
    """training examples in the k-NN memory bank during training evaluations (0: all; the final metrics use all)"""

    def __post_init__(self) -> None:
        try:
            make_views(self.augment)
        except ArchlabError as exc:
            raise ValueError(str(exc)) from None
        if not 1 <= self.knn_k <= 10**5 or not 0 < self.knn_temperature <= 100 or not 0 <= self.knn_bank <= 10**8:
            raise ValueError("need 1 <= knn_k <= 1e5, 0 < knn_temperature <= 100 and 0 <= knn_bank <= 1e8")


@register_loop("ssl")
class SelfSupervised(Loop):
    """Self-supervised pretraining on augmented views (SimCLR, MoCo, BYOL, SwAV, MAE); probes measure it."""

    Config = SSLLoopConfig
    model_families = ("ssl",)
    metrics = ("val_knn_acc", "test_knn_acc", "val_linear_acc", "test_linear_acc")
    monitor = ("val_knn_acc", "max")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: SSLModel) -> None:
        if getattr(model, "paired_text", False):
            raise ArchlabError(f"{recipe.model_name!r} learns from (image, caption) pairs: use train.loop = \"clip\"")
        x = data.train.x[:2]
        views = make_views(recipe.loop.augment)
        shortest = min(x.shape[2:] or x.shape[1:])
        if views.max_shift() >= shortest:
            raise ArchlabError(f"loop.augment: shifts must be smaller than the examples of {recipe.data.name!r} "
                               f"({shortest} long), got {list(recipe.loop.augment)}")
        views(x, torch.Generator().manual_seed(0))  # a spec for images on signals (or back) fails here
        try:
            model.check_encoder_output(x)
        except (RuntimeError, ValueError, IndexError, TypeError, ArchlabError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ArchlabError(f"model.encoder {model.config.encoder!r} does not fit {recipe.data.name!r} "
                               f"(examples of shape {tuple(x.shape[1:])}): {msg[:200]}") from None

    def __init__(self, recipe: Recipe, model: SSLModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the ssl loop runs in one process (queues and BatchNorm see the whole batch); "
                               "drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        self.train_x = data.train.x.to(ctx.device)
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        self.aug_gen = torch.Generator().manual_seed(ctx.seed + 1)
        self.views = make_views(self.cfg.augment)
        self.total_steps, per_epoch = total_steps(recipe, len(data.train))
        self.eval_every = (tc.eval_every or per_epoch) if len(data.val) else 0
        self.trained = model.trained_modules()
        self.opt = self.trainable("model", self.trained)

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        x = self.train_x[self.stream.next().to(self.ctx.device)]
        views = [self.views(x, self.aug_gen) for _ in range(self.model.num_views)]
        self.opt.zero_grad()
        with self.ctx.precision.autocast():
            loss = self.model.ssl_loss(*views)
        self.opt.backward(loss)
        lr = self.opt.step()
        extra = self.model.after_step((step + 1) / self.total_steps)
        return {"loss": loss.detach(), "lr": lr, **extra}

    def _features(self, split: str, where: str, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        part = getattr(self.data, split)
        n = limit or len(part)
        with self.ctx.precision.autocast():
            return extract(self.model, part.x[:n], where, self.recipe.data.eval_batch_size, self.ctx.device), part.y[:n]

    def _knn(self, bank: tuple[torch.Tensor, torch.Tensor], query: tuple[torch.Tensor, torch.Tensor]) -> float:
        return knn_accuracy(*bank, *query, self.cfg.knn_k, self.cfg.knn_temperature, self.data.num_classes)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        if len(getattr(self.data, split)) == 0:
            return {}
        where = self.cfg.knn_features
        return {f"{split}_knn_acc": self._knn(self._features("train", where, self.cfg.knn_bank),
                                               self._features(split, where))}

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

        def feats(split: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
            """Each split's features once (the training split is the k-NN bank and the probe's data)."""
            if (split, where) not in cache:
                cache[split, where] = self._features(split, where)
            return cache[split, where]

        splits = ("val", "test") if len(self.data.val) else ("test",)
        out = {f"{s}_knn_acc": self._knn(feats("train", self.cfg.knn_features), feats(s, self.cfg.knn_features))
               for s in splits}
        if self.cfg.linear_probe:
            where = self.cfg.probe_features
            lin = linear_probe(feats("train", where), feats("val", where), feats("test", where), self.data.num_classes)
            out.update(test_linear_acc=lin["test_acc"], linear_weight_decay=lin["weight_decay"])
            if len(self.data.val):
                out["val_linear_acc"] = lin["val_acc"]
        return out

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """``plots/embedding.png``: PCA of the test set's encoder features, coloured by class."""
        f, y = self._features("test", "encoder")
        plot_embedding(f, y, Path(run_dir) / "plots" / "embedding.png",
                       f"{self.recipe.name}: {self.recipe.model_name} encoder features, PCA of the test set")

    def state_dict(self) -> dict[str, Any]:
        return {"optim": self.opt.state_dict(), "model": self.model.state_dict(),
                "stream": self.stream.state_dict(), "aug_gen": self.aug_gen.get_state(),
                "model_rng": self.model.rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optim"])
        self.model.load_state_dict(state["model"])
        self.stream.load_state_dict(state["stream"])
        self.aug_gen.set_state(state["aug_gen"])
        self.model.load_rng_state(state["model_rng"])
