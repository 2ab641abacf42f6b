"""Iterative magnitude pruning in one run: train dense, then prune and retrain round after round
(``train.loop = "prune"``).

The run is a fixed sequence of *phases*, each a stretch of ordinary supervised steps (cross-entropy,
minibatches from one seeded :class:`~archlab.train.supervised.BatchStream`) with a fresh optimizer and
schedule from ``[optim]``:

    dense        train.epochs (or train.steps) of dense training             -> theta_dense
    round r      prune to sparsity s_r from the weights the previous round ended with (mask m_r),
                 then, by loop.mode:
                   han             theta <- theta_{r-1} * m_r, retrain (fine-tune)       (Han et al. 2015)
                   lottery         theta <- theta_k * m_r, train (rewind; k = rewind_step)  (Frankle & Carbin 2019)
                   lottery_random  theta <- theta'_0 * m_r, train (fresh random init each round; masks from
                                   these re-initialised networks)
    control r    (loop.random_control, lottery modes) the mask m_r on a fresh random init, trained as long:
                 Frankle & Carbin's "randomly reinitialized" curve; it does not feed later rounds

Sparsity: with ``loop.schedule = [s_1, ..., s_R]`` the cumulative fraction of pruned weights after each
round (the same in every layer, or pooled for ``scope = "global"``); otherwise round r prunes
``loop.rate`` of each layer's remaining weights (``(1 - p)^r`` left), the output layer at
``rate * output_rate_scale``. The masks are attached to each phase's optimizer
(:meth:`archlab.compress.Masks.attach`): pruned weights are exactly 0 after every step.

At the end of every phase the model is scored on the validation and test splits; ``RUN/prune.json``
holds the rounds and ``RUN/plots/prune.png`` the test accuracy against the fraction of weights remaining
(both curves with the random control). The checkpoint holds the phase's optimizer, the masks, theta_k,
the weights the last round ended with, the data position and the round records: a run resumes exactly,
also in the middle of a round.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from ..compress import Masks, magnitude_masks, prunable_weights, sparsity_report
from ..compress.lottery import layer_rates, random_reinit, rewind, round_sparsity
from ..data import Dataset
from ..engine.loop import Context, Loop, Trainable, register_loop
from ..errors import ArchlabError
from ..io import atomic_write_bytes, pyplot
from ..models.base import ArchModel
from .supervised import BatchStream, Supervised, classification_scores

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class PruneConfig:
    """``[loop]`` of the prune loop. The dense phase lasts ``train.epochs`` (or ``train.steps``)."""

    mode: Literal["han", "lottery", "lottery_random"] = "han"
    """han: prune and fine-tune the trained weights; lottery: prune, rewind the survivors to theta_k, train
    again; lottery_random: prune, re-initialise at random, train again."""
    rounds: int = 1
    """Prune/retrain rounds after the dense phase."""
    schedule: list[float] = field(default_factory=list)
    """Cumulative sparsity after each round (one entry per round, increasing); empty: use ``rate``."""
    rate: float = 0.2
    """Without a schedule: fraction of each layer's remaining weights pruned per round (Frankle & Carbin: 0.2)."""
    output_rate_scale: float = 1.0
    """Without a schedule, layer-wise: the output layer is pruned at rate * this (Frankle & Carbin: 0.5)."""
    scope: Literal["layer", "global"] = "layer"
    """Rank weights within each layer, or pool all layers under one threshold (schedule only)."""
    retrain_epochs: float = 1.0
    """Epochs each round (and each random control) trains."""
    retrain_lr: float = 0.0
    """Peak learning rate of the rounds (0: optim.lr; Han et al. fine-tune at a lower rate)."""
    rewind_step: int = 0
    """lottery: reset the survivors to the weights after this many dense steps (0: the initialisation)."""
    random_control: bool = False
    """lottery modes: also train each round's mask from a fresh random initialisation (the control curve)."""
    max_remaining: float = 1.0
    """The sparsity condition of sparse_test_err and ticket_gap: the final model may keep at most this fraction
    of its Linear/Conv weights, else they report a miss (1.0 error, -1.0 gap)."""

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= 100 or not 0 < self.retrain_epochs <= 1000:
            raise ValueError("need 1 <= rounds <= 100 and 0 < retrain_epochs <= 1000")
        if self.schedule:
            if len(self.schedule) != self.rounds:
                raise ValueError(f"schedule has {len(self.schedule)} entries but rounds = {self.rounds}")
            pairs = zip(self.schedule[:-1], self.schedule[1:], strict=True)
            if any(not 0 < s < 1 for s in self.schedule) or any(b < a for a, b in pairs):
                raise ValueError(f"schedule must be non-decreasing sparsities in (0, 1), got {self.schedule}")
        elif self.scope == "global":
            raise ValueError("scope = 'global' needs a schedule of sparsities (rate is per layer)")
        if not 0 < self.rate < 1 or not 0 < self.output_rate_scale <= 1 / self.rate:
            raise ValueError("need 0 < rate < 1 and 0 < rate * output_rate_scale <= 1")
        if not 0 <= self.retrain_lr <= 100 or self.rewind_step < 0 or not 0 < self.max_remaining <= 1:
            raise ValueError("need 0 <= retrain_lr <= 100, rewind_step >= 0 and 0 < max_remaining <= 1")
        if self.mode == "han" and (self.random_control or self.rewind_step):
            raise ValueError("random_control and rewind_step belong to the lottery modes")


@dataclass(frozen=True)
class Phase:
    kind: Literal["dense", "round", "control"]
    round: int
    start: int
    steps: int


@register_loop("prune")
class Prune(Loop):
    """Iterative magnitude pruning: dense training, then prune/retrain rounds (Han et al.) or lottery tickets."""

    Config = PruneConfig
    model_families = ("classic", "compress")
    metrics = ("val_acc", "val_loss", "test_acc", "test_loss", "test_err", "weights_remaining", "params_remaining",
               "dense_test_acc", "sparse_test_err", "ticket_gap", "random_test_acc", "random_gap")
    progress_keys = ("loss", "round")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if recipe.train.accumulate != 1 or recipe.train.l1:
            raise ArchlabError("train.accumulate and train.l1 are not used by the prune loop; leave them at their "
                               "defaults")
        if not prunable_weights(model):
            raise ArchlabError(f"model {recipe.model_name!r} has no Linear or Conv layer to prune")
        Supervised.check_fit(recipe, data, model)

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the prune loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        cfg: PruneConfig = self.cfg
        tc, dc = recipe.train, recipe.data
        self.train_x, self.train_y = data.train.x.to(ctx.device), data.train.y.to(ctx.device)
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        per_epoch = max(1, len(data.train) // dc.batch_size)
        dense = tc.steps or max(1, round(tc.epochs * per_epoch))
        if cfg.rewind_step >= dense:
            raise ArchlabError(f"loop.rewind_step {cfg.rewind_step} must be smaller than the dense phase "
                               f"({dense} steps)")
        retrain = max(1, round(cfg.retrain_epochs * per_epoch))
        self.phases = [Phase("dense", 0, 0, dense)]
        for r in range(1, cfg.rounds + 1):
            kinds = ["round", "control"] if cfg.random_control else ["round"]
            for kind in kinds:
                self.phases.append(Phase(kind, r, self.phases[-1].start + self.phases[-1].steps, retrain))
        self.total_steps = self.phases[-1].start + self.phases[-1].steps
        self.eval_every = 0  # every phase ends with its own validation and test scores (the round records)
        names = list(prunable_weights(model))
        self.rates = layer_rates(names, cfg.rate, cfg.output_rate_scale)
        self.masks = Masks.dense(model)
        self.rewind_to = copy.deepcopy(model.state_dict()) if cfg.mode == "lottery" and cfg.rewind_step == 0 else None
        self.trained: dict[str, torch.Tensor] | None = None  # weights the trajectory's last phase ended with
        self.history: list[dict[str, Any]] = []
        self.phase_index = -1
        self.opt: Trainable | None = None

    # -- phases ----------------------------------------------------------------------------------------
    def _phase_at(self, step: int) -> int:
        return next(i for i, p in enumerate(self.phases) if p.start <= step < p.start + p.steps)

    def _sparsity(self, r: int) -> float | dict[str, float]:
        cfg: PruneConfig = self.cfg
        return cfg.schedule[r - 1] if cfg.schedule else round_sparsity(self.rates, r)

    def _fresh_init(self, tag: int) -> ArchModel:
        """A newly initialised network of the run's architecture, from its own seed (run seed, tag)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.seed * 100_003 + tag)
            return type(self).build_model(self.recipe, self.data, self.ctx.device).to(self.ctx.device)

    def _trainable(self, phase: Phase) -> Trainable:
        cfg: PruneConfig = self.cfg
        optim = self.recipe.optim["model"]
        if phase.kind != "dense" and cfg.retrain_lr:
            optim = dataclasses.replace(optim, lr=cfg.retrain_lr)
        return Trainable("model", self.model, optim, phase.steps, self.ctx, self.recipe.train.grad_clip)

    def _enter(self, index: int) -> None:
        """Set the model up for phase ``index`` (prune, rewind or re-initialise) and build its optimizer."""
        cfg: PruneConfig = self.cfg
        phase = self.phases[index]
        if phase.kind == "round":
            assert self.trained is not None
            self.model.load_state_dict(self.trained)
            self.masks = Masks(magnitude_masks(prunable_weights(self.model), self._sparsity(phase.round),
                                               cfg.scope, self.masks.masks))
            if cfg.mode == "han":
                self.masks.apply(self.model)
            elif cfg.mode == "lottery":
                assert self.rewind_to is not None
                rewind(self.model, self.rewind_to, self.masks)
            else:
                random_reinit(self.model, self._fresh_init(phase.round), self.masks)
        elif phase.kind == "control":
            random_reinit(self.model, self._fresh_init(10_000 + phase.round), self.masks)
        self.phase_index = index
        self._attach()

    def _attach(self) -> None:
        self.masks.detach()
        self.opt = self._trainable(self.phases[self.phase_index])
        self.masks.attach(self.model, self.opt.optimizer)

    def _leave(self, phase: Phase) -> None:
        """Score the model at the end of a phase; keep its weights when the trajectory continues from them."""
        scores = {**self.evaluate("val"), **self.evaluate("test")}
        report = sparsity_report(self.model)
        record = {"phase": phase.kind, "round": phase.round, "weights_remaining": report.weights_remaining,
                  "params_remaining": report.params_remaining, **scores}
        self.history.append(record)
        if phase.kind != "control":
            self.trained = copy.deepcopy(self.model.state_dict())

    def train_step(self, step: int) -> dict[str, Any]:
        index = self._phase_at(step)
        if index != self.phase_index:
            self._enter(index)
        phase = self.phases[index]
        local = step - phase.start
        if phase.kind == "dense" and self.cfg.mode == "lottery" and local == self.cfg.rewind_step \
                and self.rewind_to is None:
            self.rewind_to = copy.deepcopy(self.model.state_dict())  # theta_k (Frankle et al. 2020)
        assert self.opt is not None

        def micro_loss() -> torch.Tensor:
            idx = self.stream.next().to(self.ctx.device)
            with self.ctx.precision.autocast():
                logits = self.model(self.train_x[idx])
            return F.cross_entropy(logits.float(), self.train_y[idx])

        out = self.opt.accumulated_step(1, 0.0, micro_loss)
        out["round"] = phase.round
        if local == phase.steps - 1:
            self._leave(phase)
        return out

    # -- evaluation and results -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        part = getattr(self.data, split)
        if len(part) == 0:
            return {}
        self.model.eval()
        return classification_scores(self.model, part, split, self.recipe.data.eval_batch_size, self.ctx.device,
                                     self.ctx.precision.autocast)

    def _final_model(self) -> None:
        """The run's model is the trajectory's last one (a random control may have trained after it)."""
        if self.trained is not None and self.history and self.history[-1]["phase"] == "control":
            self.masks.detach()
            self.model.load_state_dict(self.trained)

    def final_metrics(self) -> dict[str, float]:
        cfg: PruneConfig = self.cfg
        self._final_model()
        out = {**self.evaluate("val"), **self.evaluate("test")}
        report = sparsity_report(self.model)
        out["weights_remaining"] = report.weights_remaining
        out["params_remaining"] = report.params_remaining
        if "test_acc" in out:
            out["test_err"] = 1.0 - out["test_acc"]
            sparse_enough = report.weights_remaining <= cfg.max_remaining + 1e-12
            out["sparse_test_err"] = out["test_err"] if sparse_enough else 1.0
            dense = [h for h in self.history if h["phase"] == "dense"]
            if dense:
                out["dense_test_acc"] = dense[0]["test_acc"]
                out["ticket_gap"] = out["test_acc"] - out["dense_test_acc"] if sparse_enough else -1.0
            control = [h for h in self.history if h["phase"] == "control"]
            if control:
                out["random_test_acc"] = control[-1]["test_acc"]
                out["random_gap"] = control[-1]["test_acc"] - out["test_acc"]
        return out

    def final_object(self) -> ArchModel:
        self._final_model()
        return self.model

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        run = Path(run_dir)
        atomic_write_bytes(run / "prune.json", (json.dumps({"mode": self.cfg.mode, "rounds": self.history},
                                                           indent=2) + "\n").encode())
        plot_rounds(self.history, self.cfg.mode, run / "plots" / "prune.png")

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase_index, "model": None if self.opt is None else self.opt.state_dict(),
                "masks": self.masks.state_dict(), "rewind_to": self.rewind_to, "trained": self.trained,
                "history": self.history, "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = Masks(dict(state["masks"]))
        self.rewind_to, self.trained = state["rewind_to"], state["trained"]
        self.history = [dict(h) for h in state["history"]]
        self.stream.load_state_dict(state["stream"])
        self.phase_index = state["phase"]
        if self.phase_index >= 0:
            self._attach()
            self.opt.load_state_dict(state["model"])  # type: ignore[union-attr]


def plot_rounds(history: list[dict[str, Any]], mode: str, path: Path) -> None:
    """Test accuracy against the fraction of weights remaining (log axis, dense on the left), one curve for
    the pruning trajectory and one for the random re-initialisation control when there is one."""
    if not history or "test_acc" not in history[0]:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    label = {"han": "pruned + retrained (Han et al.)", "lottery": "winning ticket (rewound)",
             "lottery_random": "pruned, random re-init each round"}[mode]
    curves = [(label, [h for h in history if h["phase"] != "control"], "o-")]
    control = [h for h in history if h["phase"] == "control"]
    if control:
        curves.append(("same mask, random re-init (control)", control, "s--"))
    for name, rows, style in curves:
        ax.plot([100 * h["weights_remaining"] for h in rows], [100 * h["test_acc"] for h in rows], style, label=name)
    ax.set_xscale("log")
    lowest = min(100 * h["weights_remaining"] for h in history)
    ax.set_xticks([t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if t >= 0.8 * lowest])
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:g}")
    ax.xaxis.set_minor_formatter(lambda v, _pos: "")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

