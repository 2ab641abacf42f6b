"""Graph classification (TU datasets, GIN, MPNN): mini-batches of whole graphs.

One step (Xu et al. 2019, Sec. 7):

    B      = batch_graphs(data.batch_size training graphs)       block-diagonal graph + batch vector
    logits = f(X_B, A_B, batch)                                  one row per graph
    loss   = CE(logits, y_B);   W <- optimizer(W, grad loss),   lr <- schedule(step)

Splits: with ``loop.folds = k`` the graphs are dealt into k stratified folds (fixed by
``data.split_seed``); fold ``loop.fold`` (default: ``seed % k``) is the test set, so ``k`` seeds run a
k-fold cross-validation and the mean over seeds is the cross-validated accuracy. ``data.val_fraction``
of the remaining graphs (stratified) validates during training; ``0`` trains on all of them, as the
GIN paper does. Without folds, ``loop.test_fraction`` of the graphs (stratified) is the test set.
Final metrics are those of the last step (no selection on the test fold).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.graphs import GraphDataset, load_graph_dataset
from ..data.registry import stratified_indices
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..graph import Graph, batch_graphs
from ..models.base import ArchModel
from .node import check_graph_model, data_defaults
from .supervised import BatchStream

if TYPE_CHECKING:
    from ..recipe import Recipe


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id of every example: each class's members, shuffled by ``RandomState(seed)``, are dealt
    round-robin into ``k`` folds (continuing where the previous class stopped), so every fold gets
    its share of each class and the fold sizes differ by at most one."""
    rng = np.random.RandomState(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        fold[members] = (offset + np.arange(len(members))) % k
        offset += len(members)
    return fold


@dataclass
class GraphLevelConfig:
    """``[loop]`` of the graph-classification loop."""

    folds: int = 0
    """k-fold cross-validation with this many folds (0: no folds; a stratified ``test_fraction`` split instead)."""
    fold: int = -1
    """Which fold is held out for testing; -1: ``seed % folds``, so seeds 0..k-1 together run the whole
    cross-validation (``archlab reproduce`` with ``expect.seeds = k``)."""
    test_fraction: float = 0.1
    """Without folds: share of the graphs held out for testing."""

    def __post_init__(self) -> None:
        if not (self.folds == 0 or 2 <= self.folds <= 1000) or not -1 <= self.fold < max(self.folds, 1):
            raise ValueError(f"need folds = 0 or 2..1000 and -1 <= fold < folds, got folds={self.folds}, "
                             f"fold={self.fold}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")


@register_loop("graph")
class GraphClassification(Loop):
    """Graph-level classification (TU datasets): mini-batches of whole graphs, k-fold cross-validation."""

    Config = GraphLevelConfig
    data_kind = "graph"
    model_families = ("graph",)
    metrics = ("train_acc", "train_loss", "val_acc", "val_loss", "test_acc", "test_loss", "fold")

    @classmethod
    def load_data(cls, recipe: Recipe) -> GraphDataset:
        ds = load_graph_dataset(recipe.data.name, recipe.data.options)
        if ds.task != "graph":
            raise ArchlabError(f"data.name: {recipe.data.name!r} is a {ds.task}-level dataset; the graph loop needs "
                               "many labelled graphs (mutag, proteins, graph_sbm)")
        return ds

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Any) -> dict[str, Any]:
        return data_defaults(recipe, data)

    @classmethod
    def check_fit(cls, recipe: Recipe, data: GraphDataset, model: ArchModel) -> None:
        check_graph_model(recipe, model, "graph")

    def __init__(self, recipe: Recipe, model: ArchModel, data: GraphDataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the graph loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        dc, tc, lc = recipe.data, recipe.train, self.cfg
        labels = np.array([int(g.y.reshape(-1)[0]) for g in data.graphs])
        n = len(labels)
        if lc.folds:
            fold = lc.fold if lc.fold >= 0 else ctx.seed % lc.folds
            assignment = stratified_folds(labels, lc.folds, dc.split_seed)
            test_idx, rest = np.flatnonzero(assignment == fold), np.flatnonzero(assignment != fold)
            self.fold = fold
        else:
            keep, test_idx = stratified_indices(labels, lc.test_fraction, dc.split_seed)
            rest, self.fold = keep, None
        kept, val_pos = stratified_indices(labels[rest], dc.val_fraction, dc.split_seed + 1)
        self.split_idx = {"train": rest[kept], "val": rest[val_pos], "test": test_idx}
        if len(self.split_idx["train"]) < dc.batch_size:
            raise ArchlabError(f"data.batch_size {dc.batch_size} is larger than the training split "
                               f"({len(self.split_idx['train'])} graphs of {n})")
        self.train_graphs = [data.graphs[i] for i in self.split_idx["train"]]
        # Evaluation batches are built once: the held-out graphs never change.
        self.eval_batches = {s: self._batch([data.graphs[i] for i in idx]) for s, idx in self.split_idx.items()
                             if len(idx)}
        self.stream = BatchStream(len(self.train_graphs), dc.batch_size, seed=ctx.seed)
        per_epoch = max(1, len(self.train_graphs) // dc.batch_size)
        self.total_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.eval_every = (tc.eval_every or per_epoch) if "val" in self.eval_batches else 0
        self.opt = self.trainable("model", self.model)
        params = inspect.signature(self.model.forward).parameters
        self.pass_edge_attr = "edge_attr" in params

    def _batch(self, graphs: list[Graph]) -> Graph:
        return batch_graphs(graphs).to(self.ctx.device)

    def _forward(self, b: Graph) -> torch.Tensor:
        kwargs: dict[str, Any] = {"batch": b.batch}
        if self.pass_edge_attr:
            kwargs["edge_attr"] = b.edge_attr
        with self.ctx.precision.autocast():
            return self.model(b.x, b.edge_index, **kwargs).float()

    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        self.opt.zero_grad()
        idx = self.stream.next()
        b = self._batch([self.train_graphs[i] for i in idx.tolist()])
        loss = F.cross_entropy(self._forward(b), b.y.reshape(-1))
        self.opt.backward(loss)
        return {"loss": loss.detach(), "lr": self.opt.step()}

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        b = self.eval_batches.get(split)
        if b is None:
            return {}
        self.model.eval()
        logits = self._forward(b)
        y = b.y.reshape(-1)
        return {f"{split}_acc": (logits.argmax(-1) == y).float().mean().item(),
                f"{split}_loss": F.cross_entropy(logits, y).item()}

    def final_metrics(self) -> dict[str, float]:
        out = {**self.evaluate("train"), **self.evaluate("val"), **self.evaluate("test")}
        if self.fold is not None:
            out["fold"] = self.fold
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self.stream.load_state_dict(state["stream"])
