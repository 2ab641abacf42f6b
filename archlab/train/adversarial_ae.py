"""Adversarial autoencoders (Makhzani et al. 2016): the elbo loop's data, evaluation and pictures, with a
second optimizer for a discriminator on the codes.

One step (one batch x, scaled to [0, 1], binarized as ``loop.binarize`` says):

    phi <- optimizer_discriminator(phi, grad mean model.discriminator_terms(x))   -log D(z~) - log(1 - D(Q(x)))
    theta <- optimizer_model(theta, grad mean model.terms(x)["loss"])             rec + adv_weight * (-log D(Q(x)))

The model names what each optimizer owns with ``parts()`` (``{"model": encoder + decoder,
"discriminator": D}``), so ``[optim.model]`` and ``[optim.discriminator]`` configure them separately over
the shared ``[optim]`` keys. The prior draws of the discriminator step come from the loop's own seeded
generator, which the checkpoint holds with both optimizers: resume is exact. Metrics are the elbo
loop's (``{split}_rec``, ``{split}_adv`` ...); the run writes ``samples.png`` (decoded prior draws) and
the interpolation strip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..data import Dataset
from ..engine.loop import Context, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from .elbo import ELBO, ELBOConfig

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class AdversarialAEConfig(ELBOConfig):
    """``[loop]`` of the adversarial_ae loop: the elbo loop's keys, and ``d_steps``."""

    d_steps: int = 1
    """Discriminator updates per autoencoder update (each on the same batch, fresh prior draws)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.d_steps <= 100:
            raise ValueError(f"d_steps must be in [1, 100], got {self.d_steps}")


@register_loop("adversarial_ae")
class AdversarialAE(ELBO):
    """Autoencoders regularised by a code discriminator (AAE): two named optimizers, model and discriminator."""

    Config = AdversarialAEConfig
    trainables = ("model", "discriminator")
    progress_keys = ("loss", "d_loss")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if getattr(model, "parts", None) is None or getattr(model, "discriminator_terms", None) is None:
            raise ArchlabError(f"model {recipe.model_name!r} has no code discriminator; the adversarial_ae loop "
                               "trains aae models")
        super().check_fit(recipe, data, model)

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        super().__init__(recipe, model, data, ctx)
        self.disc = self.trainable("discriminator", self.model.parts()["discriminator"])
        self.prior_gen = torch.Generator().manual_seed(ctx.seed + 2)

    def trained_module(self) -> torch.nn.Module:
        return self.model.parts()["model"]

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        x = self.next_batch()
        for _ in range(self.cfg.d_steps):
            self.disc.zero_grad()
            with self.ctx.precision.autocast():
                d_loss = self.model.discriminator_terms(x, self.prior_gen).float().mean()
            self.disc.backward(d_loss)
            self.disc.step()
        self.opt.zero_grad()
        with self.ctx.precision.autocast():
            terms = self.model.terms(x)
        loss = terms["loss"].float().mean()
        self.opt.backward(loss)
        # The generator term also reached D's weights; they are not this optimizer's and are zeroed next step.
        return {"loss": loss.detach(), "lr": self.opt.step(), "d_loss": d_loss.detach(),
                "adv": terms["adv"].detach().float().mean()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "discriminator": self.disc.state_dict(),
                "prior_gen": self.prior_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.disc.load_state_dict(state["discriminator"])
        self.prior_gen.set_state(state["prior_gen"])
