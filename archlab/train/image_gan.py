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

``loop.r1_weight`` = gamma > 0 adds the R1 penalty to the bce critic loss, gamma / 2 E_x |grad_x D(x)|^2 on real
images (Mescheder et al. 2018, eq. 9; StyleGAN's regulariser, Karras et al. 2019 Appendix C, gamma = 10).

Images are scaled affinely onto [-1, 1] by the training split's smallest and largest value. Evaluation
needs ``loop.fid_classifier`` (a trained classifier of the same images, e.g. an ``archlab train`` run of
``recipes/classic/mnist_lenet5.toml``): ``val_fid`` compares ``loop.fid_samples`` samples with as many
validation images; the final metrics add ``test_fid``, ``test_is`` and the floor ``fid_floor`` (FID of
training vs test images). Samples come from the EMA generator when there is one (it is what the run
saves). The run directory gets ``samples.png`` and ``interpolation.png`` (latent walks, linear / spherical).

Class-conditional models (a config with ``n_classes``, e.g. ``cgan``) get the labels: G(z, y) with y drawn
uniformly, D(x, y) on the real images' own labels and the fakes' drawn ones (Mirza & Osindero 2014). Their
evaluation adds ``test_class_acc``: the classifier's accuracy on generated images of each class, averaged
over the classes (``test_class_acc_min`` the worst class, ``test_class_acc_K`` each), and the sample grid
has one class per column.

Growing models (``progan``: ``set_growth(stage, alpha)``, ``resolution(stage)``, ``num_stages``) follow
the schedule ``loop.grow_at`` (the steps at which stage 1, 2, ... begin) with a linear fade-in over
``loop.fade_steps`` steps (Karras et al. 2018, Sec. 2):

    stage(t) = #{g in grow_at : g <= t},   alpha(t) = min(1, (t - grow_at[stage - 1]) / fade_steps)
    real images at stage s: x_s = avgpool to resolution(s); while fading, alpha x_s + (1 - alpha) up2(pool2(x_s))

Both are pure functions of the step, so a run resumed mid-fade continues on the same alpha. The
optimizers hold every parameter; a stage's unused layers simply get no gradient.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from ..data import Dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..models.generative.fid import class_accuracy, frechet_distance, load_feature_network, sample_quality
from ..models.generative.images import lerp, pixel_range, save_grid, slerp
from ..nn.ema import update_ema
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
    r1_weight: float = 0.0
    """gamma of the R1 penalty on real images (bce only; StyleGAN uses 10); 0: none."""
    ema_decay: float = 0.0
    """Decay of the generator's weight average; 0: no EMA (samples from the trained generator)."""
    fid_classifier: str = ""
    """Run directory of a trained classifier of the same images; "": no FID (and no evaluation)."""
    fid_samples: int = 1000
    """Generated images (and data images) each FID compares."""
    samples: int = 64
    """Images in ``samples.png``."""
    grow_at: list[int] = field(default_factory=list)
    """Growing models: the steps at which stages 1, 2, ... begin (increasing; one per growth); []: no growth."""
    fade_steps: int = 0
    """Growing models: steps over which a new stage's alpha ramps from 0 to 1 (0: switch at once)."""

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "wgan_gp"):
            raise ValueError(f"loss must be 'bce' or 'wgan_gp', got {self.loss!r}")
        if not 1 <= self.n_critic <= 100 or not 0 <= self.gp_weight <= 1e4 or not 0 <= self.ema_decay < 1:
            raise ValueError("need 1 <= n_critic <= 100, 0 <= gp_weight <= 1e4 and 0 <= ema_decay < 1")
        if not 0 <= self.r1_weight <= 1e4 or (self.r1_weight and self.loss != "bce"):
            raise ValueError("r1_weight must be in [0, 1e4], and only with loss = 'bce'")
        if not 2 <= self.fid_samples <= 10**6 or not 1 <= self.samples <= 1024:
            raise ValueError("need 2 <= fid_samples <= 1e6 and 1 <= samples <= 1024")
        steps = self.grow_at
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or any(g < 1 for g in steps):
            raise ValueError(f"grow_at must be increasing steps >= 1, got {self.grow_at}")
        if not 0 <= self.fade_steps <= 10**7:
            raise ValueError("need 0 <= fade_steps <= 1e7")


def r1_penalty(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """E_x |grad_x D(x)|^2 of critic ``scores`` (B,) computed from ``real`` (B, ...) (which requires grad)."""
    (grad,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


@register_loop("image_gan")
class ImageGAN(Loop):
    """GANs on images (DCGAN, WGAN-GP, conditional, style-based, growing): two optimizers, n_critic, FID."""

    Config = ImageGANConfig
    model_families = ("generative",)
    trainables = ("generator", "discriminator")
    metrics = ("val_fid", "test_fid", "test_is", "fid_floor", "test_class_acc", "test_class_acc_min")
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
        if recipe.loop.loss == "wgan_gp" and getattr(model.config, "critic_norm", None) == "batch":
            raise ArchlabError("model.critic_norm: the WGAN-GP penalty needs a critic without batch norm; "
                               "set critic_norm = \"layer\" or \"none\"")
        classes = getattr(model.config, "n_classes", 0)
        if classes and (data.train.y.dim() != 1 or int(data.train.y.max()) >= classes or int(data.train.y.min()) < 0):
            raise ArchlabError(f"model.n_classes: {recipe.model_name!r} is conditioned on {classes} classes, but "
                               f"{recipe.data.name!r} has labels outside 0..{classes - 1}")
        stages = getattr(model, "num_stages", 1)
        if recipe.loop.grow_at and len(recipe.loop.grow_at) != stages - 1:
            raise ArchlabError(f"loop.grow_at: {recipe.model_name!r} grows through {stages} stages, so grow_at needs "
                               f"{stages - 1} steps, got {recipe.loop.grow_at}")
        if stages > 1 and not recipe.loop.grow_at:
            raise ArchlabError(f"loop.grow_at: {recipe.model_name!r} grows through {stages} stages; give the "
                               f"{stages - 1} steps at which they begin")
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
        self.classes = getattr(model.config, "n_classes", 0)
        self.train_y = data.train.y.to(ctx.device) if self.classes else None
        if self.cfg.grow_at:  # the stage schedule freezes unused layers; the optimizers must hold them all
            model.requires_grad_(True)
        self.g = self.trainable("generator", model.generator)
        self.d = self.trainable("discriminator", model.discriminator)
        self.ema = (copy.deepcopy(model.generator).eval().requires_grad_(False)
                    if self.cfg.ema_decay else None)

    def _z(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.model.config.latent_dim, generator=gen).to(self.ctx.device)

    def _y(self, n: int, gen: torch.Generator) -> torch.Tensor | None:
        """Labels for n fakes, uniform over the classes (None for unconditional models)."""
        return torch.randint(0, self.classes, (n,), generator=gen).to(self.ctx.device) if self.classes else None

    def _fake(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.model.generator(z) if y is None else self.model.generator(z, y)

    def _critic(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.model.critic(x) if y is None else self.model.critic(x, y)

    def growth(self, step: int) -> tuple[int, float]:
        """(stage, alpha) of the schedule at 0-based ``step``."""
        stage = sum(g <= step for g in self.cfg.grow_at)
        if stage == 0 or not self.cfg.fade_steps:
            return stage, 1.0
        return stage, min(1.0, (step - self.cfg.grow_at[stage - 1]) / self.cfg.fade_steps)

    def _real_at(self, x: torch.Tensor, stage: int, alpha: float) -> torch.Tensor:
        """Real images at the stage's resolution, blended with the previous resolution while fading."""
        x = F.adaptive_avg_pool2d(x, self.model.resolution(stage))
        if alpha < 1:
            x = torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest"), x, alpha)
        return x

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        u = torch.rand(len(real), 1, 1, 1, generator=self.noise).to(real.device)
        mix = (u * real + (1 - u) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self._critic(mix, y).sum(), mix, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        b, wgan = self.recipe.data.batch_size, self.cfg.loss == "wgan_gp"
        if self.cfg.grow_at:
            stage, alpha = self.growth(step)
            self.model.set_growth(stage, alpha)
        for _ in range(self.cfg.n_critic):
            idx = self.stream.next().to(self.ctx.device)
            real = self.train_x[idx]
            if self.cfg.grow_at:
                real = self._real_at(real, stage, alpha)
            y_real, y_fake = (self.train_y[idx] if self.classes else None), self._y(b, self.noise)
            with torch.no_grad():
                fake = self._fake(self._z(b, self.noise), y_fake)
            self.d.zero_grad()
            if self.cfg.r1_weight:
                real = real.detach().requires_grad_(True)
            with self.ctx.precision.autocast():
                d_real, d_fake = self._critic(real, y_real).float(), self._critic(fake, y_fake).float()
            if wgan:
                # The penalty's interpolates carry the real labels: mixing two classes' images has no label.
                d_loss = (d_fake.mean() - d_real.mean()
                          + self.cfg.gp_weight * self._gradient_penalty(real, fake, y_real))
            else:
                d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                          + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
                if self.cfg.r1_weight:
                    d_loss = d_loss + self.cfg.r1_weight / 2 * r1_penalty(d_real, real)
            self.d.backward(d_loss)
            d_lr = self.d.step()
        self.g.zero_grad()
        y = self._y(b, self.noise)
        with self.ctx.precision.autocast():
            scores = self._critic(self._fake(self._z(b, self.noise), y), y).float()
        g_loss = -scores.mean() if wgan else F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores))
        self.g.backward(g_loss)
        # The generator's backward also filled the critic's gradients; its next zero_grad clears them.
        g_lr = self.g.step()
        if self.ema is not None:
            update_ema(self.ema, self.model.generator, self.cfg.ema_decay)
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

    def _labels(self, n: int) -> torch.Tensor | None:
        """0, 1, ..., K-1, 0, 1, ...: n labels covering every class evenly (None when unconditional)."""
        return torch.arange(n) % self.classes if self.classes else None

    def _images(self, n: int, seed: int) -> torch.Tensor:
        """n samples in the data's scale (what the classifier was trained on); conditional: of labels ``_labels(n)``."""
        lo, hi = self.scale
        gen, y = torch.Generator().manual_seed(seed), self._labels(n)
        model = self._sampling_model()
        images = model.sample(n, gen) if y is None else model.sample(n, gen, labels=y)
        return lo + images.cpu() * (hi - lo)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        data = getattr(self.data, split, None)
        if self.fid is None or data is None or len(data) < 2:
            return {}
        n = min(self.cfg.fid_samples, len(data))
        fake, _ = self.fid(self._images(n, {"val": 0, "test": 1}.get(split, 2)))
        real, _ = self.fid(data.x[:n])
        return {f"{split}_fid": frechet_distance(fake, real)}

    def _class_accuracy(self, images: torch.Tensor) -> dict[str, float]:
        """The classifier's accuracy on generated images of each class (labels ``_labels(n)``)."""
        return class_accuracy(self.fid, images, self._labels(len(images)))

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        if self.fid is None:
            return {}
        n = self.cfg.fid_samples
        fake = self._images(n, 1)
        return {**self.evaluate("val"), **sample_quality(self.fid, fake, self.data.test.x[:n], self.data.train.x[:n]),
                **(self._class_accuracy(fake) if self.classes else {})}

    @torch.no_grad()
    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        model, name, n = self._sampling_model(), self.recipe.name, self.cfg.samples
        gen = torch.Generator().manual_seed(0)
        if self.classes:
            save_grid(model.sample(n, gen, labels=self._labels(n)), Path(run_dir) / "samples.png",
                      nrow=min(n, self.classes), title=f"{name}: samples, one class per column")
        else:
            save_grid(model.sample(n, gen), Path(run_dir) / "samples.png", title=f"{name}: samples")
        z = self._z(8, torch.Generator().manual_seed(3))
        s = torch.linspace(0, 1, 10, device=z.device)
        rows = [(f(z[i], z[i + 1], s), i // 2) for i in range(0, 8, 2) for f in (lerp, slerp)]
        pics = [model.decode_images(r) if not self.classes
                else model.decode_images(r, torch.full((len(r),), k % self.classes, device=r.device)) for r, k in rows]
        save_grid(torch.cat(pics), Path(run_dir) / "interpolation.png", nrow=10,
                  title=f"{name}: latent walks, rows alternate linear / spherical"
                  + (" (pair k: class k)" if self.classes else ""))

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
