"""Link prediction on an event stream (TGN on continuous-time dynamic graphs).

The stream is split by time (``data.val_fraction`` / ``loop.test_fraction`` of the timestamps, TGN's
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
The driver keeps the weights with the best ``train.monitor`` (default ``val_ap``), as TGN's early stopping does;
the final metrics (and the saved model) are theirs, ``final_*`` those of the last step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data.events import EventDataset, load_event_dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..graph.metrics import average_precision, roc_auc
from ..graph.temporal import EventStream, random_destinations
from ..models.base import ArchModel
from ..registry import get
from .link import SplitConfig

if TYPE_CHECKING:
    from ..recipe import Recipe


@register_loop("temporal")
class TemporalLinkPrediction(Loop):
    """Future-link prediction on an event stream (TGN); one step = one batch of events."""

    Config = SplitConfig
    data_kind = "temporal"
    model_families = ("graph",)
    metrics = ("val_ap", "val_auc", "test_ap", "test_auc")
    monitor = ("val_ap", "max")
    keep_best = True

    @classmethod
    def load_data(cls, recipe: Recipe) -> EventDataset:
        return load_event_dataset(recipe.data.name, recipe.data.options)

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: EventDataset) -> dict[str, Any]:
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
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        stream = data.stream.to(ctx.device)
        try:
            self.splits = dict(zip(("train", "val", "test"),
                                   stream.chronological_split(dc.val_fraction, self.cfg.test_fraction), strict=True))
        except ValueError as exc:
            raise ArchlabError(f"data.val_fraction / loop.test_fraction: {exc}") from None
        self.num_nodes = stream.num_nodes
        self.batch_size = dc.batch_size
        self.per_epoch = max(1, -(-len(self.splits["train"]) // self.batch_size))
        self.total_steps = tc.steps or max(1, round(tc.epochs * self.per_epoch))
        self.eval_every = tc.eval_every or self.per_epoch
        self.opt = self.trainable("model", self.model)
        self.negatives = torch.Generator().manual_seed(ctx.seed)

    # ----------------------------------------------------------------------------- training
    def train_step(self, step: int) -> dict[str, Any]:
        pos = step % self.per_epoch
        if pos == 0:
            self.model.reset_state()
        b = self.batch_size
        ev = self.splits["train"][pos * b:(pos + 1) * b]
        neg = random_destinations(len(ev), self.num_nodes, self.negatives).to(self.ctx.device)
        self.model.train()
        self.opt.zero_grad()
        with self.ctx.precision.autocast():
            logits = self.model(ev.src, ev.dst, ev.t, ev.edge_feat, neg_dst=neg).float()
        target = torch.zeros_like(logits)
        target[0] = 1.0
        loss = F.binary_cross_entropy_with_logits(logits, target)
        self.opt.backward(loss)
        # Observed with the weights that made this batch's predictions (TGN updates the memory before
        # the optimizer step), so the stored memory is exactly the one the loss saw.
        self.model.observe(ev.src, ev.dst, ev.t, ev.edge_feat)
        return {"loss": loss.detach(), "lr": self.opt.step()}

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

    def evaluate(self, split: str) -> dict[str, float]:
        return self._scores((split,))

    def final_metrics(self) -> dict[str, float]:
        return self._scores(("val", "test"))

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "stream_state": dict(self.model.get_state()._asdict()),
                "negatives": self.negatives.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        s = state["stream_state"]
        self.model.set_state(type(self.model.get_state())(**{k: v.to(self.ctx.device) for k, v in s.items()}))
        self.negatives.set_state(state["negatives"])
