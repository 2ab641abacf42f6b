"""Node classification on one graph (Planetoid, SBM): semi-supervised, full batch or sampled.

One step, full batch (Kipf & Welling 2017; Veličković et al. 2018):

    logits = f(X, A)                                     all N nodes
    loss   = CE(logits[train_mask], y[train_mask])
    W     <- optimizer(W, grad loss),   lr <- schedule(step)

With ``loop.fanouts`` (GraphSAGE mini-batches) one step takes ``data.batch_size`` training nodes,
samples their ``fanouts``-hop neighbourhood (:class:`archlab.graph.sampling.NeighborSampler`) and
runs the model on that subgraph only; the loss covers the seed nodes.

Model selection follows the papers: every evaluation scores the validation nodes; the driver keeps
the weights with the best ``train.monitor`` (default ``val_acc``; ties go to the lower ``val_loss``),
and the run's final metrics -- and the saved model -- are those weights: ``test_acc`` is the test
accuracy at the best validation epoch (``final_*``: the last epoch's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data.graphs import GraphDataset, load_graph_dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..graph import sparse_features
from ..models.base import ArchModel
from ..registry import get

if TYPE_CHECKING:
    from ..recipe import Recipe



def data_defaults(recipe: Recipe, data: Any) -> dict[str, Any]:
    """Model config values taken from the dataset (``data_fields`` of the model class)."""
    cls = get(recipe.model_name).cls
    fields = getattr(cls, "data_fields", {})
    return {key: getattr(data, attr) for key, attr in fields.items()}


def check_graph_model(recipe: Recipe, model: ArchModel, loop: str) -> None:
    """A graph loop trains graph models only (an MLP or GPT would fail deep inside the first step)."""
    if get(recipe.model_name).family != "graph":
        raise ArchlabError(f"model.name: {recipe.model_name!r} is not a graph model; loop {loop!r} trains the graph "
                           f"family (`archlab list graph`)")


@dataclass
class NodeConfig:
    """``[loop]`` of the node-classification loop."""

    fanouts: list[int] = field(default_factory=list)
    """Neighbours sampled per layer for mini-batch training (e.g. [25, 10]); empty: full batch. With
    fanouts, ``data.batch_size`` counts target nodes per step."""

    def __post_init__(self) -> None:
        if any(not 1 <= f <= 10**6 for f in self.fanouts) or len(self.fanouts) > 16:
            raise ValueError(f"fanouts must be at most 16 numbers in [1, 1e6], got {self.fanouts}")


@register_loop("node")
class NodeClassification(Loop):
    """Node classification on one graph (Planetoid, SBM), full batch or with sampled neighbourhoods."""

    Config = NodeConfig
    data_kind = "graph"
    model_families = ("graph",)
    metrics = ("train_acc", "train_loss", "val_acc", "val_loss", "test_acc", "test_loss")
    keep_best = True
    tie_break = "val_loss"

    @classmethod
    def load_data(cls, recipe: Recipe) -> GraphDataset:
        ds = load_graph_dataset(recipe.data.name, recipe.data.options)
        if ds.task != "node":
            raise ArchlabError(f"data.name: {recipe.data.name!r} is a {ds.task}-level dataset; the node loop needs "
                               "one graph with node labels (cora, citeseer, pubmed, sbm)")
        return ds

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Any) -> dict[str, Any]:
        return data_defaults(recipe, data)

    @classmethod
    def check_fit(cls, recipe: Recipe, data: GraphDataset, model: ArchModel) -> None:
        check_graph_model(recipe, model, "node")

    def __init__(self, recipe: Recipe, model: ArchModel, data: GraphDataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the node loop trains on one graph in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        g = data.graph.to(ctx.device)
        self.graph = g
        x = g.x
        if getattr(model, "accepts_sparse", False):  # bag-of-words features: CSR once, not every step
            x = sparse_features(x)
        self.x = x
        self.masks = {"train": g.train_mask, "val": g.val_mask, "test": g.test_mask}
        tc = recipe.train
        self.sampler = None
        n_train = int(g.train_mask.sum())
        if self.cfg.fanouts:
            from ..graph.sampling import NeighborSampler

            self.sampler = NeighborSampler(g.edge_index, g.num_nodes, self.cfg.fanouts, seed=ctx.seed)
            self.seed_stream = torch.Generator().manual_seed(ctx.seed + 7)
            self.train_nodes = g.train_mask.nonzero().flatten()
            self.per_epoch = max(1, -(-n_train // recipe.data.batch_size))
            self.order = torch.empty(0, dtype=torch.long)
            self.pos = self.per_epoch
        else:
            self.per_epoch = 1
        self.total_steps = tc.steps or max(1, round(tc.epochs * self.per_epoch))
        self.eval_every = tc.eval_every or self.per_epoch
        self.opt = self.trainable("model", self.model)

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
        self.model.train()
        self.opt.zero_grad()
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
        self.opt.backward(loss)
        return {"loss": loss.detach(), "lr": self.opt.step()}

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

    def evaluate(self, split: str) -> dict[str, float]:
        return {k: v for k, v in self._scores().items() if k.startswith(split)}

    def final_metrics(self) -> dict[str, float]:
        return self._scores()

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"model": self.opt.state_dict()}
        if self.sampler is not None:
            state["sampling"] = {"gen": self.seed_stream.get_state(), "order": self.order, "pos": self.pos,
                                 "sampler": self.sampler.state_dict()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        if self.sampler is not None and "sampling" in state:
            s = state["sampling"]
            self.seed_stream.set_state(s["gen"])
            self.order, self.pos = s["order"], s["pos"]
            self.sampler.load_state_dict(s["sampler"])
