"""The graph container every graph model, loader and loop in archlab shares.

Conventions (the same everywhere in :mod:`archlab.graph` and :mod:`archlab.models.graph`):

* ``edge_index`` is a ``(2, E)`` int64 tensor; column ``k`` is a directed edge ``j -> i`` with
  ``edge_index[0, k] = j`` (source) and ``edge_index[1, k] = i`` (target). Messages flow from
  source to target, so node ``i`` aggregates over ``{j : (j, i) in E}``. An undirected graph
  stores both directions.
* Node tensors have the node count as their first dimension; edge tensors have ``E`` first.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Graph:
    """One graph (or a batch of graphs merged block-diagonally; see :func:`batch_graphs`).

    Shapes:
        x: (N, F) node features (float; may be a sparse CSR tensor for bag-of-words features)
        edge_index: (2, E) int64, source row 0, target row 1
        y: (N,) node labels, or (num_graphs,) graph labels, or None
        edge_attr: (E, D) edge features or None
        edge_type: (E,) int64 relation ids (heterogeneous graphs) or None
        edge_time: (E,) float timestamps (temporal graphs) or None
        train_mask / val_mask / test_mask: (N,) bool or None
        batch: (N,) int64 graph id of each node (batched graphs) or None
    """

    x: Tensor
    edge_index: Tensor
    y: Tensor | None = None
    edge_attr: Tensor | None = None
    edge_type: Tensor | None = None
    edge_time: Tensor | None = None
    train_mask: Tensor | None = None
    val_mask: Tensor | None = None
    test_mask: Tensor | None = None
    batch: Tensor | None = None
    num_graphs: int = 1

    def __post_init__(self) -> None:
        if self.edge_index.dim() != 2 or self.edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(self.edge_index.shape)}")
        if self.edge_index.dtype != torch.long:
            raise ValueError(f"edge_index must be int64, got {self.edge_index.dtype}")

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def num_features(self) -> int:
        return self.x.shape[1]

    def to(self, device: torch.device | str) -> Graph:
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, Tensor):
                moved[k] = v.to(device)
        return Graph(**moved)

    def replace(self, **changes) -> Graph:
        return replace(self, **changes)


def batch_graphs(graphs: list[Graph]) -> Graph:
    """Merge small graphs into one block-diagonal graph plus a ``batch`` vector.

    Node indices of graph ``g`` are shifted by the number of nodes before it, so no edge crosses
    graphs. Graph-level ``y`` (one label per graph) is concatenated; per-node ``y`` likewise.
    Optional fields must be present in every graph or in none. Masks are dropped.
    """
    if not graphs:
        raise ValueError("batch_graphs needs at least one graph")
    offsets = torch.tensor([0] + [g.num_nodes for g in graphs[:-1]]).cumsum(0)
    x = torch.cat([g.x for g in graphs])
    edge_index = torch.cat([g.edge_index + off for g, off in zip(graphs, offsets.tolist(), strict=True)], dim=1)
    batch = torch.cat([torch.full((g.num_nodes,), i, dtype=torch.long) for i, g in enumerate(graphs)])

    def cat(name: str) -> Tensor | None:
        values = [getattr(g, name) for g in graphs]
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):
            raise ValueError(f"batch_graphs: {name} is set on some graphs but not on others")
        return torch.cat([v.reshape(1) if v.dim() == 0 else v for v in values])

    return Graph(x=x, edge_index=edge_index, y=cat("y"), edge_attr=cat("edge_attr"), edge_type=cat("edge_type"),
                 edge_time=cat("edge_time"), batch=batch, num_graphs=len(graphs))
