"""Knowledge distillation: train (or load) a teacher, optionally hint-train the student, then distil.

One run, up to three phases over the step counter (each phase has its own optimizer, ``[optim.NAME]``):

1. ``teacher`` (``loop.teacher_epochs`` epochs, skipped with ``loop.teacher_from``): the teacher
   network of ``[loop.teacher]`` learns the labels with cross-entropy, on batches augmented by
   ``loop.teacher_augment`` (Hinton et al. 2015 §3: a 2x1200 net with dropout and inputs jittered by up
   to two pixels).
2. ``hint`` (``loop.hint_epochs`` epochs, FitNets stage 1; only with ``hint_layer`` / ``guided_layer``):
   the student up to its guided layer and a regressor minimise ``1/2 ||u_h(x) - r(v_g(x))||^2``.
3. ``model`` (``train.epochs`` / ``train.steps``): the student ``[model]`` minimises
   ``alpha T^2 KL(q || p) + (1 - alpha) CE(y, softmax(z))`` against the frozen teacher in eval mode
   (:mod:`archlab.compress.distill`).

The student's batches, augmentation and initialization are those the ``supervised`` loop gives the
same recipe and seed (same generators), so "the same student trained alone" is a supervised run of the
same ``[model]``, ``[data]`` and ``[train]``. Without student augmentation the teacher's logits on the
training split are computed once when phase 3 starts (the teacher is fixed and deterministic in eval
mode) and kept in the checkpoint.

Evaluations during phase 1 report ``teacher_val_acc`` / ``teacher_val_loss`` (so they never count as the
student's ``val_acc``). Final metrics: the student's val/test accuracy and loss, ``test_errors`` (the
count Hinton et al. report), and the teacher's ``teacher_test_acc`` / ``teacher_test_errors``. A teacher
trained in the run is saved to ``RUN/teacher`` (usable as another run's ``teacher_from``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..compress.distill import HintRegressor, capture, distillation_loss, hint_loss
from ..data import Dataset, make_transform
from ..engine.loop import Context, Trainable, probe_forward, register_loop
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..registry import build_config, create, get, load
from .supervised import BatchStream, Supervised, classification_scores

if TYPE_CHECKING:
    from ..recipe import Recipe

TEACHER_DIR = "teacher"
#: Offsets of the teacher's private generators from the run seed (the student's are ``seed``, ``seed + 1``,
#: as in the supervised loop).
TEACHER_STREAM_SEED, TEACHER_AUGMENT_SEED = 1000, 1001


@dataclass
class DistillConfig:
    """``[loop]`` of the distillation loop."""

    teacher: dict[str, Any] = field(default_factory=dict)
    """Teacher model table ``[loop.teacher]``: ``name`` plus its config keys, trained in phase 1."""
    teacher_from: str = ""
    """Instead of ``teacher``: a finished run directory (or save_pretrained folder) holding the teacher."""
    teacher_epochs: float = 0.0
    """Epochs of phase 1 (training the ``teacher`` table); must be > 0 with ``teacher``, 0 with ``teacher_from``."""
    teacher_augment: list[str] = field(default_factory=list)
    """Batch transforms of the teacher's training (Hinton et al.'s jitter: ["shift:2"]); the student's are
    ``data.augment``."""
    temperature: float = 4.0
    """Softmax temperature T of the soft targets (Hinton et al.: 20 for the 2x800 MNIST student)."""
    alpha: float = 0.9
    """Weight of the soft term T^2 KL; 1 - alpha weighs the hard-label cross-entropy."""
    hint_layer: str = ""
    """FitNets: the teacher's hint layer (module name, e.g. "layers.0"); "" disables hint training."""
    guided_layer: str = ""
    """FitNets: the student's guided layer (module name) regressed onto the hint."""
    hint_epochs: float = 0.0
    """Epochs of the hint stage (FitNets stage 1) before distillation; > 0 exactly when hint layers are set."""
    regressor_activation: Literal["none", "relu"] = "none"
    """Nonlinearity after the regressor (use "relu" when the hint is taken after a ReLU)."""

    def __post_init__(self) -> None:
        if bool(self.teacher) == bool(self.teacher_from):
            raise ValueError("give the teacher either as a model table [loop.teacher] or as teacher_from "
                             "(a finished run directory), not both and not neither")
        if self.teacher:
            name = self.teacher.get("name")
            if not isinstance(name, str):
                raise ValueError("teacher.name: required string naming a registered model (see `archlab list`)")
            build_config(name, {k: v for k, v in self.teacher.items() if k != "name"}, "loop.teacher")
            if not 0 < self.teacher_epochs <= 1e6:
                raise ValueError(f"teacher_epochs must be in (0, 1e6] when the teacher is trained here, "
                                 f"got {self.teacher_epochs}")
        elif self.teacher_epochs:
            raise ValueError("teacher_epochs trains the [loop.teacher] table; with teacher_from it must be 0")
        if not 0 < self.temperature <= 1000:
            raise ValueError(f"temperature must be in (0, 1000], got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if bool(self.hint_layer) != bool(self.guided_layer):
            raise ValueError("hint_layer (teacher) and guided_layer (student) go together")
        if bool(self.hint_layer) != (self.hint_epochs > 0) or not 0 <= self.hint_epochs <= 1e6:
            raise ValueError("hint_epochs must be in (0, 1e6] exactly when hint_layer and guided_layer are set")


def _split_errors(scores: dict[str, float], n: int, split: str, prefix: str = "") -> dict[str, float]:
    """Rename scores with ``prefix`` and add ``{split}_errors`` = misclassified examples out of ``n``."""
    out = {f"{prefix}{k}": v for k, v in scores.items()}
    if f"{split}_acc" in scores:
        out[f"{prefix}{split}_errors"] = float(round((1.0 - scores[f"{split}_acc"]) * n))
    return out


@register_loop("distill")
class Distill(Supervised):
    """Knowledge distillation (Hinton et al. 2015; FitNets hints): teacher phase, hint stage, then the student."""

    Config = DistillConfig
    trainables = ("teacher", "hint", "model")
    parallel = ("ddp",)  # its steps slice batches per worker themselves (accumulated_step), unlike supervised's
    metrics = ("val_acc", "val_loss", "test_acc", "test_loss", "test_errors", "teacher_test_acc",
               "teacher_test_errors")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        super().check_fit(recipe, data, model)
        cfg: DistillConfig = recipe.loop
        if cfg.teacher and get(cfg.teacher["name"]).family not in (cls.model_families or ()):
            raise ArchlabError(f"loop.teacher.name: {cfg.teacher['name']!r} is a {get(cfg.teacher['name']).family} "
                               f"model; the teacher must be a classifier ({', '.join(cls.model_families or ())})")
        x = data.train.x[:2]
        if cfg.teacher_augment and make_transform(cfg.teacher_augment).max_offset >= min(x.shape[2:] or x.shape[1:]):
            raise ArchlabError(f"loop.teacher_augment: shifts and crops must be smaller than the examples, "
                               f"got {list(cfg.teacher_augment)}")

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        # The student: batches, augmentation, optimizer ("model") and eval_every exactly as the supervised loop's.
        super().__init__(recipe, model, data, ctx)
        cfg: DistillConfig = self.cfg
        tc, n = recipe.train, len(data.train)
        self.teacher = self._teacher(cfg, data).to(ctx.device)
        per_epoch = max(1, n // (recipe.data.batch_size * tc.accumulate))
        self.teacher_steps = round(cfg.teacher_epochs * per_epoch)
        self.hint_steps = round(cfg.hint_epochs * per_epoch)
        self.student_steps = self.total_steps
        self.total_steps = self.teacher_steps + self.hint_steps + self.student_steps
        self.t_stream = BatchStream(n, recipe.data.batch_size, seed=ctx.seed + TEACHER_STREAM_SEED)
        self.t_aug_gen = torch.Generator().manual_seed(ctx.seed + TEACHER_AUGMENT_SEED)
        self.t_augment = make_transform(cfg.teacher_augment) if cfg.teacher_augment else None
        self.t_opt = (Trainable("teacher", self.teacher, recipe.optim["teacher"], max(1, self.teacher_steps), ctx,
                                tc.grad_clip) if self.teacher_steps else None)
        self.regressor: HintRegressor | None = None
        self.h_opt: Trainable | None = None
        if cfg.hint_layer:
            self.regressor = self._regressor(cfg, data).to(ctx.device)
            self.h_opt = Trainable("hint", nn.ModuleDict({"student": self.model, "regressor": self.regressor}),
                                   recipe.optim["hint"], self.hint_steps, ctx, tc.grad_clip)
        self.teacher_logits: torch.Tensor | None = None
        """Teacher logits of the whole training split (phase 3 without student augmentation)."""
        self.steps_done = 0

    # ----------------------------------------------------------------------------- setup
    def _teacher(self, cfg: DistillConfig, data: Dataset) -> nn.Module:
        if cfg.teacher_from:
            if not Path(cfg.teacher_from).is_dir():
                raise ArchlabError(f"loop.teacher_from: no directory {cfg.teacher_from[:200]}")
            teacher = load(cfg.teacher_from)
            if not isinstance(teacher, nn.Module):
                raise ArchlabError(f"loop.teacher_from: {cfg.teacher_from[:200]} holds no network")
        else:
            teacher = create(cfg.teacher["name"], **{k: v for k, v in cfg.teacher.items() if k != "name"})
        x = data.train.x[:2]
        out = probe_forward(teacher, x, "the teacher", "the data")
        if not isinstance(out, torch.Tensor) or out.shape != (2, data.num_classes):
            raise ArchlabError(f"the teacher gives outputs of shape {getattr(out, 'shape', type(out).__name__)}; "
                               f"need (2, {data.num_classes}) logits")
        if cfg.teacher_from:
            teacher.requires_grad_(False)
        return teacher

    def _regressor(self, cfg: DistillConfig, data: Dataset) -> HintRegressor:
        x = data.train.x[:2]
        shapes = []
        for net, layer, key in ((self.teacher, cfg.hint_layer, "hint_layer"), (self.model, cfg.guided_layer,
                                                                                  "guided_layer")):
            try:
                with capture(net, layer) as feats, torch.no_grad():
                    net.eval()(x.to(self.ctx.device))
            except ValueError as exc:
                raise ArchlabError(f"loop.{key}: {exc}"[:300]) from None
            shapes.append(tuple(feats["features"].shape[1:]))
        try:
            return HintRegressor(shapes[1], shapes[0], cfg.regressor_activation)
        except ValueError as exc:
            raise ArchlabError(f"loop.hint_layer / guided_layer: {exc}") from None

    # ----------------------------------------------------------------------------- batches
    def _draw(self, stream: BatchStream, augment: Any, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(x, y, idx) of this worker's slice of the next global batch of ``stream``."""
        idx = stream.next().to(self.ctx.device)
        x, y = self.train_x[idx], self.train_y[idx]
        if augment is not None:
            x = augment(x, gen)  # on the global batch, so workers agree with one process
        d = self.ctx.dist
        if d.enabled:
            b = len(idx) // d.world_size
            x, y, idx = (t[d.rank * b:(d.rank + 1) * b] for t in (x, y, idx))
        return x, y, idx

    @torch.no_grad()
    def _teacher_outputs(self) -> torch.Tensor:
        self.teacher.eval()
        bs = self.recipe.data.eval_batch_size
        with self.ctx.precision.autocast():
            return torch.cat([self.teacher(self.train_x[i:i + bs]).float() for i in range(0, len(self.train_x), bs)])

    # ----------------------------------------------------------------------------- steps
    def train_step(self, step: int) -> dict[str, Any]:
        tc = self.recipe.train
        self.steps_done = step + 1
        if step < self.teacher_steps:
            return {**self._teacher_step(tc), "phase": 0}
        if step < self.teacher_steps + self.hint_steps:
            return {**self._hint_step(tc), "phase": 1}
        return {**self._student_step(tc), "phase": 2}

    def _teacher_step(self, tc: Any) -> dict[str, Any]:
        assert self.t_opt is not None

        def micro_loss() -> torch.Tensor:
            x, y, _ = self._draw(self.t_stream, self.t_augment, self.t_aug_gen)
            with self.ctx.precision.autocast():
                return F.cross_entropy(self.teacher(x).float(), y)

        return self.t_opt.accumulated_step(tc.accumulate, tc.l1, micro_loss)

    def _hint_step(self, tc: Any) -> dict[str, Any]:
        assert self.h_opt is not None and self.regressor is not None
        self.teacher.eval()

        def micro_loss() -> torch.Tensor:
            x, _, _ = self._draw(self.stream, self.augment, self.aug_gen)
            with self.ctx.precision.autocast():
                with torch.no_grad(), capture(self.teacher, self.cfg.hint_layer) as hint:
                    self.teacher(x)
                with capture(self.model, self.cfg.guided_layer) as guided:
                    self.model(x)
                return hint_loss(hint["features"].float(), self.regressor(guided["features"]).float())

        return self.h_opt.accumulated_step(tc.accumulate, tc.l1, micro_loss)

    def _student_step(self, tc: Any) -> dict[str, Any]:
        cfg: DistillConfig = self.cfg
        if self.augment is None and self.teacher_logits is None:
            self.teacher_logits = self._teacher_outputs()
        self.teacher.eval()

        def micro_loss() -> torch.Tensor:
            x, y, idx = self._draw(self.stream, self.augment, self.aug_gen)
            with self.ctx.precision.autocast():
                if self.teacher_logits is not None:
                    soft = self.teacher_logits[idx]
                else:
                    with torch.no_grad():
                        soft = self.teacher(x).float()
                logits = self.forward(x).float()
            return distillation_loss(logits, soft, y, cfg.temperature, cfg.alpha)

        return self.opt.accumulated_step(tc.accumulate, tc.l1, micro_loss)

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _teacher_scores(self, split: str) -> dict[str, float]:
        part = getattr(self.data, split)
        if len(part) == 0:
            return {}
        self.teacher.eval()
        scores = classification_scores(self.teacher, part, split, self.recipe.data.eval_batch_size, self.ctx.device,
                                       self.ctx.precision.autocast)
        return _split_errors(scores, len(part), split, "teacher_")

    def evaluate(self, split: str) -> dict[str, float]:
        """The student's scores; during phase 1 the teacher's, named ``teacher_*``."""
        if self.steps_done <= self.teacher_steps and self.t_opt is not None:
            return self._teacher_scores(split)
        scores = super().evaluate(split)
        return _split_errors(scores, len(getattr(self.data, split)), split)

    def final_metrics(self) -> dict[str, float]:
        return {**self.evaluate("val"), **self.evaluate("test"), **self._teacher_scores("test")}

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """The teacher trained in this run, in ``RUN/teacher`` (``save_pretrained``)."""
        super().write_artifacts(run_dir)
        if self.t_opt is not None and isinstance(self.teacher, ArchModel):
            self.teacher.save_pretrained(Path(run_dir) / TEACHER_DIR)

    @classmethod
    def evaluate_run(cls, run_dir: str | os.PathLike, recipe: Recipe, ctx: Context) -> dict[str, float]:
        """``archlab eval RUN``: the saved student, and the teacher from ``RUN/teacher`` (or ``teacher_from``)."""
        data = cls.load_data(recipe)
        loop = cls(recipe, load(run_dir, map_location=str(ctx.device)), data, ctx)
        loop.steps_done = loop.total_steps
        if loop.t_opt is not None:
            teacher_dir = Path(run_dir) / TEACHER_DIR
            if not teacher_dir.is_dir():
                raise ArchlabError(f"{run_dir} has no {TEACHER_DIR}/ folder: the run did not finish")
            loop.teacher.load_state_dict(load(teacher_dir, map_location=str(ctx.device)).state_dict())
        return loop.final_metrics()

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "t_stream": self.t_stream.state_dict(),
                 "t_aug_gen": self.t_aug_gen.get_state()}
        state["teacher"] = self.t_opt.state_dict() if self.t_opt is not None else None
        state["hint"] = self.h_opt.state_dict() if self.h_opt is not None else None
        state["teacher_logits"] = self.teacher_logits
        state["steps_done"] = self.steps_done
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.t_opt is not None:
            self.t_opt.load_state_dict(state["teacher"])
        if self.h_opt is not None:
            self.h_opt.load_state_dict(state["hint"])
        super().load_state_dict(state)  # after the hint stage's copy of the student: the student's own state wins
        self.t_stream.load_state_dict(state["t_stream"])
        self.t_aug_gen.set_state(state["t_aug_gen"])
        self.steps_done = state["steps_done"]
        logits = state.get("teacher_logits")
        self.teacher_logits = logits.to(self.ctx.device) if logits is not None else None
