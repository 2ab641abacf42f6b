"""Zero-shot classification from class descriptions: train on the seen classes, classify the unseen ones.

The loop reads an array dataset (MNIST), keeps only the examples of the seen classes (``loop.seen``) in the
training and validation splits -- unseen classes are never seen as images before the test -- and trains a
zero-shot model, one whose ``forward(x)`` gives compatibilities (B, Z) with every described class and whose
``seen_loss(x, y, seen)`` is its training loss on seen classes (e.g. ``compat_zsl``,
:mod:`archlab.meta.compatibility`). One step:

    x, y  = next batch of seen-class training examples
    L     = model.seen_loss(x, y, seen)            (softmax cross-entropy over the seen compatibilities)
    theta <- optimizer(theta, grad L)

Evaluations during training report ``val_seen_acc`` (validation examples of the seen classes, seen candidates).
The final metrics score the test split (:mod:`archlab.meta.gzsl`): ``unseen_acc`` (unseen classes, unseen
candidates), ``gzsl_seen`` / ``gzsl_unseen`` / ``gzsl_h`` (every class a candidate) and ``ausuc`` -- and the
same for ESZSL's closed form (Romera-Paredes & Torr 2015) fitted on the trained embedding's features
theta(x) of the seen training examples (``eszsl_*``), and on raw pixels (``pixels_*``, the baseline). ESZSL's
gamma and lambda, and a calibrated-stacking delta (``*_h_cs``, Chao et al. 2016), are chosen on held-out seen
classes (``loop.val_classes`` play the unseen classes on the validation split); no test example chooses anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import Dataset, Split
from ..engine.loop import Context, Loop, probe_forward, register_loop
from ..errors import ArchlabError
from ..meta.gzsl import ausuc, choose_eszsl, gzsl_metrics, positions, seen_unseen_curve
from ..meta.zeroshot import ESZSL
from .supervised import BatchStream, total_steps

if TYPE_CHECKING:
    from ..recipe import Recipe

GRID = [10.0 ** k for k in range(-3, 4)]


@dataclass
class ZeroShotConfig:
    """``[loop]`` of the zero-shot loop."""

    seen: list[int] = field(default_factory=lambda: list(range(7)))
    """classes whose images are trained on (MNIST: digits 0-6)"""
    unseen: list[int] = field(default_factory=lambda: [7, 8, 9])
    """classes known only by their description until the test"""
    val_classes: list[int] = field(default_factory=lambda: [5, 6])
    """seen classes held out (as pseudo-unseen) to choose ESZSL's gamma, lambda and the stacking delta"""
    gammas: list[float] = field(default_factory=lambda: list(GRID))
    """ESZSL gamma grid (regulariser of V S)"""
    lambdas: list[float] = field(default_factory=lambda: list(GRID))
    """ESZSL lambda grid (regulariser of X^T V)"""
    eszsl_features: bool = True
    """add ESZSL on the trained embedding's features theta(x) (eszsl_* metrics)"""
    eszsl_pixels: bool = True
    """add ESZSL on raw pixels (pixels_* metrics), the baseline"""

    def __post_init__(self) -> None:
        if not self.seen or not self.unseen:
            raise ValueError("seen and unseen must each name at least one class")
        if min(self.seen + self.unseen) < 0 or len(set(self.seen)) < len(self.seen) \
                or len(set(self.unseen)) < len(self.unseen):
            raise ValueError("seen and unseen must be lists of distinct class ids >= 0")
        if set(self.seen) & set(self.unseen):
            raise ValueError(f"seen and unseen share classes {sorted(set(self.seen) & set(self.unseen))}")
        if not self.val_classes or not set(self.val_classes) < set(self.seen):
            raise ValueError(f"val_classes must be a non-empty proper subset of seen {self.seen}, "
                             f"got {self.val_classes}")
        if not self.gammas or not self.lambdas or min(self.gammas + self.lambdas) <= 0:
            raise ValueError("gammas and lambdas must be non-empty lists of positive numbers")


def _restrict(part: Split, classes: list[int]) -> Split:
    keep = torch.isin(part.y, torch.tensor(classes))
    return Split(part.x[keep], part.y[keep])


@register_loop("zeroshot")
class ZeroShot(Loop):
    """Zero-shot learning: a compatibility model trained on seen classes, scored on unseen and all classes."""

    Config = ZeroShotConfig
    model_families = ("meta",)
    metrics = ("val_seen_acc", "unseen_acc", "gzsl_seen", "gzsl_unseen", "gzsl_h", "ausuc",
               "eszsl_unseen_acc", "eszsl_gzsl_seen", "eszsl_gzsl_unseen", "eszsl_gzsl_h", "eszsl_gzsl_h_cs",
               "eszsl_ausuc", "pixels_unseen_acc", "pixels_gzsl_seen", "pixels_gzsl_unseen", "pixels_gzsl_h",
               "pixels_gzsl_h_cs", "pixels_ausuc")
    monitor = ("val_seen_acc", "max")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: Any) -> None:
        cfg = recipe.loop
        if not callable(getattr(model, "seen_loss", None)) or not callable(getattr(model, "embed", None)):
            raise ArchlabError(f"model {recipe.model_name!r} is not a zero-shot model (it needs seen_loss and embed, "
                               f"as 'compat_zsl' has)")
        z = min(model.num_classes, data.num_classes)
        top = max(cfg.seen + cfg.unseen)
        if top >= z:
            raise ArchlabError(f"loop.seen/unseen name class {top}, but {recipe.data.name!r} with "
                               f"{recipe.model_name!r} describes classes 0..{z - 1}")
        x = data.train.x[:2]
        out = probe_forward(model, x, f"model {recipe.model_name!r}", repr(recipe.data.name))
        if out.shape != (len(x), model.num_classes):
            raise ArchlabError(f"model {recipe.model_name!r} gives scores of shape {tuple(out.shape)}, "
                               f"need ({len(x)}, {model.num_classes})")
        for name, part in (("training", data.train), ("validation", data.val)):
            missing = [c for c in cfg.seen if not bool((part.y == c).any())]
            if missing and (name == "training" or len(part)):
                raise ArchlabError(f"the {name} split of {recipe.data.name!r} has no example of seen class(es) "
                                   f"{missing}")

    def __init__(self, recipe: Recipe, model: Any, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the zeroshot loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        cfg, tc, dc = self.cfg, recipe.train, recipe.data
        self.seen_t = torch.tensor(cfg.seen, device=ctx.device)
        self.train_part = _restrict(data.train, cfg.seen)
        self.val_part = _restrict(data.val, cfg.seen)
        self.train_x, self.train_y = self.train_part.x.to(ctx.device), self.train_part.y.to(ctx.device)
        self.stream = BatchStream(len(self.train_part), dc.batch_size, seed=ctx.seed)
        self.total_steps, per_epoch = total_steps(recipe, len(self.train_part))
        self.eval_every = (tc.eval_every or per_epoch) if len(self.val_part) else 0
        self.opt = self.trainable("model", self.model)
        self.test_scores: dict[str, torch.Tensor] = {}
        """(n_test, Z) scores of each method from the last final_metrics(), for the pictures"""

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        idx = self.stream.next().to(self.ctx.device)
        self.opt.zero_grad()
        with self.ctx.precision.autocast():
            loss, _ = self.model.seen_loss(self.train_x[idx], self.train_y[idx], self.seen_t)
        self.opt.backward(loss)
        lr = self.opt.step()
        return {"loss": loss.detach(), "lr": lr}

    @torch.no_grad()
    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn`` over ``x`` in evaluation batches, on the device, results in float64 on the CPU."""
        self.model.eval()
        bs, out = self.recipe.data.eval_batch_size, []
        for i in range(0, len(x), bs):
            with self.ctx.precision.autocast():
                out.append(fn(x[i:i + bs].to(self.ctx.device)).double().cpu())
        return torch.cat(out)

    def evaluate(self, split: str) -> dict[str, float]:
        if split == "val":
            if not len(self.val_part):
                return {}
            pred = self.seen_t.cpu()[self._map(self.model, self.val_part.x)[:, self.seen_t.cpu()].argmax(1)]
            return {"val_seen_acc": float((pred == self.val_part.y).double().mean())}
        return self._zero_shot("", self._map(self.model, self.data.test.x))

    def _zero_shot(self, prefix: str, scores: torch.Tensor, extra: dict[str, float] | None = None) -> dict[str, float]:
        y, cfg = self.data.test.y, self.cfg
        self.test_scores[prefix or "compat"] = scores
        out = {**gzsl_metrics(scores, y, cfg.seen, cfg.unseen), "ausuc": ausuc(scores, y, cfg.seen, cfg.unseen)}
        return {(f"{prefix}_{k}" if prefix else k): v for k, v in {**out, **(extra or {})}.items()}

    def _eszsl(self, prefix: str, feature: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """ESZSL on ``feature(x)``: gamma, lambda, delta chosen on held-out seen classes, then refitted on every seen
        class's training examples and scored on the test split."""
        cfg = self.cfg
        if not len(self.val_part):
            raise ArchlabError("ESZSL chooses gamma and lambda on the validation split: set data.val_fraction > 0")
        S = self.model.class_attributes.double().cpu()
        f_train, f_val = feature(self.train_part.x), feature(self.val_part.x)
        f_test = feature(self.data.test.x)
        mean = f_train.mean(0)  # centre every split with the training mean (ESZSL has no bias term)
        f_train, f_val, f_test = f_train - mean, f_val - mean, f_test - mean
        choice = choose_eszsl(f_train, self.train_part.y, f_val, self.val_part.y, S, cfg.seen, cfg.val_classes,
                              cfg.gammas, cfg.lambdas)
        model = ESZSL(choice.gamma, choice.lam).fit(f_train, positions(self.train_part.y, cfg.seen), S[:, cfg.seen])
        scores = model.scores(f_test, S)
        stacked = gzsl_metrics(scores, self.data.test.y, cfg.seen, cfg.unseen, delta=choice.delta)
        return self._zero_shot(prefix, scores, {"gzsl_h_cs": stacked["gzsl_h"], "gamma": choice.gamma,
                                                "lambda": choice.lam, "delta": choice.delta,
                                                "val_h": choice.val["gzsl_h"], "val_h_cs": choice.val["gzsl_h_cs"]})

    def final_metrics(self) -> dict[str, float]:
        out = {**self.evaluate("val"), **self.evaluate("test")}
        if self.cfg.eszsl_features:
            out.update(self._eszsl("eszsl", lambda x: self._map(self.model.embed, x)))
        if self.cfg.eszsl_pixels:
            out.update(self._eszsl("pixels", lambda x: x.flatten(1).double()))
        return out

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """``plots/zeroshot.png``: the seen-unseen accuracy curves of calibrated stacking (Chao et al. 2016) of every
        method (dot: delta = 0, the plain argmax) and the generalized confusion matrix of the learned compatibility
        (rows: true test digit, columns: predicted among all classes, row-normalised); the matrix also goes to
        ``plots/zeroshot.json``."""
        from ..io import pyplot

        if "compat" not in self.test_scores:
            self.final_metrics()
        cfg, y = self.cfg, self.data.test.y
        classes = sorted(cfg.seen + cfg.unseen)
        pred = torch.tensor(classes)[self.test_scores["compat"][:, classes].argmax(1)]
        confusion = torch.zeros(len(classes), len(classes), dtype=torch.float64)
        for i, c in enumerate(classes):
            row = pred[y == c]
            for j, d in enumerate(classes):
                confusion[i, j] = float((row == d).double().mean()) if len(row) else 0.0
        plt = pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
        names = {"compat": "learned compatibility", "eszsl": "ESZSL on theta(x)", "pixels": "ESZSL on pixels"}
        for key, scores in self.test_scores.items():
            _, acc_s, acc_u = seen_unseen_curve(scores, y, cfg.seen, cfg.unseen)
            m = gzsl_metrics(scores, y, cfg.seen, cfg.unseen)
            line, = left.plot(acc_s.numpy(), acc_u.numpy(),
                              label=f"{names[key]} (AUSUC {ausuc(scores, y, cfg.seen, cfg.unseen):.3f})")
            left.plot([m["gzsl_seen"]], [m["gzsl_unseen"]], "o", color=line.get_color())
        left.set_xlabel("seen accuracy (all classes candidates)")
        left.set_ylabel("unseen accuracy (all classes candidates)")
        left.set_title("calibrated stacking: seen vs unseen (dot: delta = 0)", fontsize=9)
        left.set_xlim(0, 1)
        left.set_ylim(0, 1)
        left.legend(fontsize=8)
        im = right.imshow(confusion.numpy(), cmap="Blues", vmin=0, vmax=1)
        right.set_xticks(range(len(classes)), [str(c) for c in classes])
        right.set_yticks(range(len(classes)), [str(c) for c in classes])
        for i in range(len(classes)):
            for j in range(len(classes)):
                if confusion[i, j] >= 0.05:
                    right.text(j, i, f"{confusion[i, j]:.2f}", ha="center", va="center", fontsize=6,
                               color="white" if confusion[i, j] > 0.5 else "black")
        right.set_xlabel("predicted (all classes candidates)")
        right.set_ylabel(f"true (unseen: {cfg.unseen})")
        right.set_title("learned compatibility: generalized confusion (test)", fontsize=9)
        fig.colorbar(im, ax=right, fraction=0.046)
        fig.suptitle(f"{self.recipe.name}: seen {cfg.seen}, unseen {cfg.unseen}", fontsize=10)
        fig.tight_layout()
        plots = Path(run_dir) / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        fig.savefig(plots / "zeroshot.png", dpi=100)
        plt.close(fig)
        (plots / "zeroshot.json").write_text(json.dumps({"classes": classes, "confusion": confusion.tolist()}) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self.stream.load_state_dict(state["stream"])
