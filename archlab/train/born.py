"""Born machine training on the engine: one step = one optimizer step on ``KL(target || q_theta)``.

The simulator gives the model's exact probabilities, so the loss is the exact KL divergence to the target
(on hardware one would estimate it, or an MMD, from samples; Benedetti et al. 2019 / Liu & Wang 2018).
Metrics: ``tv_distance`` = 1/2 sum |p - q| (the total variation distance to the target), ``kl`` and
``valid_fraction`` (the probability the model puts on bars-and-stripes images). Files: ``plots/samples.png``
(32 sampled images) and ``plots/distribution.png`` (q(x) over the target's images and the rest).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..io import pyplot

if TYPE_CHECKING:
    from ..recipe import Recipe


@register_loop("born")
class Born(Loop):
    """Quantum circuit Born machine: minimize the KL divergence from the target distribution."""

    model_families = ("quantum",)
    uses_data = False
    metrics = ("tv_distance", "kl", "valid_fraction")
    monitor = ("tv_distance", "min")
    keep_best = True

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Any, model: Any) -> None:
        if not hasattr(model, "kl"):
            raise ArchlabError(f"the born loop trains Born machines; {recipe.model_name!r} is not one")

    def __init__(self, recipe: Recipe, model: Any, data: Any, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the born loop runs in one process; drop --nproc")
        super().__init__(recipe, model, data, ctx)
        tc = recipe.train
        if not tc.steps:
            raise ArchlabError("train.steps: the born loop needs a number of optimizer steps")
        self.total_steps = tc.steps
        self.eval_every = tc.eval_every or max(1, tc.steps // 10)
        self.opt = self.trainable("model", model)

    def train_step(self, step: int) -> dict[str, Any]:
        loss = self.model.kl()
        self.opt.zero_grad()
        self.opt.backward(loss)
        return {"loss": loss.detach(), "lr": self.opt.step()}

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        p, q = self.model.target, self.model.probabilities()
        return {"tv_distance": float(0.5 * (p - q).abs().sum()), "kl": float(self.model.kl()),
                "valid_fraction": float(q[p > 0].sum())}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        m = self.model
        out = Path(run_dir) / "plots"
        out.mkdir(exist_ok=True)
        images = m.sample(32, torch.Generator().manual_seed(0))
        plt = pyplot()
        fig, axes = plt.subplots(4, 8, figsize=(8, 4.4))
        for ax, img in zip(axes.flat, images, strict=True):
            ax.imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("32 samples of the trained Born machine (bars and stripes)")
        fig.tight_layout()
        fig.savefig(out / "samples.png", dpi=100)
        plt.close(fig)
        with torch.no_grad():
            p, q = m.target, m.probabilities()
        fig, ax = plt.subplots(figsize=(7, 3.5))
        valid = torch.nonzero(p > 0).squeeze(1)
        ax.bar(range(len(valid)), q[valid].tolist(), color="tab:blue", label="model q(x)")
        ax.axhline(float(p[valid[0]]), color="tab:red", linestyle=":", label="target 1/14")
        ax.set_xticks(range(len(valid)), [format(int(i), f"0{m.n}b") for i in valid], rotation=90, fontsize=7)
        ax.set_title(f"q on the images: {float(q[valid].sum()):.3f} of the mass; "
                     f"TV distance {float(0.5 * (p - q).abs().sum()):.3f}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "distribution.png", dpi=100)
        plt.close(fig)
