"""Link prediction on an event stream (TGN on continuous-time dynamic graphs).

The stream is split by time (``data.val_fraction`` / ``data.test_fraction`` of the timestamps, TGN's
70 / 15 / 15 with 0.15 each). One step = one batch of ``data.batch_size`` consecutive training
events (Rossi et al. 2020, Sec. 3.3):

    at the first batch of an epoch: reset the model's state (memory, neighbours)
    neg     = uniform random destinations, one per event
    logits  = f(src, dst | state),  f(src, neg | state)       state: the events of earlier batches only
    loss    = BCE(logits_pos, 1) + BCE(logits_neg, 0)  (mean over both)
    backward;  observe(batch)  (the batch enters the state, detached);  optimizer step

Evaluation replays the training events through a fresh state with the current weights, then scores
each validation (and test) batch against fixed random negatives before observing it, as TGN
evaluates: ``{split}_ap`` and ``{split}_auc`` over all positive and negative scores of the split.
Evaluation runs at ``data.batch_size`` too, since the batch is the granularity of memory updates.
The weights with the best ``train.monitor`` (e.g. ``val_ap``) are kept, as TGN's early stopping does;
the final metrics (and the saved model) are theirs, ``final_*`` those of the last step.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..data.events import EventDataset, load_event_dataset
from ..engine.optim import build_optimizer, build_scheduler
from ..errors import ArchlabError
from ..graph.metrics import average_precision, roc_auc
from ..graph.temporal import EventStream, random_destinations
from ..models.base import ArchModel
from ..recipe import Recipe
from ..registry import get
from . import Context, optimizer_step


class TemporalLinkPrediction:
    """Paradigm for future-link prediction on an event stream; one step = one batch of events."""

    data_kind: ClassVar[str] = "temporal"

    @staticmethod
    def load_data(recipe: Recipe) -> EventDataset:
        return load_event_dataset(recipe.data.name, recipe.data.options)

    @staticmethod
    def model_defaults(recipe: Recipe, data: EventDataset) -> dict[str, Any]:
        """``num_nodes`` and ``edge_dim`` of a temporal model from the stream."""
        fields = getattr(get(recipe.model_name).cls, "data_fields", {})
        if not all(hasattr(data, attr) for attr in fields.values()):
            raise ArchlabError(f"model.name: {recipe.model_name!r} keeps no temporal state; the temporal loop "
                               "needs a model such as tgn")
        return {key: getattr(data, attr) for key, attr in fields.items()}

    def __init__(self, recipe: Recipe, model: ArchModel, data: EventDataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the temporal loop runs over one stream in one process; drop --nproc")
        if not all(hasattr(model, m) for m in ("reset_state", "observe", "get_state", "set_state")):
            raise ArchlabError(f"model.name: {recipe.model_name!r} keeps no temporal state; the temporal loop "
                               "needs a model such as tgn")
        tc, dc = recipe.train, recipe.data
        self.recipe, self.ctx, self.data = recipe, ctx, data
        self.model = model.to(ctx.device)
        stream = data.stream.to(ctx.device)
        try:
            self.splits = dict(zip(("train", "val", "test"),
                                   stream.chronological_split(dc.val_fraction, dc.test_fraction), strict=True))
        except ValueError as exc:
            raise ArchlabError(f"data.val_fraction / data.test_fraction: {exc}") from None
        self.num_nodes = stream.num_nodes
        self.batch_size = dc.batch_size
        self.per_epoch = max(1, -(-len(self.splits["train"]) // self.batch_size))
        self.total_steps = tc.steps or max(1, round(tc.epochs * self.per_epoch))
        self.eval_every = tc.eval_every or self.per_epoch
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.scheduler = build_scheduler(self.optimizer, recipe.optim, self.total_steps)
        self.negatives = torch.Generator().manual_seed(ctx.seed)
        self.best: dict[str, Any] | None = None  # {"score", "step", "state"}
        self.step = 0

    # ----------------------------------------------------------------------------- training
    def train_step(self, step: int) -> dict[str, Any]:
        self.step = step
        pos = step % self.per_epoch
        if pos == 0:
            self.model.reset_state()
        b = self.batch_size
        ev = self.splits["train"][pos * b:(pos + 1) * b]
        neg = random_destinations(len(ev), self.num_nodes, self.negatives).to(self.ctx.device)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.ctx.precision.autocast():
            logits = self.model(ev.src, ev.dst, ev.t, ev.edge_feat, neg_dst=neg).float()
        target = torch.zeros_like(logits)
        target[0] = 1.0
        loss = F.binary_cross_entropy_with_logits(logits, target)
        self.ctx.precision.backward(loss)
        # Observed with the weights that made this batch's predictions (TGN updates the memory before
        # the optimizer step), so the stored memory is exactly the one the loss saw.
        self.model.observe(ev.src, ev.dst, ev.t, ev.edge_feat)
        lr = optimizer_step(self.ctx, self.model, self.optimizer, self.scheduler, self.recipe.train.grad_clip)
        return {"loss": loss.detach(), "lr": lr}

    # ----------------------------------------------------------------------------- evaluation
    def _batches(self, split: str) -> list[EventStream]:
        return self.splits[split].batches(self.batch_size)

    @torch.no_grad()
    def _scores(self, splits: tuple[str, ...]) -> dict[str, float]:
        """Replay train, then val (and test); training's state is put back afterwards."""
        model = self.model
        saved = model.get_state()
        model.eval()
        model.reset_state()
        for ev in self._batches("train"):
            model.observe(ev.src, ev.dst, ev.t, ev.edge_feat)
        out: dict[str, float] = {}
        for i, split in enumerate(("val", "test")):
            if split not in splits and "test" not in splits:
                break
            # Fixed negatives per split: every evaluation ranks the same pairs.
            gen = torch.Generator().manual_seed(self.recipe.data.split_seed * 2 + i)
            pos, neg = [], []
            for ev in self._batches(split):
                fake = random_destinations(len(ev), self.num_nodes, gen).to(self.ctx.device)
                with self.ctx.precision.autocast():
                    logits = model(ev.src, ev.dst, ev.t, ev.edge_feat, neg_dst=fake).float()
                pos.append(logits[0].cpu())
                neg.append(logits[1].cpu())
                model.observe(ev.src, ev.dst, ev.t, ev.edge_feat)
            if split in splits and pos:
                scores = torch.cat(pos + neg)
                labels = torch.cat([torch.ones(len(scores) // 2), torch.zeros(len(scores) // 2)])
                out[f"{split}_ap"] = average_precision(scores, labels)
                out[f"{split}_auc"] = roc_auc(scores, labels)
        model.set_state(saved)
        return out

    def _is_better(self, scores: dict[str, float]) -> bool:
        tc = self.recipe.train
        if tc.monitor not in scores:
            raise ArchlabError(f"train.monitor: {tc.monitor!r} is not reported by the temporal loop; "
                               f"choose one of {', '.join(sorted(scores))}")
        if self.best is None:
            return True
        new, old = scores[tc.monitor], self.best["score"]
        return new > old if tc.monitor_mode == "max" else new < old

    def evaluate(self, split: str) -> dict[str, float]:
        scores = self._scores((split,))
        if split == "val" and self._is_better(scores):
            self.best = {"score": scores[self.recipe.train.monitor], "step": self.step,
                         "state": copy.deepcopy(self.model.state_dict())}
        return scores

    def final_metrics(self) -> dict[str, float]:
        last = self._scores(("val", "test"))
        if self.best is None:
            return last
        self.model.load_state_dict(self.best["state"])
        best = self._scores(("val", "test"))
        return {**best, **{f"final_{k}": v for k, v in last.items()}, "best_step": self.best["step"]}

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(), "stream_state": dict(self.model.get_state()._asdict()),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "precision": self.ctx.precision.state_dict(), "step": self.step, "negatives": self.negatives.get_state()}
        if self.best is not None:
            state["best"] = dict(self.best)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        s = state["stream_state"]
        self.model.set_state(type(self.model.get_state())(**{k: v.to(self.ctx.device) for k, v in s.items()}))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ctx.precision.load_state_dict(state["precision"])
        self.step = state["step"]
        self.negatives.set_state(state["negatives"])
        self.best = state.get("best")
