"""DARTS search: bilevel optimization of network weights ``w`` and architecture ``alpha`` (Liu,
Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019, Sec. 2.3, Algorithm 1).

The bilevel problem (eq. 3-4) is

    min_alpha  L_val(w*(alpha), alpha)     s.t.   w*(alpha) = argmin_w L_train(w, alpha)

where, as in the paper's search, "train" and "val" are the two halves of the training split (the
recipe's validation split stays untouched for model selection and the final numbers). One step of
this loop is one update of each, alternating (Algorithm 1):

    1. alpha <- optimizer_arch(alpha, grad_alpha L_val(w', alpha))         [optim.arch]
         order 1 (first-order approximation):  w' = w
         order 2 (eq. 7-8):  w' = w - xi grad_w L_train(w, alpha), and
             grad_alpha L_val(w', alpha) - xi * grad2_{alpha,w} L_train(w, alpha) . grad_w' L_val(w', alpha)
         with the Hessian-vector product by finite differences (eq. 8):
             (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps),
             w+- = w +- eps grad_w' L_val(w', alpha),  eps = loop.hvp_eps / ||grad_w' L_val(w', alpha)||
    2. w <- optimizer_weights(w, grad_w L_train(w, alpha))                 [optim.weights]

``xi`` is the weights' current learning rate (the paper's choice). The run saves the supernet
(``archlab.load`` returns it; ``.genotype()`` derives the cells) and writes ``genotype.json`` (the derived
cells, ready as ``darts_net`` config keys) and ``plots/alpha.png`` into the run directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data import Dataset, Split
from ..engine.loop import Context, Loop, probe_forward, register_loop
from ..errors import ArchlabError
from ..io import atomic_write_bytes
from ..io import pyplot as _pyplot
from ..models.base import ArchModel
from .supervised import BatchStream, classification_scores, total_steps

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class DartsConfig:
    """``[loop]`` of the DARTS loop."""

    order: int = 1
    """1: first-order approximation (w' = w); 2: the unrolled second-order gradient of eq. 7-8."""
    arch_fraction: float = 0.5
    """Share of the training split whose batches update alpha (DARTS: half); the rest updates w."""
    arch_start: int = 0
    """Steps of weight training before alpha starts to move (warm-up; 0: from the first step)."""
    hvp_eps: float = 0.01
    """Order 2: the finite-difference step is hvp_eps / ||grad_w' L_val|| (DARTS: 0.01)."""

    def __post_init__(self) -> None:
        if self.order not in (1, 2):
            raise ValueError(f"order must be 1 (first-order) or 2 (second-order), got {self.order}")
        if not 0.0 < self.hvp_eps <= 1.0:
            raise ValueError(f"hvp_eps must be in (0, 1], got {self.hvp_eps}")
        if not 0.0 < self.arch_fraction < 1.0:
            raise ValueError(f"arch_fraction must be in (0, 1), got {self.arch_fraction}")
        if not 0 <= self.arch_start <= 10**9:
            raise ValueError(f"arch_start must be in [0, 1e9], got {self.arch_start}")


@register_loop("darts")
class Darts(Loop):
    """DARTS: alternate architecture (``[optim.arch]``) and weight (``[optim.weights]``) updates."""

    Config = DartsConfig
    model_families = ("search",)
    trainables = ("weights", "arch")
    progress_keys = ("loss", "arch_loss")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if not hasattr(model, "genotype"):  # only supernets (alpha + genotype()) can be searched
            raise ArchlabError(f"model.name: loop 'darts' searches a supernet (darts_supernet), not "
                               f"{recipe.model_name!r}")
        x = data.train.x[:2]
        out = probe_forward(model, x, f"model {recipe.model_name!r}", repr(recipe.data.name))
        if out.shape != (2, data.num_classes):
            raise ArchlabError(f"model.num_classes: the supernet gives {out.shape[-1]} logits, {recipe.data.name!r} "
                               f"has {data.num_classes} classes")

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the darts loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        dc, tc = recipe.data, recipe.train
        # The fixed split of the training examples into the w half and the alpha half.
        n = len(data.train)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(dc.split_seed))
        n_arch = int(round(self.cfg.arch_fraction * n))
        if min(n_arch, n - n_arch) < dc.batch_size:
            raise ArchlabError(f"data.batch_size {dc.batch_size} is larger than a half of the training split "
                               f"({min(n_arch, n - n_arch)} examples at loop.arch_fraction {self.cfg.arch_fraction})")
        x, y = data.train.x.to(ctx.device), data.train.y.to(ctx.device)
        self.w_split = Split(x[perm[n_arch:]], y[perm[n_arch:]])
        self.a_split = Split(x[perm[:n_arch]], y[perm[:n_arch]])
        self.w_stream = BatchStream(len(self.w_split), dc.batch_size, seed=ctx.seed)
        self.a_stream = BatchStream(len(self.a_split), dc.batch_size, seed=ctx.seed + 1)
        self.total_steps, per_epoch = total_steps(recipe, len(self.w_split))
        self.eval_every = (tc.eval_every or per_epoch) if len(data.val) else 0
        self.w = self.trainable("weights", model.body)
        self.a = self.trainable("arch", model.arch)

    # -- one step --------------------------------------------------------------------------------
    def _loss(self, split: Split, idx: torch.Tensor) -> torch.Tensor:
        with self.ctx.precision.autocast():
            logits = self.model(split.x[idx])
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), split.y[idx])

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        w_idx, a_idx = self.w_stream.next(), self.a_stream.next()
        out: dict[str, Any] = {}
        if step >= self.cfg.arch_start:
            self.a.zero_grad()
            if self.cfg.order == 1:
                arch_loss = self._loss(self.a_split, a_idx)
                self.a.backward(arch_loss)
            else:
                arch_loss = self._unrolled_arch_grad(w_idx, a_idx)
            self.a.step()
            out["arch_loss"] = arch_loss.detach()
        self.w.zero_grad()  # drops what the architecture step left on w
        loss = self._loss(self.w_split, w_idx)
        self.w.backward(loss)
        out["lr"] = self.w.step()
        out["loss"] = loss.detach()
        return out

    def _unrolled_arch_grad(self, w_idx: torch.Tensor, a_idx: torch.Tensor) -> torch.Tensor:
        """Set alpha.grad to the second-order DARTS gradient (eq. 7-8); return L_val(w', alpha)."""
        weights = [p for p in self.w.module.parameters() if p.requires_grad]
        alphas = list(self.a.module.parameters())
        xi = self.w.lr
        backup = [p.detach().clone() for p in weights]
        # w' = w - xi grad_w L_train(w, alpha): one virtual step of plain gradient descent.
        grads = torch.autograd.grad(self._loss(self.w_split, w_idx), weights)
        with torch.no_grad():
            for p, g in zip(weights, grads, strict=True):
                p.sub_(xi * g)
        val_loss = self._loss(self.a_split, a_idx)
        g_all = torch.autograd.grad(val_loss, alphas + weights)
        d_alpha, d_w = g_all[:len(alphas)], g_all[len(alphas):]
        # Hessian-vector product by central differences around w along d_w (eq. 8).
        eps = self.cfg.hvp_eps / torch.cat([g.flatten() for g in d_w]).norm().clamp_min(1e-12)

        def alpha_grad_at(sign: float) -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                for p, b, g in zip(weights, backup, d_w, strict=True):
                    p.copy_(b + sign * eps * g)
            return torch.autograd.grad(self._loss(self.w_split, w_idx), alphas)

        g_plus, g_minus = alpha_grad_at(1.0), alpha_grad_at(-1.0)
        with torch.no_grad():
            for p, b in zip(weights, backup, strict=True):
                p.copy_(b)
            for a, da, gp, gm in zip(alphas, d_alpha, g_plus, g_minus, strict=True):
                a.grad = da - xi * (gp - gm) / (2 * eps)
        return val_loss

    # -- evaluation and results ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        part: Split = getattr(self.data, split)
        if len(part) == 0:
            return {}
        self.model.eval()
        return classification_scores(self.model, part, split, self.recipe.data.eval_batch_size, self.ctx.device)

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """``genotype.json``: the derived cells (``darts_net`` keys ``normal``/``reduce``) and softmax(alpha);
        ``plots/alpha.png``: the operation weights of every edge."""
        run_dir = Path(run_dir)
        primitives = self.model.primitives
        weights = {k: F.softmax(getattr(self.model.arch, k).detach().float(), -1).cpu() for k in ("normal", "reduce")}
        record = {**self.model.genotype(), "steps": self.model.config.steps, "primitives": list(primitives),
                  "softmax_alpha": {k: [[round(v, 5) for v in row] for row in w.tolist()] for k, w in weights.items()}}
        atomic_write_bytes(run_dir / "genotype.json", (json.dumps(record, indent=1) + "\n").encode())
        plt = _pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.4 * len(weights["normal"]) + 1.8))
        for ax, (kind, w) in zip(axes, weights.items(), strict=True):
            im = ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, aspect="auto")
            ax.set_xticks(range(len(primitives)), primitives, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("edge (i -> j)")
            ax.set_title(f"{kind} cell: softmax(alpha)")
            fig.colorbar(im, ax=ax)
        fig.tight_layout()
        (run_dir / "plots").mkdir(exist_ok=True)
        fig.savefig(run_dir / "plots" / "alpha.png", dpi=110)
        plt.close(fig)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.w.state_dict(), "arch": self.a.state_dict(), "w_stream": self.w_stream.state_dict(),
                "a_stream": self.a_stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w.load_state_dict(state["weights"])
        self.a.load_state_dict(state["arch"])
        self.w_stream.load_state_dict(state["w_stream"])
        self.a_stream.load_state_dict(state["a_stream"])
