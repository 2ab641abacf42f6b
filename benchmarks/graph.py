"""Factories for ``archlab bench graph`` and ``archlab bench graph_scaling``: full-batch node-classification
epochs (forward + backward + Adam step) of archlab's GCN / GAT / GraphSAGE versus PyG's GCNConv / GATConv /
SAGEConv with the same architecture, hyperparameters and input tensors.

archlab runs through its own node loop (what ``archlab train`` executes) in ``ours``, and in ``plain`` as a user
would call it: ``archlab.create(...)(x, edge_index)`` with the dense feature matrix, in the same training loop as
the PyG side, which is the loop of PyG's examples (``gcn.py``, ``gat.py``), written out here. Each factory
returns a callable that runs ``epochs`` epochs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

import archlab
from archlab import recipe
from archlab.data.graphs import GraphDataset, load_graph_dataset
from archlab.engine.device import Precision
from archlab.engine.distributed import DistInfo
from archlab.engine.loop import Context
from archlab.train.node import NodeClassification

# Architectures as in the papers' Cora setups (and PyG's examples): name -> (archlab config, optimizer).
ARCHS = {
    "gcn": ({"hidden_channels": 16, "dropout": 0.5}, {"lr": 0.01, "weight_decay": 5e-4}),
    "gat": ({"hidden_channels": 8, "heads": 8, "out_heads": 1, "dropout": 0.6, "attn_dropout": 0.6},
            {"lr": 0.005, "weight_decay": 5e-4}),
    "sage": ({"hidden_channels": 16, "dropout": 0.5, "aggr": "mean"}, {"lr": 0.01, "weight_decay": 5e-4}),
}


def _dataset(dataset: str, num_edges: int | None) -> GraphDataset:
    if dataset == "sbm":
        from archlab.data.graphs import GraphDataset as GD
        from archlab.graph import Graph
        from archlab.graph.generators import sbm_for_edges

        edge_index, y = sbm_for_edges(int(num_edges), num_blocks=4, avg_degree=10.0, seed=0)
        n = len(y)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, 64, generator=gen) + F.one_hot(y, 64).float()
        train = torch.zeros(n, dtype=torch.bool)
        train[torch.randperm(n, generator=gen)[: n // 10]] = True
        g = Graph(x=x, edge_index=edge_index, y=y, train_mask=train, val_mask=~train, test_mask=~train)
        return GD("sbm", [g], 4, 64)
    return load_graph_dataset(dataset)


def ours(model: str, epochs: int, dataset: str = "cora", num_edges: int | None = None,
         threads: int = 2) -> Callable[[], None]:
    torch.set_num_threads(threads)
    cfg, opt = ARCHS[model]
    data = _dataset(dataset, num_edges)
    rec = recipe.from_dict({"name": f"bench-{model}", "model": {"name": model, **cfg},
                            "data": {"name": "sbm"}, "optim": {"name": "adam", **opt},
                            "train": {"loop": "node", "epochs": epochs, "eval_every": 10**9}})
    net = archlab.create(model, in_channels=data.num_features, out_channels=data.num_classes, **cfg)
    cpu = torch.device("cpu")
    loop = NodeClassification(rec, net, data, Context(cpu, Precision("fp32", cpu), DistInfo(), seed=0))

    def run() -> None:
        for step in range(epochs):
            loop.train_step(step)["loss"].item()

    return run


def plain(model: str, epochs: int, dataset: str = "cora", num_edges: int | None = None,
          threads: int = 2) -> Callable[[], None]:
    """archlab's model through the plain API: created with ``archlab.create`` and called on the dataset's dense
    ``x`` every epoch (no node loop to prepare sparse features), in the training loop of :func:`peer`."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg, opt = ARCHS[model]
    data = _dataset(dataset, num_edges)
    net = archlab.create(model, in_channels=data.num_features, out_channels=data.num_classes, **cfg)
    return _epochs(net, opt, data, epochs)


def _epochs(net: torch.nn.Module, opt: dict[str, float], data: GraphDataset, epochs: int) -> Callable[[], None]:
    """The training loop of PyG's examples: full-batch forward, cross-entropy on the training nodes, Adam."""
    optimizer = torch.optim.Adam(net.parameters(), lr=opt["lr"], weight_decay=opt["weight_decay"])
    g = data.graph
    x, edge_index, y, mask = g.x, g.edge_index, g.y, g.train_mask

    def run() -> None:
        net.train()
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x, edge_index)[mask], y[mask])
            loss.backward()
            optimizer.step()
            loss.item()

    return run


def peer(model: str, epochs: int, dataset: str = "cora", num_edges: int | None = None,
         threads: int = 2) -> Callable[[], None]:
    from torch_geometric.nn import GATConv, GCNConv, SAGEConv

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg, opt = ARCHS[model]
    data = _dataset(dataset, num_edges)
    fin, classes = data.num_features, data.num_classes

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if model == "gcn":
                self.c1, self.c2 = GCNConv(fin, 16, cached=True), GCNConv(16, classes, cached=True)
            elif model == "gat":
                self.c1 = GATConv(fin, 8, heads=8, dropout=0.6)
                self.c2 = GATConv(64, classes, heads=1, concat=False, dropout=0.6)
            else:
                self.c1, self.c2 = SAGEConv(fin, 16, aggr="mean"), SAGEConv(16, classes, aggr="mean")
            self.p = cfg["dropout"]
            self.act = F.elu if model == "gat" else F.relu

        def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
            x = F.dropout(x, self.p, self.training)
            x = self.act(self.c1(x, edge_index))
            x = F.dropout(x, self.p, self.training)
            return self.c2(x, edge_index)

    return _epochs(Net(), opt, data, epochs)
