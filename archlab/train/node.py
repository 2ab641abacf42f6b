"""Node classification on one graph (Planetoid, SBM): semi-supervised, full batch or sampled.

One step, full batch (Kipf & Welling 2017; Veličković et al. 2018):

    logits = f(X, A)                                     all N nodes
    loss   = CE(logits[train_mask], y[train_mask])
    W     <- optimizer(W, grad loss),   lr <- schedule(step)

With ``data.fanouts`` (GraphSAGE mini-batches) one step takes ``data.batch_size`` training nodes,
samples their ``fanouts``-hop neighbourhood (:class:`archlab.graph.sampling.NeighborSampler`) and
runs the model on that subgraph only; the loss covers the seed nodes.

Model selection follows the papers: every evaluation scores the validation nodes; the weights with the
best ``train.monitor`` (default ``val_acc``; ties go to the lower ``val_loss``) are kept, and the
run's final metrics -- and the saved model -- are those weights: ``test_acc`` is the test accuracy at
the best validation epoch.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..data.graphs import GraphDataset, load_graph_dataset
from ..engine.optim import build_optimizer, build_scheduler
from ..errors import ArchlabError
from ..models.base import ArchModel
from ..recipe import Recipe
from ..registry import get
from . import Context, optimizer_step

#: Bag-of-words features below this density go to sparse-capable models as a CSR tensor.
SPARSE_DENSITY = 0.25


def data_defaults(recipe: Recipe, data: Any) -> dict[str, Any]:
    """Model config values taken from the dataset (``data_fields`` of the model class)."""
    cls = get(recipe.model_name).cls
    fields = getattr(cls, "data_fields", {})
    return {key: getattr(data, attr) for key, attr in fields.items()}


class NodeClassification:
    """Paradigm for node classification; one step = one optimizer update."""

    data_kind: ClassVar[str] = "graph"

    @staticmethod
    def load_data(recipe: Recipe) -> GraphDataset:
        ds = load_graph_dataset(recipe.data.name, recipe.data.options)
        if ds.task != "node":
            raise ArchlabError(f"data.name: {recipe.data.name!r} is a {ds.task}-level dataset; the node loop needs "
                               "one graph with node labels (cora, citeseer, pubmed, sbm)")
        return ds

    model_defaults = staticmethod(data_defaults)

    def __init__(self, recipe: Recipe, model: ArchModel, data: GraphDataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the node loop trains on one graph in one process; drop --nproc")
        self.recipe, self.ctx, self.data = recipe, ctx, data
        self.model = model.to(ctx.device)
        g = data.graph.to(ctx.device)
        self.graph = g
        x = g.x
        density = float((x != 0).float().mean()) if x.numel() else 1.0
        if getattr(model, "accepts_sparse", False) and density < SPARSE_DENSITY:
            x = x.to_sparse_csr()
        self.x = x
        self.masks = {"train": g.train_mask, "val": g.val_mask, "test": g.test_mask}
        tc = recipe.train
        self.sampler = None
        n_train = int(g.train_mask.sum())
        if recipe.data.fanouts:
            from ..graph.sampling import NeighborSampler

            self.sampler = NeighborSampler(g.edge_index, g.num_nodes, recipe.data.fanouts, seed=ctx.seed)
            self.seed_stream = torch.Generator().manual_seed(ctx.seed + 7)
            self.train_nodes = g.train_mask.nonzero().flatten()
            self.per_epoch = max(1, -(-n_train // recipe.data.batch_size))
            self.order = torch.empty(0, dtype=torch.long)
            self.pos = self.per_epoch
        else:
            self.per_epoch = 1
        self.total_steps = tc.steps or max(1, round(tc.epochs * self.per_epoch))
        self.eval_every = tc.eval_every or self.per_epoch
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.scheduler = build_scheduler(self.optimizer, recipe.optim, self.total_steps)
        self.best: dict[str, Any] | None = None  # {"score", "val_loss", "step", "state"}
        self.step = 0

    # ----------------------------------------------------------------------------- training
    def _seed_batch(self) -> torch.Tensor:
        if self.pos >= self.per_epoch:
            self.order = self.train_nodes[torch.randperm(len(self.train_nodes), generator=self.seed_stream)]
            self.pos = 0
        b = self.recipe.data.batch_size
        seeds = self.order[self.pos * b:(self.pos + 1) * b]
        self.pos += 1
        return seeds

    def train_step(self, step: int) -> dict[str, Any]:
        self.step = step
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        g = self.graph
        with self.ctx.precision.autocast():
            if self.sampler is None:
                logits = self.model(self.x, g.edge_index)
                mask = self.masks["train"]
                loss = F.cross_entropy(logits[mask].float(), g.y[mask])
            else:
                seeds = self._seed_batch()
                sub = self.sampler.sample(seeds.cpu())
                nodes = sub.nodes.to(self.ctx.device)
                x = self.x.index_select(0, nodes) if self.x.layout == torch.strided else \
                    self.x.to_dense().index_select(0, nodes)
                logits = self.model(x, sub.edge_index.to(self.ctx.device))[:len(seeds)]
                loss = F.cross_entropy(logits.float(), g.y[seeds])
        self.ctx.precision.backward(loss)
        lr = optimizer_step(self.ctx, self.model, self.optimizer, self.scheduler, self.recipe.train.grad_clip)
        return {"loss": loss.detach(), "lr": lr}

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _scores(self) -> dict[str, float]:
        self.model.eval()
        with self.ctx.precision.autocast():
            logits = self.model(self.x, self.graph.edge_index).float()
        y = self.graph.y
        out: dict[str, float] = {}
        for split, mask in self.masks.items():
            if mask is None or not bool(mask.any()):
                continue
            out[f"{split}_acc"] = (logits[mask].argmax(-1) == y[mask]).float().mean().item()
            out[f"{split}_loss"] = F.cross_entropy(logits[mask], y[mask]).item()
        return out

    def _is_better(self, scores: dict[str, float]) -> bool:
        tc = self.recipe.train
        if tc.monitor not in scores:
            raise ArchlabError(f"train.monitor: {tc.monitor!r} is not reported by the node loop; "
                               f"choose one of {', '.join(sorted(scores))}")
        if self.best is None:
            return True
        new, old = scores[tc.monitor], self.best["score"]
        if new == old:
            return scores.get("val_loss", 0.0) < self.best["val_loss"]
        return new > old if tc.monitor_mode == "max" else new < old

    def evaluate(self, split: str) -> dict[str, float]:
        scores = self._scores()
        if split == "val" and self._is_better(scores):
            self.best = {"score": scores[self.recipe.train.monitor], "val_loss": scores.get("val_loss", 0.0),
                         "step": self.step, "state": copy.deepcopy(self.model.state_dict())}
        return {k: v for k, v in scores.items() if k.startswith(split)}

    def final_metrics(self) -> dict[str, float]:
        last = self._scores()
        if self.best is not None:
            self.model.load_state_dict(self.best["state"])
        best = self._scores()
        out = {**best, "final_val_acc": last.get("val_acc", float("nan")),
               "final_test_acc": last.get("test_acc", float("nan"))}
        if self.best is not None:
            out["best_step"] = self.best["step"]
        return out

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                 "scheduler": self.scheduler.state_dict(), "precision": self.ctx.precision.state_dict(),
                                 "step": self.step}
        if self.best is not None:
            state["best"] = {k: v for k, v in self.best.items()}
        if self.sampler is not None:
            state["sampling"] = {"gen": self.seed_stream.get_state(), "order": self.order, "pos": self.pos,
                                 "sampler": self.sampler.state_dict()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ctx.precision.load_state_dict(state["precision"])
        self.step = state["step"]
        self.best = state.get("best")
        if self.sampler is not None and "sampling" in state:
            s = state["sampling"]
            self.seed_stream.set_state(s["gen"])
            self.order, self.pos = s["order"], s["pos"]
            self.sampler.load_state_dict(s["sampler"])
