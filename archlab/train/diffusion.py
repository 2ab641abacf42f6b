"""Diffusion training (Ho et al. 2020, Algorithm 1) with an exponential moving average of the weights.

One step:

    x_0 ~ data, scaled to [-1, 1];  t ~ U{0 .. T-1};  eps ~ N(0, I)       (the loop's own seeded generator)
    loss = || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2     (model.loss)
    theta <- optimizer(theta, grad loss)
    theta_ema <- d theta_ema + (1 - d) theta                                 (loop.ema_decay; Ho et al. use 0.9999)

Images are scaled affinely onto [-1, 1] by the training split's smallest and largest value. The run
saves the EMA weights (what samples are drawn from; 0 disables the EMA and saves the trained weights);
the EMA copy takes the trained model's buffers as they are after every step (latent diffusion's scale
factor, measured on the first batch); checkpoints hold both, so resume is exact.

Evaluation: ``{split}_loss``, the same noise-prediction error on the split's images with a fixed draw of
t and eps (comparable between evaluations), computed with the EMA weights. At the end the run directory
gets ``samples.png``: ``loop.samples`` images from ``loop.sample_steps`` DDIM steps (eta = ``loop.eta``);
with ``loop.fid_classifier`` the final metrics add ``test_fid``, ``test_is`` and the floor ``fid_floor``
(FID of training vs test images) over ``loop.fid_samples`` images (:mod:`archlab.models.generative.fid`).

Class-conditional models (a config with ``n_classes``: ``cond_ddpm``) get each training image's label
(``model.loss(x_0, generator, labels=y)``; the model drops labels for classifier-free guidance itself), and
sample with guidance weight ``loop.guidance``: the grid has one column per class, and with a classifier the
final metrics add ``test_class_acc``, its accuracy on the samples of each class averaged over the classes
(``test_class_acc_min``: the worst class, ``test_class_acc_K``: each).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import Dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..models.generative.fid import class_accuracy, load_feature_network, sample_quality
from ..models.generative.images import pixel_range, save_grid
from ..nn.ema import update_ema
from .supervised import BatchStream

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class DiffusionConfig:
    """``[loop]`` of the diffusion loop."""

    ema_decay: float = 0.999
    """Decay d of the weights' moving average; 0: no EMA (the trained weights are saved)."""
    eval_examples: int = 1000
    """Images of a split scored by each evaluation (the first ones)."""
    eval_batch: int = 250
    """Images per forward pass in evaluations."""
    samples: int = 64
    """Images in ``samples.png``."""
    sample_steps: int = 50
    """DDIM steps for ``samples.png``."""
    eta: float = 0.0
    """DDIM eta for ``samples.png`` and the FID samples (0: deterministic; 1: DDPM's variance)."""
    fid_classifier: str = ""
    """Run directory of a trained classifier of the same images (features for FID / IS); "": no FID."""
    fid_samples: int = 1000
    """Generated images (and test / train images) the final FID compares."""
    guidance: float = 0.0
    """Class-conditional models: classifier-free guidance weight w of the samples (0: plain conditional)."""

    def __post_init__(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 1 <= self.eval_examples <= 10**7 or not 1 <= self.eval_batch <= 10**5:
            raise ValueError("need 1 <= eval_examples <= 1e7 and 1 <= eval_batch <= 1e5")
        if not 1 <= self.samples <= 1024 or not 1 <= self.sample_steps <= 100_000 or not 0 <= self.eta <= 1:
            raise ValueError("need 1 <= samples <= 1024, 1 <= sample_steps <= 100000 and 0 <= eta <= 1")
        if not 2 <= self.fid_samples <= 10**6:
            raise ValueError(f"fid_samples must be in [2, 1e6], got {self.fid_samples}")
        if not 0 <= self.guidance <= 100:
            raise ValueError(f"guidance must be in [0, 100], got {self.guidance}")


@register_loop("diffusion")
class Diffusion(Loop):
    """Denoising diffusion models on images: noise-prediction loss, EMA weights, DDIM sample grid."""

    Config = DiffusionConfig
    model_families = ("generative",)
    metrics = ("val_loss", "test_loss", "test_fid", "test_is", "fid_floor", "test_class_acc", "test_class_acc_min")
    monitor = ("val_loss", "min")

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Dataset) -> dict[str, Any]:
        return {"image_shape": list(data.input_shape)}

    @staticmethod
    def check_images(recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        """The model makes images of the data's shape; the FID classifier (if any) loads."""
        if list(data.input_shape) != list(model.config.image_shape):
            raise ArchlabError(f"model.image_shape: {recipe.model_name!r} makes images of shape "
                               f"{tuple(model.config.image_shape)}, but {recipe.data.name!r} has examples of "
                               f"shape {tuple(data.input_shape)}")
        if recipe.loop.fid_classifier:
            load_feature_network(recipe.loop.fid_classifier)

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if getattr(model, "schedule", None) is None:
            raise ArchlabError(f"model {recipe.model_name!r} has no noise schedule; the diffusion loop trains ddpm")
        cls.check_images(recipe, data, model)
        classes = getattr(model.config, "n_classes", 0)
        if classes and (data.train.y is None or int(data.train.y.min()) < 0 or int(data.train.y.max()) >= classes):
            raise ArchlabError(f"model.n_classes: {recipe.model_name!r} is conditioned on {classes} classes, but "
                               f"{recipe.data.name!r} has no labels in 0..{classes - 1}")
        if recipe.loop.sample_steps > model.config.num_steps:
            raise ArchlabError(f"loop.sample_steps: {recipe.loop.sample_steps} is more than the model's "
                               f"num_steps={model.config.num_steps}")

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the diffusion loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        self.scale = pixel_range(data.train.x, dc.name)
        self.train_x = self._signed(data.train.x).to(ctx.device)
        self.classes = getattr(model.config, "n_classes", 0)
        n = self.cfg.eval_examples
        self.train_y = data.train.y.long().to(ctx.device) if self.classes else None
        self.eval_y = {"val": data.val.y[:n].long().to(ctx.device), "test": data.test.y[:n].long().to(ctx.device)} \
            if self.classes else {}
        self.eval_x = {"val": self._signed(data.val.x[:n]).to(ctx.device),
                       "test": self._signed(data.test.x[:n]).to(ctx.device)}
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        self.noise = torch.Generator().manual_seed(ctx.seed + 1)
        per_epoch = max(1, len(data.train) // dc.batch_size)
        self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.eval_every = (tc.eval_every or per_epoch) if len(data.val) else 0
        self.opt = self.trainable("model", self.model)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if self.cfg.ema_decay else None
        self.fid = load_feature_network(self.cfg.fid_classifier) if self.cfg.fid_classifier else None

    def _signed(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.scale
        return ((x - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        idx = self.stream.next().to(self.ctx.device)
        x0 = self.train_x[idx]
        self.opt.zero_grad()
        with self.ctx.precision.autocast():
            loss = self.model.loss(x0, self.noise, **self._labels_of(self.train_y, idx))
        self.opt.backward(loss)
        lr = self.opt.step()
        if self.ema is not None:
            update_ema(self.ema, self.model, self.cfg.ema_decay)
        return {"loss": loss.detach(), "lr": lr}

    @staticmethod
    def _labels_of(y: torch.Tensor | None, idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """``{"labels": y[idx]}`` for conditional models, ``{}`` otherwise (the keyword of ``model.loss``)."""
        return {} if y is None else {"labels": y[idx]}

    def _sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n samples in [0, 1] from the saved model (conditional: labels 0, 1, ..., K-1, 0, ... and guidance)."""
        model, gen = self.final_object().eval(), torch.Generator().manual_seed(seed)
        if not self.classes:
            return model.sample(n, gen, steps=self.cfg.sample_steps, eta=self.cfg.eta), None
        y = torch.arange(n) % self.classes
        return model.sample(n, gen, steps=self.cfg.sample_steps, eta=self.cfg.eta, labels=y,
                            guidance=self.cfg.guidance), y

    def final_object(self) -> ArchModel:
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        x = self.eval_x.get(split)
        if x is None or not len(x):
            return {}
        model = self.final_object().eval()
        gen = torch.Generator().manual_seed({"val": 0, "test": 1}[split])
        total = 0.0
        for i in range(0, len(x), self.cfg.eval_batch):
            part = slice(i, i + self.cfg.eval_batch)
            chunk = x[part]
            total += float(model.loss(chunk, gen, **self._labels_of(self.eval_y.get(split), part))) * len(chunk)
        return {f"{split}_loss": total / len(x)}

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        metrics = {**self.evaluate("val"), **self.evaluate("test")}
        if self.fid is not None:
            n, (lo, hi) = self.cfg.fid_samples, self.scale
            fake, y = self._sample(n, 1)
            fake = lo + fake.cpu() * (hi - lo)
            metrics.update(sample_quality(self.fid, fake, self.data.test.x[:n], self.data.train.x[:n]))
            if y is not None:  # does each class's sample look like that class to the classifier?
                metrics.update(class_accuracy(self.fid, fake, y))
        return metrics

    @torch.no_grad()
    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        images, y = self._sample(self.cfg.samples, 0)
        how = f", one class per column, guidance {self.cfg.guidance:g}" if y is not None else ""
        save_grid(images, Path(run_dir) / "samples.png", nrow=self.classes or 8,
                  title=f"{self.recipe.name}: DDIM {self.cfg.sample_steps} steps, eta {self.cfg.eta:g}{how}")

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.opt.state_dict(), "stream": self.stream.state_dict(), "noise": self.noise.get_state()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self.stream.load_state_dict(state["stream"])
        self.noise.set_state(state["noise"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
