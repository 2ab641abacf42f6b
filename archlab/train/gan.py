"""Adversarial training with two optimizers: the engine's worked example of a loop with named trainables.

One step (Goodfellow et al. 2014, Algorithm 1, with the non-saturating generator loss of their Sec. 3):

    repeat loop.n_critic times:                         discriminator ([optim.discriminator])
        x ~ data,  z ~ N(0, I)
        L_D = BCE(D(x), 1) + BCE(D(G(z)), 0)
        theta_D <- optimizer_D(theta_D, grad L_D)
    z ~ N(0, I)                                          generator ([optim.generator])
    L_G = BCE(D(G(z)), 1)                                 -log D(G(z)): strong gradients early on
    theta_G <- optimizer_G(theta_G, grad L_G)

Evaluation draws ``loop.eval_samples`` points from a fixed noise batch and scores them against the
dataset's modes (class means of the training split): ``{split}_modes`` is the share of modes that
received at least one sample within ``loop.quality_std`` standard deviations (of the data around
its modes), ``{split}_quality`` the share of samples that are that close to some mode (the two
numbers of Metz et al. 2017, Sec. 3.1). A collapsed generator covers few modes with high quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data import Dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from .supervised import BatchStream

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class GANConfig:
    """``[loop]`` of the GAN loop."""

    n_critic: int = 1
    """Discriminator updates per generator update."""
    eval_samples: int = 2000
    """Generated points scored by each evaluation."""
    quality_std: float = 3.0
    """A sample counts as "on" a mode within this many data standard deviations of its centre."""

    def __post_init__(self) -> None:
        if not 1 <= self.n_critic <= 100 or not 1 <= self.eval_samples <= 10**6 or not 0 < self.quality_std <= 1e3:
            raise ValueError("need 1 <= n_critic <= 100, 1 <= eval_samples <= 1e6 and 0 < quality_std <= 1000")


@register_loop("gan")
class GAN(Loop):
    """Adversarial training of a generator and a discriminator, each with its own optimizer."""

    Config = GANConfig
    model_families = ("generative",)
    trainables = ("generator", "discriminator")
    metrics = ("val_modes", "val_quality", "test_modes", "test_quality")
    monitor = ("val_modes", "max")
    progress_keys = ("loss", "d_loss")

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Dataset) -> dict[str, Any]:
        return {"data_dim": data.input_shape[0]} if len(data.input_shape) == 1 else {}

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if tuple(data.input_shape) != (model.config.data_dim,):
            raise ArchlabError(f"model.data_dim: {recipe.model_name!r} makes points of dimension "
                               f"{model.config.data_dim}, but {recipe.data.name!r} has examples of shape "
                               f"{tuple(data.input_shape)}")

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the gan loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        self.train_x = data.train.x.to(ctx.device)
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        self.noise = torch.Generator().manual_seed(ctx.seed + 1)
        per_epoch = max(1, len(data.train) // (dc.batch_size * self.cfg.n_critic))
        self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.eval_every = tc.eval_every or per_epoch
        self.g = self.trainable("generator", model.generator)
        self.d = self.trainable("discriminator", model.discriminator)
        # Modes and their spread from the training data (labels say which mode a point came from).
        y = data.train.y
        self.centres = torch.stack([data.train.x[y == k].mean(0) for k in y.unique()]).to(ctx.device)
        spread = (data.train.x - self.centres.cpu()[torch.searchsorted(y.unique(), y)]).std()
        self.radius = self.cfg.quality_std * float(spread)

    def _noise(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.model.config.latent_dim, generator=gen).to(self.ctx.device)

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        b = self.recipe.data.batch_size
        for _ in range(self.cfg.n_critic):
            real = self.train_x[self.stream.next().to(self.ctx.device)]
            with torch.no_grad():
                fake = self.model.generator(self._noise(b, self.noise))
            self.d.zero_grad()
            with self.ctx.precision.autocast():
                logits_real, logits_fake = self.model.critic(real).float(), self.model.critic(fake).float()
            d_loss = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                      + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
            self.d.backward(d_loss)
            d_lr = self.d.step()
        self.g.zero_grad()
        with self.ctx.precision.autocast():
            logits = self.model.critic(self.model.generator(self._noise(b, self.noise))).float()
        g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        self.g.backward(g_loss)
        # The generator's backward also filled the discriminator's gradients; its next zero_grad clears them.
        return {"loss": g_loss.detach(), "d_loss": d_loss.detach(), "lr": self.g.step(), "d_lr": d_lr}

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        self.model.eval()
        offset = {"val": 0, "test": 1}.get(split, 2)
        fake = self.model.generator(self._noise(self.cfg.eval_samples, torch.Generator().manual_seed(offset)))
        dist = torch.cdist(fake.float(), self.centres)  # (samples, modes)
        near = dist.min(dim=1)
        close = near.values <= self.radius
        modes = near.indices[close].unique().numel()
        return {f"{split}_modes": modes / len(self.centres), f"{split}_quality": close.float().mean().item()}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.g.state_dict(), "discriminator": self.d.state_dict(),
                "stream": self.stream.state_dict(), "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["generator"])
        self.d.load_state_dict(state["discriminator"])
        self.stream.load_state_dict(state["stream"])
        self.noise.set_state(state["noise"])
