"""Likelihood training of image models with one optimizer: VAEs (the negative ELBO), autoregressive
models such as PixelCNN (the exact negative log-likelihood) and autoencoders (reconstruction error).
Whatever the model, its ``terms(x)`` gives per-image losses in nats; the loop minimises their mean.

One step:

    x ~ data, scaled to [0, 1];  x ~ Bernoulli(x) when loop.binarize = "dynamic"   (fresh every batch,
                                                                                   Burda et al. 2016 Sec. 5)
    loss = mean over the batch of model.terms(x)["loss"]          VAE: -log p(x|z) + beta KL; AE: -log p(x|x_hat)
    theta <- optimizer(theta, grad loss)

Images are scaled affinely onto [0, 1] by the training split's smallest and largest value (MNIST's
normalised pixels map back to pixel / 255 exactly); the validation and test images are binarized
once, with a fixed seed, so every evaluation scores the same binary images.

Evaluation (nats per image, mean over the split): ``{split}_loss`` (the training objective: -ELBO for a
VAE with beta = 1), ``{split}_rec``, ``{split}_kl`` (and the other :data:`TERMS` a model returns); for
models with a discrete code (``code_counts``: VQ-VAE) ``{split}_usage``, the fraction of codebook
entries the split uses, and ``{split}_perplexity`` exp(H(p)) of the code frequencies p. At the end,
``test_nll`` over the first ``loop.nll_examples`` test images: the exact -log p(x) for models that
have one (``log_prob``: PixelCNN), else -L_k, the importance-weighted bound of Burda et al. (eq. 8)
with ``loop.nll_k`` samples, for models with a bound (``iwae_bound``: VAE); with
``loop.fid_classifier`` ``test_fid``, ``test_is`` and the floor ``fid_floor`` (FID of training vs test
images) over ``loop.fid_samples`` samples. The run directory gets ``samples.png`` (models that
sample) and, for models with a latent code, ``interpolation.png`` / ``interpolation.gif``: codes of
test images walked linearly and spherically.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..data import Dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..models.generative.fid import load_feature_network, sample_quality
from ..models.generative.images import lerp, pixel_range, save_gif, save_grid, slerp
from .supervised import BatchStream

if TYPE_CHECKING:
    from ..recipe import Recipe


#: Per-image terms a model's ``terms(x)`` may return that evaluations average (nats or the model's units):
#: the loss, reconstruction error, KL (VAE), commitment (VQ-VAE), MMD (WAE), adversarial term (AAE).
TERMS = ("loss", "rec", "kl", "commit", "mmd", "adv")


@dataclass
class ELBOConfig:
    """``[loop]`` of the elbo loop."""

    binarize: Literal["dynamic", "none"] = "dynamic"
    """``dynamic``: every training batch is resampled as Bernoulli(pixel) (Burda et al.); ``none``: grey levels."""
    eval_batch: int = 1000
    """Examples per forward pass in evaluations."""
    nll_k: int = 0
    """Importance samples of the final test NLL bound (5000 for reported numbers); 0: no test_nll."""
    nll_examples: int = 0
    """Test examples the NLL bound averages over (the first ones); 0: the whole test split."""
    samples: int = 64
    """Images in ``samples.png``."""
    fid_classifier: str = ""
    """Run directory of a trained classifier of the same images (features for FID / IS); "": no FID."""
    fid_samples: int = 1000
    """Generated images (and test / train images) the final FID compares (models with a prior)."""

    def __post_init__(self) -> None:
        if self.binarize not in ("dynamic", "none"):
            raise ValueError(f"binarize must be 'dynamic' or 'none', got {self.binarize!r}")
        if not 1 <= self.eval_batch <= 10**6 or not 0 <= self.nll_k <= 10**6 or not 0 <= self.nll_examples <= 10**8:
            raise ValueError("need 1 <= eval_batch <= 1e6, 0 <= nll_k <= 1e6 and 0 <= nll_examples <= 1e8")
        if not 1 <= self.samples <= 1024:
            raise ValueError(f"samples must be in [1, 1024], got {self.samples}")
        if not 2 <= self.fid_samples <= 10**6:
            raise ValueError(f"fid_samples must be in [2, 1e6], got {self.fid_samples}")


@register_loop("elbo")
class ELBO(Loop):
    """VAEs and autoencoders on images: minimise the per-image negative ELBO or reconstruction error."""

    Config = ELBOConfig
    model_families = ("generative",)
    metrics = ("val_loss", "val_rec", "val_kl", "test_loss", "test_rec", "test_kl", "test_nll", "test_fid", "test_is",
               "fid_floor", "val_perplexity", "val_usage", "test_perplexity", "test_usage")
    monitor = ("val_loss", "min")
    progress_keys = ("loss", "kl")

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Dataset) -> dict[str, Any]:
        """The image shape (and the flattened size, for models whose config has ``input_dim``)."""
        from ..registry import get

        shape = list(data.input_shape)
        defaults = {"input_dim": math.prod(shape), "image_shape": shape}
        keys = {f.name for f in fields(get(recipe.model_name).cls.config_class)}
        return {k: v for k, v in defaults.items() if k in keys}

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        terms = getattr(model, "terms", None)
        if terms is None:
            raise ArchlabError(f"model {recipe.model_name!r} has no per-image loss terms; the elbo loop trains "
                               "vae, autoencoder and pixelcnn models")
        if list(data.input_shape) != list(model.config.image_shape):
            raise ArchlabError(f"model.image_shape: {recipe.model_name!r} makes images of shape "
                               f"{tuple(model.config.image_shape)}, but {recipe.data.name!r} has examples of "
                               f"shape {tuple(data.input_shape)}")
        if recipe.loop.fid_classifier:
            load_feature_network(recipe.loop.fid_classifier)

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the elbo loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        self.scale = pixel_range(data.train.x, dc.name)
        self.train_x = self._unit(data.train.x).to(ctx.device)
        fixed = torch.Generator().manual_seed(12345)
        self.eval_x = {split: self._binarize(self._unit(getattr(data, split).x), fixed).to(ctx.device)
                       for split in ("val", "test")}
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        self.bin_gen = torch.Generator().manual_seed(ctx.seed + 1)
        per_epoch = max(1, len(data.train) // dc.batch_size)
        self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.eval_every = (tc.eval_every or per_epoch) if len(data.val) else 0
        self.opt = self.trainable("model", self.trained_module())
        self.fid = load_feature_network(self.cfg.fid_classifier) if self.cfg.fid_classifier else None

    def trained_module(self) -> torch.nn.Module:
        """What the ``model`` optimizer updates (a subclass with more optimizers hands it a part)."""
        return self.model

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.scale
        return ((x - lo) / (hi - lo)).clamp(0, 1)

    def _binarize(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.bernoulli(x, generator=gen) if self.cfg.binarize == "dynamic" else x

    def next_batch(self) -> torch.Tensor:
        """The next training batch, scaled to [0, 1] (and binarized afresh), on the device."""
        return self._binarize(self.train_x[self.stream.next().to(self.ctx.device)].cpu(), self.bin_gen).to(
            self.ctx.device)

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        x = self.next_batch()
        self.opt.zero_grad()
        with self.ctx.precision.autocast():
            terms = self.model.terms(x)
        loss = terms["loss"].float().mean()
        self.opt.backward(loss)
        out = {"loss": loss.detach(), "lr": self.opt.step()}
        out.update({k: v.detach().float().mean() for k, v in terms.items() if k in TERMS and k not in ("loss", "rec")})
        return out

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        x = self.eval_x.get(split)
        if x is None or not len(x):
            return {}
        self.model.eval()
        sums: dict[str, float] = {}
        code_counts = getattr(self.model, "code_counts", None)
        counts = None
        # One fixed noise stream per split: evaluations are comparable and leave training's RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed({"val": 0, "test": 1}[split])
            for i in range(0, len(x), self.cfg.eval_batch):
                chunk = x[i:i + self.cfg.eval_batch]
                for key, value in self.model.terms(chunk).items():
                    if key in TERMS:
                        sums[key] = sums.get(key, 0.0) + float(value.double().sum())
                if code_counts is not None:
                    counts = code_counts(chunk) if counts is None else counts + code_counts(chunk)
        out = {f"{split}_{k}": v / len(x) for k, v in sums.items()}
        if counts is not None:  # a discrete code (VQ-VAE): how much of the codebook the split uses
            p = counts.double() / counts.sum()
            out[f"{split}_usage"] = float((counts > 0).double().mean())
            out[f"{split}_perplexity"] = float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))
        return out

    @torch.no_grad()
    def test_nll(self) -> dict[str, float]:
        """On the first ``nll_examples`` test images: the exact -log p(x) of models with ``log_prob``, else
        -L_k of models with ``iwae_bound`` (k = ``nll_k``; 0: none)."""
        exact, bound = getattr(self.model, "log_prob", None), getattr(self.model, "iwae_bound", None)
        if exact is None and (not self.cfg.nll_k or bound is None):
            return {}
        self.model.eval()
        x = self.eval_x["test"]
        x = x[:self.cfg.nll_examples] if self.cfg.nll_examples else x
        total = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            for i in range(0, len(x), 100):
                chunk = x[i:i + 100]
                total += float((exact(chunk) if exact is not None else bound(chunk, self.cfg.nll_k)).double().sum())
        return {"test_nll": -total / len(x)}

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        metrics = {**self.evaluate("val"), **self.evaluate("test")}
        if getattr(self.model, "log_prob", None) is not None and not self.cfg.nll_examples and "test_loss" in metrics:
            metrics["test_nll"] = metrics["test_loss"]  # an exact likelihood over the whole split: already scored
        else:
            metrics.update(self.test_nll())
        if self.fid is not None and getattr(self.model, "can_sample", False):
            n, (lo, hi) = self.cfg.fid_samples, self.scale
            fake = self.model.eval().sample(n, torch.Generator().manual_seed(1))
            metrics.update(sample_quality(self.fid, lo + fake.cpu() * (hi - lo), self.data.test.x[:n],
                                          self.data.train.x[:n]))
        return metrics

    @torch.no_grad()
    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        run_dir = Path(run_dir)
        self.model.eval()
        name = self.recipe.name
        if getattr(self.model, "can_sample", False):
            gen = torch.Generator().manual_seed(0)
            with self.ctx.precision.autocast():
                images = self.model.sample(self.cfg.samples, gen)
            save_grid(images, run_dir / "samples.png", title=f"{name}: samples")
        x = self.eval_x["test"][:8]
        latent = getattr(self.model, "latent", None)
        if len(x) < 2 or latent is None:
            return
        z = latent(x)
        s = torch.linspace(0, 1, 10, device=z.device)
        rows = []
        for i in range(0, len(z) - 1, 2):
            rows.append(self.model.decode_images(lerp(z[i], z[i + 1], s)))
            rows.append(self.model.decode_images(slerp(z[i], z[i + 1], s)))
        save_grid(torch.cat(rows), run_dir / "interpolation.png", nrow=10,
                  title=f"{name}: test image codes, rows alternate linear / spherical")
        save_gif(rows[1], run_dir / "interpolation.gif")

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "stream": self.stream.state_dict(), "bin_gen": self.bin_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self.stream.load_state_dict(state["stream"])
        self.bin_gen.set_state(state["bin_gen"])
