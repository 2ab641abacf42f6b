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

import torch

from ..engine.loop import register_loop
from ..io import pyplot
from .variational import VariationalLoop


@register_loop("born")
class Born(VariationalLoop):
    """Quantum circuit Born machine: minimize the KL divergence from the target distribution."""

    model_attr = "kl"
    model_kind = "Born machines"
    metrics = ("tv_distance", "kl", "valid_fraction")
    monitor = ("tv_distance", "min")

    def objective(self) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self.model.kl()
        return loss, loss

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        p, q = self.model.target, self.model.probabilities()
        return {"tv_distance": float(0.5 * (p - q).abs().sum()), "kl": float(self.model.kl()),
                "valid_fraction": float(q[p > 0].sum())}

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
