"""Graph datasets: one :class:`GraphDataset` type for node-level (Planetoid, SBM) and graph-level (TU)
tasks, loaded by name with validated options, like the array datasets.

    from archlab.data.graphs import load_graph_dataset
    ds = load_graph_dataset("cora")            # files under data_root()/planetoid
    g = ds.graph                               # Graph: x (2708, 1433), edge_index (2, 10556), masks
    ds.num_features, ds.num_classes            # 1433, 7

Registered here: ``sbm`` (generated). Planetoid (``cora``, ``citeseer``, ``pubmed``) and TU
(``mutag``, ``proteins``) register from their own modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import config as _config
from ..errors import ArchlabError
from ..graph import Graph
from ..graph.generators import stochastic_block_model
from .download import data_root
from .registry import get_entry, register_dataset


@dataclass
class GraphDataset:
    """A graph dataset in memory.

    ``graphs``: one graph with node masks for node-level tasks (Planetoid, SBM), many small graphs
    with graph labels ``y`` of shape (1,) each for graph classification (TU).
    """

    name: str
    graphs: list[Graph]
    num_classes: int
    num_features: int
    task: str = "node"
    """``node`` (node classification on ``graphs[0]``) or ``graph`` (graph classification)."""
    info: dict = field(default_factory=dict)
    num_edge_features: int = 0
    """Size of ``edge_attr`` (0: the graphs have no edge features)."""

    @property
    def graph(self) -> Graph:
        return self.graphs[0]


_CACHE: dict[tuple, GraphDataset] = {}


def _copy(ds: GraphDataset) -> GraphDataset:
    def clone(g: Graph) -> Graph:
        return g.replace(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(g).items()})
    return GraphDataset(ds.name, [clone(g) for g in ds.graphs], ds.num_classes, ds.num_features, ds.task,
                        dict(ds.info), ds.num_edge_features)


def load_graph_dataset(name: str, options: dict | None = None) -> GraphDataset:
    """Load graph dataset ``name`` with its ``options`` (validated); returns fresh copies each call."""
    entry = get_entry(name)
    if entry.kind != "graph":
        names = ", ".join(graph_dataset_names())
        raise ArchlabError(f"dataset {name!r} is not a graph dataset; graph datasets: {names}")
    cfg = _config.build(entry.config_class, options or {}, "data.options")
    key = (name, str(data_root()), cfg)
    if key not in _CACHE:
        _CACHE[key] = entry.loader(cfg)
    return _copy(_CACHE[key])


def graph_dataset_names() -> list[str]:
    from .registry import DATASETS

    return [e.name for e in DATASETS.entries("graph")]


def row_normalize(x: torch.Tensor) -> torch.Tensor:
    """Divide each row by its sum (rows summing to 0 stay 0), as Kipf & Welling preprocess features."""
    s = x.sum(1, keepdim=True)
    return x / torch.where(s == 0, torch.ones_like(s), s)


@dataclass(frozen=True)
class SBMConfig:
    """A stochastic block model with class-informative noisy features, split like Planetoid."""

    num_nodes: int = 1000
    num_classes: int = 4
    p_in: float = 0.02
    p_out: float = 0.002
    num_features: int = 32
    feature_noise: float = 1.0
    """Std of the Gaussian noise added to the class's mean feature vector."""
    train_per_class: int = 20
    num_val: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.num_nodes < self.num_classes * (self.train_per_class + 1):
            raise ValueError("need num_classes >= 2 and enough nodes for train_per_class per class")
        if not (0 <= self.p_out <= 1 and 0 <= self.p_in <= 1):
            raise ValueError("p_in and p_out must be probabilities")


def planetoid_style_masks(y: torch.Tensor, num_classes: int, train_per_class: int, num_val: int,
                          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``train_per_class`` random training nodes per class, ``num_val`` validation nodes, the rest test."""
    n = len(y)
    perm = torch.randperm(n, generator=gen)
    train = torch.zeros(n, dtype=torch.bool)
    for c in range(num_classes):
        members = perm[y[perm] == c]
        train[members[:train_per_class]] = True
    rest = perm[~train[perm]]
    val = torch.zeros(n, dtype=torch.bool)
    val[rest[:num_val]] = True
    test = ~(train | val)
    return train, val, test


@register_dataset("sbm", SBMConfig, num_classes=0, kind="graph")
def _load_sbm(cfg: SBMConfig) -> GraphDataset:
    sizes = [cfg.num_nodes // cfg.num_classes + (1 if i < cfg.num_nodes % cfg.num_classes else 0)
             for i in range(cfg.num_classes)]
    edge_index, y = stochastic_block_model(sizes, cfg.p_in, cfg.p_out, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    means = torch.randn(cfg.num_classes, cfg.num_features, generator=gen)
    x = means[y] + cfg.feature_noise * torch.randn(cfg.num_nodes, cfg.num_features, generator=gen)
    train, val, test = planetoid_style_masks(y, cfg.num_classes, cfg.train_per_class, cfg.num_val, gen)
    g = Graph(x=x, edge_index=edge_index, y=y, train_mask=train, val_mask=val, test_mask=test)
    return GraphDataset("sbm", [g], cfg.num_classes, cfg.num_features)


@dataclass(frozen=True)
class GraphSBMConfig:
    """Many small random graphs; the class of a graph is its density: class ``c`` has expected degree
    ``2 (c + 1)``. Node features are one-hot degrees (capped), as GIN uses for featureless graphs."""

    num_graphs: int = 200
    num_classes: int = 2
    min_nodes: int = 10
    max_nodes: int = 20
    max_degree: int = 10
    """Degrees above this share the last one-hot slot."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_graphs < 2 * self.num_classes or self.num_classes < 2:
            raise ValueError("need num_classes >= 2 and at least two graphs per class")
        if not 4 <= self.min_nodes <= self.max_nodes:
            raise ValueError("need 4 <= min_nodes <= max_nodes")


@register_dataset("graph_sbm", GraphSBMConfig, num_classes=0, kind="graph")
def _load_graph_sbm(cfg: GraphSBMConfig) -> GraphDataset:
    gen = torch.Generator().manual_seed(cfg.seed)
    graphs = []
    for i in range(cfg.num_graphs):
        c = i % cfg.num_classes
        n = int(torch.randint(cfg.min_nodes, cfg.max_nodes + 1, (1,), generator=gen))
        p = min(1.0, 2.0 * (c + 1) / (n - 1))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        edge_index, _ = stochastic_block_model([n], p, 0.0, seed=seed)
        deg = torch.bincount(edge_index[1], minlength=n).clamp(max=cfg.max_degree)
        x = torch.nn.functional.one_hot(deg, cfg.max_degree + 1).float()
        graphs.append(Graph(x=x, edge_index=edge_index, y=torch.tensor([c])))
    return GraphDataset("graph_sbm", graphs, cfg.num_classes, cfg.max_degree + 1, task="graph")
