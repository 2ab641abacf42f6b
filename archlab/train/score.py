"""Score matching over noise levels (Song & Ermon 2019; Song et al. 2021's VE SDE): the diffusion loop's
training and bookkeeping with a score model's loss and its two samplers.

One step (the model's ``loss``; sigma and z from the loop's own seeded generator):

    x ~ data, scaled to [-1, 1];  sigma ~ the model's noise levels;  z ~ N(0, I)
    loss = sigma^2 / 2 || s_theta(x + sigma z, sigma) + z / sigma ||^2          (denoising score matching)
    theta <- optimizer(theta, grad loss);   theta_ema <- d theta_ema + (1 - d) theta

Everything else is :class:`~archlab.train.diffusion.Diffusion`'s: [-1, 1] scaling by the training split's
range, the EMA (saved; both in the checkpoint, so resume is exact), ``{split}_loss`` on a fixed draw of
sigma and z. The loop knows the model only through ``loss(x, generator)``, ``draw_sigmas`` (a score model
has noise levels) and ``sample(n, generator, sampler=..., ...)``.

Artifacts and metrics: ``samples_ode.png`` (probability-flow ODE, ``ode_steps`` levels, ``ode_method``) and
``samples_langevin.png`` (annealed Langevin, ``langevin_steps`` per level, step ``langevin_eps``), and
``samples.png`` from ``loop.sampler``. With ``loop.fid_classifier`` the final metrics add, over
``loop.fid_samples`` images of each sampler, ``test_fid_ode`` / ``test_is_ode``, ``test_fid_langevin`` /
``test_is_langevin``, the floor ``fid_floor`` (training vs test images), and ``test_fid`` / ``test_is`` of
``loop.sampler``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from ..data import Dataset
from ..engine.loop import register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..models.generative.fid import sample_quality
from ..models.generative.images import save_grid
from .diffusion import Diffusion

if TYPE_CHECKING:
    from ..recipe import Recipe

SAMPLERS = ("ode", "langevin")


@dataclass
class ScoreLoopConfig:
    """``[loop]`` of the score loop."""

    ema_decay: float = 0.999
    """Decay d of the weights' moving average; 0: no EMA (the trained weights are saved)."""
    eval_examples: int = 1000
    """Images of a split scored by each evaluation (the first ones)."""
    eval_batch: int = 250
    """Images per forward pass in evaluations."""
    samples: int = 64
    """Images in each sample grid."""
    sampler: Literal["ode", "langevin"] = "ode"
    """The sampler of ``samples.png`` and of ``test_fid`` / ``test_is``."""
    ode_steps: int = 30
    """Probability-flow ODE: geometric noise levels from sigma_max to sigma_min (then one step to 0)."""
    ode_method: Literal["euler", "heun"] = "heun"
    """Probability-flow ODE integrator (Heun: two score evaluations per level)."""
    langevin_steps: int = 100
    """Annealed Langevin: T, steps per level of the model's L-level ladder (Song & Ermon 2019: 100)."""
    langevin_eps: float = 2e-5
    """Annealed Langevin: eps, the step size alpha_L at the smallest level, alpha_i = eps sigma_i^2 / sigma_L^2
    (Song & Ermon 2019: 2e-5)."""
    denoise: bool = True
    """Annealed Langevin: a last denoising step x + sigma_L^2 s(x, sigma_L)."""
    fid_classifier: str = ""
    """Run directory of a trained classifier of the same images (features for FID / IS); "": no FID."""
    fid_samples: int = 1000
    """Generated images per sampler (and test / train images) the final FIDs compare."""

    def __post_init__(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 1 <= self.eval_examples <= 10**7 or not 1 <= self.eval_batch <= 10**5:
            raise ValueError("need 1 <= eval_examples <= 1e7 and 1 <= eval_batch <= 1e5")
        if not (1 <= self.samples <= 1024 and 1 <= self.ode_steps <= 100_000 and 1 <= self.langevin_steps <= 100_000):
            raise ValueError("need 1 <= samples <= 1024, 1 <= ode_steps <= 100000 and 1 <= langevin_steps <= 100000")
        if not 0 < self.langevin_eps <= 1:
            raise ValueError(f"langevin_eps must be in (0, 1], got {self.langevin_eps}")
        if not 2 <= self.fid_samples <= 10**6:
            raise ValueError(f"fid_samples must be in [2, 1e6], got {self.fid_samples}")


@register_loop("score")
class ScoreMatching(Diffusion):
    """Denoising score matching over noise levels; EMA weights; Langevin and probability-flow samples."""

    Config = ScoreLoopConfig
    metrics = ("val_loss", "test_loss", "test_fid", "test_is", "test_fid_ode", "test_is_ode",
               "test_fid_langevin", "test_is_langevin", "fid_floor")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if getattr(model, "draw_sigmas", None) is None:
            raise ArchlabError(f"model {recipe.model_name!r} has no noise levels; the score loop trains score models")
        cls.check_images(recipe, data, model)

    def _draw(self, sampler: str, n: int, seed: int) -> torch.Tensor:
        """n samples in [0, 1] from the saved model by ``sampler``, noise seeded by ``seed``."""
        model, gen, c = self.final_object().eval(), torch.Generator().manual_seed(seed), self.cfg
        if sampler == "ode":
            return model.sample(n, gen, sampler="ode", steps=c.ode_steps, method=c.ode_method)
        return model.sample(n, gen, sampler="langevin", steps=c.langevin_steps, eps=c.langevin_eps, denoise=c.denoise)

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        metrics = {**self.evaluate("val"), **self.evaluate("test")}
        if self.fid is not None:
            n, (lo, hi) = self.cfg.fid_samples, self.scale
            for sampler in SAMPLERS:
                fake = lo + self._draw(sampler, n, 1).cpu() * (hi - lo)
                quality = sample_quality(self.fid, fake, self.data.test.x[:n], self.data.train.x[:n])
                metrics.update({"fid_floor": quality["fid_floor"], f"test_fid_{sampler}": quality["test_fid"],
                                f"test_is_{sampler}": quality["test_is"]})
            metrics.update({"test_fid": metrics[f"test_fid_{self.cfg.sampler}"],
                            "test_is": metrics[f"test_is_{self.cfg.sampler}"]})
        return metrics

    @torch.no_grad()
    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        c = self.cfg
        how = {"ode": f"probability-flow ODE, {c.ode_method} over {c.ode_steps} levels",
               "langevin": f"annealed Langevin, {c.langevin_steps} steps x {self.model.config.num_scales} levels, "
                           f"eps {c.langevin_eps:g}"}
        for sampler in SAMPLERS:
            images = self._draw(sampler, c.samples, 0)
            for name in [f"samples_{sampler}.png"] + (["samples.png"] if sampler == c.sampler else []):
                save_grid(images, Path(run_dir) / name, title=f"{self.recipe.name}: {how[sampler]}")
