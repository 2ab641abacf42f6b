"""Link prediction on one graph (GAE / VGAE on Cora, Citeseer, Pubmed, SBM): hide edges, rank them.

Split (Kipf & Welling 2016, the ``mask_test_edges`` of their code): the undirected edges, each
counted once, are shuffled by ``data.split_seed``; ``floor(loop.test_fraction * E)`` become test
positives, ``floor(data.val_fraction * E)`` validation positives (the paper: 10 % and 5 %) and the rest
the training graph. As many random node pairs that are *not* edges of the full graph are drawn as
validation and test negatives. The split depends on ``split_seed`` only, so every training seed
sees the same edges.

One step = one epoch, full batch, on the training graph A (both directions, no self loops, E
nonzeros) with targets A + I over all N² pairs, as the authors' code computes it:

    Z      = f(X, A)
    L_rec  = norm · mean_ij [ w·y_ij·(-log σ(z_i·z_j)) + (1 - y_ij)·(-log(1 - σ(z_i·z_j))) ],   y = A + I
             w = (N² - E) / E,   norm = N² / (2 (N² - E))
    L      = L_rec + KL / N                        (VGAE: KL = mean over nodes, see archlab.models.graph.gae)

Evaluation scores σ(z_i·z_j) with z = μ for the held-out positives and negatives: ``{split}_auc``,
``{split}_ap``. The run's final metrics are those of the last epoch, as the paper reports them;
validation is logged during training (``train.eval_every``, default every epoch).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.graphs import GraphDataset, load_graph_dataset
from ..engine.loop import Context, Loop, register_loop
from ..errors import ArchlabError
from ..graph import remove_self_loops, sparse_features
from ..graph.metrics import average_precision, roc_auc
from ..models.base import ArchModel
from .node import check_graph_model, data_defaults

if TYPE_CHECKING:
    from ..recipe import Recipe

METRICS = ("val_auc", "val_ap", "test_auc", "test_ap")


@dataclass
class EdgeSplit:
    """Undirected node pairs ``(i, j)`` with ``i < j``, each of shape (2, P).

    ``train`` are the edges the model sees; ``val_pos`` / ``test_pos`` the held-out edges;
    ``val_neg`` / ``test_neg`` pairs that are edges nowhere in the graph.
    """

    train: Tensor
    val_pos: Tensor
    val_neg: Tensor
    test_pos: Tensor
    test_neg: Tensor


def _pair_keys(pairs: Tensor, num_nodes: int) -> Tensor:
    return pairs[0] * num_nodes + pairs[1]


def undirected_pairs(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Each undirected edge once as ``(min, max)``, sorted, self loops dropped. Shape (2, P)."""
    edge_index, _ = remove_self_loops(edge_index)
    lo, hi = edge_index.min(0).values, edge_index.max(0).values
    keys = torch.unique(lo * num_nodes + hi)
    return torch.stack([keys // num_nodes, keys % num_nodes])


def sample_non_edges(count: int, num_nodes: int, forbidden: Tensor, gen: torch.Generator) -> Tensor:
    """``count`` distinct uniform random pairs ``(i < j)`` whose keys ``i·N + j`` are not in ``forbidden``.

    Rejection sampling in vectorized rounds; candidates keep their draw order, so the result is a
    deterministic function of the generator state.
    """
    if count > num_nodes * (num_nodes - 1) // 2 - len(forbidden):
        raise ArchlabError(f"the graph has fewer than {count} non-adjacent node pairs to use as negatives")
    found = torch.empty(0, dtype=torch.long)
    while len(found) < count:
        draw = torch.randint(0, num_nodes, (2, 2 * (count - len(found)) + 16), generator=gen)
        draw = draw[:, draw[0] != draw[1]]
        keys = _pair_keys(torch.stack([draw.min(0).values, draw.max(0).values]), num_nodes)
        keys = torch.cat([found, keys[~torch.isin(keys, forbidden)]])
        # Drop repeats but keep the first occurrence of each key in draw order.
        uniq, inverse = torch.unique(keys, return_inverse=True)
        first = torch.full((len(uniq),), len(keys), dtype=torch.long).scatter_reduce_(
            0, inverse, torch.arange(len(keys)), "amin")
        found = keys[first.sort().values][:count]
    return torch.stack([found // num_nodes, found % num_nodes])


def split_edges(edge_index: Tensor, num_nodes: int, val_fraction: float = 0.05, test_fraction: float = 0.10,
                seed: int = 0) -> EdgeSplit:
    """Hold out edges for link prediction as ``mask_test_edges`` of Kipf & Welling's code does.

    Test negatives are drawn first, then validation negatives; both avoid every edge of the graph
    and each other (the original code lets validation negatives hit test edges; here they cannot).
    """
    pairs = undirected_pairs(edge_index.cpu(), num_nodes)
    e = pairs.shape[1]
    # floor as in the paper's code; the epsilon keeps e.g. 0.1 * 5270 from rounding down to 526.
    num_test, num_val = math.floor(test_fraction * e + 1e-9), math.floor(val_fraction * e + 1e-9)
    if num_test + num_val >= e:
        raise ArchlabError(f"data.val_fraction + data.test_fraction leave no training edges ({e} edges)")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(e, generator=gen)
    val_idx, test_idx = perm[:num_val], perm[num_val:num_val + num_test]
    train_idx = perm[num_val + num_test:].sort().values
    forbidden = _pair_keys(pairs, num_nodes)
    test_neg = sample_non_edges(num_test, num_nodes, forbidden, gen)
    val_neg = sample_non_edges(num_val, num_nodes, torch.cat([forbidden, _pair_keys(test_neg, num_nodes)]), gen)
    return EdgeSplit(train=pairs[:, train_idx], val_pos=pairs[:, val_idx], val_neg=val_neg,
                     test_pos=pairs[:, test_idx], test_neg=test_neg)


def reconstruction_loss(z: Tensor, targets: Tensor, num_edges: int) -> Tensor:
    """Kipf & Welling's weighted BCE over all N² inner products (see the module docstring).

    ``targets``: (2, P) the positions of the ones of A + I; ``num_edges``: E, the nonzeros of A. The sum
    over all pairs is split as ``sum_all softplus(x) + sum_targets (w·softplus(-x) - softplus(x))``, so
    no dense target matrix is built.

    Shapes:
        z: (N, D) -> scalar
    """
    n2 = z.shape[0] ** 2
    pos_weight = (n2 - num_edges) / num_edges
    norm = n2 / (2.0 * (n2 - num_edges))
    logits = z @ z.T
    x_pos = logits[targets[0], targets[1]]
    total = F.softplus(logits).sum() + (pos_weight * F.softplus(-x_pos) - F.softplus(x_pos)).sum()
    return norm * total / n2


@dataclass
class SplitConfig:
    """``[loop]`` of the link and temporal loops: how much is held out for testing."""

    test_fraction: float = 0.1
    """Share of the edges (events) held out for testing; ``data.val_fraction`` more validate."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")


@register_loop("link")
class LinkPrediction(Loop):
    """Link prediction with graph auto-encoders (GAE, VGAE); one step = one full-batch epoch."""

    Config = SplitConfig
    data_kind = "graph"
    model_families = ("graph",)
    metrics = METRICS
    monitor = ("val_auc", "max")

    @classmethod
    def load_data(cls, recipe: Recipe) -> GraphDataset:
        ds = load_graph_dataset(recipe.data.name, recipe.data.options)
        if ds.task != "node":
            raise ArchlabError(f"data.name: {recipe.data.name!r} is a {ds.task}-level dataset; the link loop needs "
                               "one graph (cora, citeseer, pubmed, sbm)")
        return ds

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Any) -> dict[str, Any]:
        return data_defaults(recipe, data)

    @classmethod
    def check_fit(cls, recipe: Recipe, data: GraphDataset, model: ArchModel) -> None:
        check_graph_model(recipe, model, "link")

    def __init__(self, recipe: Recipe, model: ArchModel, data: GraphDataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the link loop trains on one graph in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        tc, dc = recipe.train, recipe.data
        g = data.graph
        self.num_nodes = g.num_nodes
        x = g.x.to(ctx.device)
        if getattr(model, "accepts_sparse", False):  # bag-of-words features: CSR once, not every step
            x = sparse_features(x)
        self.x = x
        self._use_split(split_edges(g.edge_index, g.num_nodes, dc.val_fraction, self.cfg.test_fraction,
                                    dc.split_seed))
        self.total_steps = tc.steps or max(1, round(tc.epochs))
        self.eval_every = tc.eval_every or 1
        self.opt = self.trainable("model", self.model)

    def _use_split(self, split: EdgeSplit) -> None:
        dev, n = self.ctx.device, self.num_nodes
        self.split = split
        train = split.train.to(dev)
        self.edge_index = torch.cat([train, train.flip(0)], dim=1)  # the encoder's graph: both directions
        loops = torch.arange(n, device=dev).repeat(2, 1)
        self.targets = torch.cat([self.edge_index, loops], dim=1)  # ones of A + I
        self.pairs = {s: (getattr(split, f"{s}_pos").to(dev), getattr(split, f"{s}_neg").to(dev))
                      for s in ("val", "test")}

    # ----------------------------------------------------------------------------- training
    def train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        self.opt.zero_grad()
        with self.ctx.precision.autocast():
            z = self.model(self.x, self.edge_index)
        # The N² inner products and their log-sigmoids stay in fp32 whatever the encoder ran in.
        recon = reconstruction_loss(z.float(), self.targets, self.edge_index.shape[1])
        out: dict[str, Any] = {"recon": recon.detach()}
        loss = recon
        kl_loss = getattr(self.model, "kl_loss", None)
        if kl_loss is not None:
            kl = kl_loss()
            loss = loss + kl / self.num_nodes
            out["kl"] = kl.detach()
        self.opt.backward(loss)
        out["lr"] = self.opt.step()
        return {"loss": loss.detach(), **out}

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _scores(self, splits: tuple[str, ...]) -> dict[str, float]:
        self.model.eval()
        with self.ctx.precision.autocast():
            z = self.model(self.x, self.edge_index).float()
        out: dict[str, float] = {}
        for s in splits:
            pos, neg = self.pairs[s]
            if pos.shape[1] == 0:
                continue
            # Logits rank like σ(z_i·z_j) but never tie from saturating in floating point.
            scores = torch.cat([(z[pos[0]] * z[pos[1]]).sum(-1), (z[neg[0]] * z[neg[1]]).sum(-1)]).cpu()
            labels = torch.cat([torch.ones(pos.shape[1]), torch.zeros(neg.shape[1])])
            out[f"{s}_auc"] = roc_auc(scores, labels)
            out[f"{s}_ap"] = average_precision(scores, labels)
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        return self._scores((split,))

    def final_metrics(self) -> dict[str, float]:
        return self._scores(("val", "test"))

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "split": asdict(self.split)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self._use_split(EdgeSplit(**state["split"]))
