"""What every graph model shares: the call convention and a random example graph for contract tests.

Call convention: ``model(x, edge_index, **optional) -> Tensor`` where ``x`` is ``(N, in_channels)``
node features and ``edge_index`` is ``(2, E)`` (see :mod:`archlab.graph.structure`). Node models
return ``(N, out_channels)``; graph-level models take ``batch=`` and return ``(num_graphs, out_channels)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ...graph import SPARSE_FEATURES_BELOW, sparse_features, to_undirected
from ...graph.cache import AdjacencyCache
from ..base import ArchModel


def random_graph(num_nodes: int, num_features: int, num_edges: int | None = None, seed: int = 0,
                 undirected: bool = True) -> tuple[Tensor, Tensor]:
    """A small random graph (no self loops): ``(x (N, F), edge_index (2, E))``; deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    num_edges = num_edges if num_edges is not None else 2 * num_nodes
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = (src + torch.randint(1, num_nodes, (num_edges,), generator=gen)) % num_nodes
    edge_index = torch.stack([src, dst])
    if undirected:
        edge_index = to_undirected(edge_index, num_nodes)
    return torch.randn(num_nodes, num_features, generator=gen), edge_index


class GraphModel(ArchModel):
    """Base of graph models. ``accepts_sparse``: the first layer takes a sparse CSR ``x`` (the node loop
    then keeps bag-of-words features sparse); otherwise loops densify ``x`` first.

    ``data_fields`` maps config fields to what a dataset provides (``num_features``, ``num_classes``):
    loops fill them in from the data unless the recipe sets them, so one recipe runs on Cora, Citeseer
    and Pubmed unchanged.
    """

    accepts_sparse: ClassVar[bool] = False
    export_blocker: ClassVar[str | None] = ("message passing sizes its sparse adjacency (or the number of graphs) "
                                            "from the values of edge_index / batch: data-dependent shapes "
                                            "torch.export cannot capture")
    data_fields: ClassVar[dict[str, str]] = {"in_channels": "num_features", "out_channels": "num_classes"}
    sparse_features_below: float = SPARSE_FEATURES_BELOW
    """:meth:`input_features` converts dense ``x`` with fewer non-zeros than this fraction; 0 turns it off."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._input_cache = AdjacencyCache()

    def input_features(self, x: Tensor) -> Tensor:
        """``x`` as the first layer should read it: sparse CSR when ``x`` is a dense, mostly-zero float
        matrix (see :func:`archlab.graph.sparse_features`), else ``x`` unchanged.

        Models with ``accepts_sparse`` call this first, so ``model(data.x, edge_index)`` with the dense
        bag-of-words matrix is as fast as the node loop (which passes CSR features itself). The conversion
        (a count of the non-zeros, then the CSR copy) is cached per ``x`` tensor like the adjacency is per
        ``edge_index``: a training loop that passes the same ``x`` every step converts it once.
        """
        if x.layout != torch.strided or x.requires_grad or self.sparse_features_below <= 0:
            return x
        return self._input_cache.get(x, x.shape[0], lambda: sparse_features(x, self.sparse_features_below))

    @classmethod
    def example_input(cls, config: Any, batch_size: int = 2) -> tuple[Tensor, ...]:
        """A random undirected graph with ``4 * batch_size`` nodes: ``(x, edge_index)``."""
        return random_graph(4 * batch_size, config.in_channels)
