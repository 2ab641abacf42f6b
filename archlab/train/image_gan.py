"""Adversarial training on images: the non-saturating GAN loss (DCGAN) or the Wasserstein loss with
gradient penalty (WGAN-GP), two named optimizers, ``n_critic`` critic updates per generator update,
an optional EMA of the generator, and FID against a classifier's features.

One step:

    repeat loop.n_critic times:                                         [optim.discriminator]
        x ~ data in [-1, 1],  x~ = G(z),  z ~ N(0, I)
        bce:      L_D = BCE(D(x), 1) + BCE(D(x~), 0)                     (Goodfellow et al. 2014)
        wgan_gp:  L_D = D(x~) - D(x) + lambda (|grad_x^ D(x^)|_2 - 1)^2,  x^ = u x + (1 - u) x~, u ~ U[0, 1]
                                                                        (Gulrajani et al. 2017, Algorithm 1)
    z ~ N(0, I)                                                          [optim.generator]
        bce:      L_G = BCE(D(G(z)), 1)          (non-saturating, -log D(G(z)))
        wgan_gp:  L_G = -D(G(z))
    theta_G_ema <- d theta_G_ema + (1 - d) theta_G                       (loop.ema_decay; 0: no EMA)

Images are scaled affinely onto [-1, 1] by the training split's smallest and largest value. Evaluation
needs ``loop.fid_classifier`` (a trained classifier of the same images, e.g. an ``archlab train`` run of
``recipes/classic/mnist_lenet5.toml``): ``val_fid`` compares ``loop.fid_samples`` samples with as many
validation images; the final metrics add ``test_fid``, ``test_is`` and the floor ``fid_floor`` (FID of
training vs test images). Samples come from the EMA generator when there is one (it is what the run
saves). The run directory gets ``samples.png`` and ``interpolation.png`` (latent walks, linear / spherical).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from ..data import Dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..models.generative.fid import frechet_distance, load_feature_network, sample_quality
from ..models.generative.images import lerp, pixel_range, save_grid, slerp
from .supervised import BatchStream

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class ImageGANConfig:
    """``[loop]`` of the image_gan loop."""

    loss: Literal["bce", "wgan_gp"] = "bce"
    """``bce``: non-saturating GAN loss; ``wgan_gp``: Wasserstein loss with gradient penalty."""
    n_critic: int = 1
    """Discriminator (critic) updates per generator update (WGAN-GP: 5)."""
    gp_weight: float = 10.0
    """lambda of the gradient penalty (wgan_gp only; Gulrajani et al. use 10)."""
    ema_decay: float = 0.0
    """Decay of the generator's weight average; 0: no EMA (samples from the trained generator)."""
    fid_classifier: str = ""
    """Run directory of a trained classifier of the same images; "": no FID (and no evaluation)."""
    fid_samples: int = 1000
    """Generated images (and data images) each FID compares."""
    samples: int = 64
    """Images in ``samples.png``."""

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "wgan_gp"):
            raise ValueError(f"loss must be 'bce' or 'wgan_gp', got {self.loss!r}")
        if not 1 <= self.n_critic <= 100 or not 0 <= self.gp_weight <= 1e4 or not 0 <= self.ema_decay < 1:
            raise ValueError("need 1 <= n_critic <= 100, 0 <= gp_weight <= 1e4 and 0 <= ema_decay < 1")
        if not 2 <= self.fid_samples <= 10**6 or not 1 <= self.samples <= 1024:
            raise ValueError("need 2 <= fid_samples <= 1e6 and 1 <= samples <= 1024")


@register_loop("image_gan")
class ImageGAN(Loop):
    """GANs on images (DCGAN, WGAN-GP): two optimizers, n_critic, FID."""

    Config = ImageGANConfig
    model_families = ("generative",)
    trainables = ("generator", "discriminator")
    metrics = ("val_fid", "test_fid", "test_is", "fid_floor")
    monitor = ("val_fid", "min")
    progress_keys = ("loss", "d_loss")

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Dataset) -> dict[str, Any]:
        return {"image_shape": list(data.input_shape)}

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if getattr(model, "generator", None) is None or getattr(model, "critic", None) is None:
            raise ArchlabError(f"model {recipe.model_name!r} has no generator and critic; the image_gan loop "
                               "trains dcgan")
        if list(data.input_shape) != list(model.config.image_shape):
            raise ArchlabError(f"model.image_shape: {recipe.model_name!r} makes images of shape "
                               f"{tuple(model.config.image_shape)}, but {recipe.data.name!r} has examples of "
                               f"shape {tuple(data.input_shape)}")
        if recipe.loop.loss == "wgan_gp" and model.config.critic_norm == "batch":
            raise ArchlabError("model.critic_norm: the WGAN-GP penalty needs a critic without batch norm; "
                               "set critic_norm = \"layer\" or \"none\"")
        if recipe.loop.fid_classifier:
            load_feature_network(recipe.loop.fid_classifier)

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the image_gan loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        self.scale = lo, hi = pixel_range(data.train.x, dc.name)
        self.train_x = ((data.train.x - lo) / (hi - lo) * 2 - 1).to(ctx.device)
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        self.noise = torch.Generator().manual_seed(ctx.seed + 1)
        per_epoch = max(1, len(data.train) // (dc.batch_size * self.cfg.n_critic))
        self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.fid = load_feature_network(self.cfg.fid_classifier) if self.cfg.fid_classifier else None
        self.eval_every = (tc.eval_every or per_epoch) if self.fid is not None and len(data.val) else 0
        self.g = self.trainable("generator", model.generator)
        self.d = self.trainable("discriminator", model.discriminator)
        self.ema = (copy.deepcopy(model.generator).eval().requires_grad_(False)
                    if self.cfg.ema_decay else None)

    def _z(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.model.config.latent_dim, generator=gen).to(self.ctx.device)

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        u = torch.rand(len(real), 1, 1, 1, generator=self.noise).to(real.device)
        mix = (u * real + (1 - u) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.model.critic(mix).sum(), mix, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        b, wgan = self.recipe.data.batch_size, self.cfg.loss == "wgan_gp"
        for _ in range(self.cfg.n_critic):
            real = self.train_x[self.stream.next().to(self.ctx.device)]
            with torch.no_grad():
                fake = self.model.generator(self._z(b, self.noise))
            self.d.zero_grad()
            with self.ctx.precision.autocast():
                d_real, d_fake = self.model.critic(real).float(), self.model.critic(fake).float()
            if wgan:
                d_loss = d_fake.mean() - d_real.mean() + self.cfg.gp_weight * self._gradient_penalty(real, fake)
            else:
                d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                          + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            self.d.backward(d_loss)
            d_lr = self.d.step()
        self.g.zero_grad()
        with self.ctx.precision.autocast():
            scores = self.model.critic(self.model.generator(self._z(b, self.noise))).float()
        g_loss = -scores.mean() if wgan else F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores))
        self.g.backward(g_loss)
        # The generator's backward also filled the critic's gradients; its next zero_grad clears them.
        g_lr = self.g.step()
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.model.generator.parameters(), strict=True):
                    e.lerp_(p.detach(), 1 - self.cfg.ema_decay)
                for e, p in zip(self.ema.buffers(), self.model.generator.buffers(), strict=True):
                    e.copy_(p)
        return {"loss": g_loss.detach(), "d_loss": d_loss.detach(), "lr": g_lr, "d_lr": d_lr}

    def _sampling_model(self) -> ArchModel:
        """The model with the EMA generator in place of the trained one (what the run saves)."""
        if self.ema is None:
            return self.model.eval()
        model = copy.deepcopy(self.model).eval()
        model.generator.load_state_dict(self.ema.state_dict())
        return model

    def final_object(self) -> ArchModel:
        return self._sampling_model()

    def _images(self, n: int, seed: int) -> torch.Tensor:
        """n samples in the data's scale (what the classifier was trained on)."""
        lo, hi = self.scale
        return lo + self._sampling_model().sample(n, torch.Generator().manual_seed(seed)).cpu() * (hi - lo)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        data = getattr(self.data, split, None)
        if self.fid is None or data is None or len(data) < 2:
            return {}
        n = min(self.cfg.fid_samples, len(data))
        fake, _ = self.fid(self._images(n, {"val": 0, "test": 1}.get(split, 2)))
        real, _ = self.fid(data.x[:n])
        return {f"{split}_fid": frechet_distance(fake, real)}

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        if self.fid is None:
            return {}
        n = self.cfg.fid_samples
        return {**self.evaluate("val"),
                **sample_quality(self.fid, self._images(n, 1), self.data.test.x[:n], self.data.train.x[:n])}

    @torch.no_grad()
    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        model, name = self._sampling_model(), self.recipe.name
        save_grid(model.sample(self.cfg.samples, torch.Generator().manual_seed(0)), Path(run_dir) / "samples.png",
                  title=f"{name}: samples")
        z = self._z(8, torch.Generator().manual_seed(3))
        s = torch.linspace(0, 1, 10, device=z.device)
        rows = [f(z[i], z[i + 1], s) for i in range(0, 8, 2) for f in (lerp, slerp)]
        save_grid(torch.cat([model.decode_images(r) for r in rows]), Path(run_dir) / "interpolation.png", nrow=10,
                  title=f"{name}: latent walks, rows alternate linear / spherical")

    def state_dict(self) -> dict[str, Any]:
        state = {"generator": self.g.state_dict(), "discriminator": self.d.state_dict(),
                 "stream": self.stream.state_dict(), "noise": self.noise.get_state()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["generator"])
        self.d.load_state_dict(state["discriminator"])
        self.stream.load_state_dict(state["stream"])
        self.noise.set_state(state["noise"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
