"""Graph data structures and operations shared by graph models, datasets and loops (pure PyTorch).

    from archlab.graph import Graph, gcn_norm, to_csr, batch_graphs
    g = Graph(x=torch.randn(4, 8), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]))
"""

from .message_passing import MessagePassing
from .ops import (
    SPARSE_FEATURES_BELOW,
    SparseAdj,
    add_self_loops,
    coalesce,
    degree,
    dropout,
    gcn_norm,
    is_undirected,
    laplacian_eigenvectors,
    linear,
    random_walk_pe,
    remove_self_loops,
    scatter,
    segment_softmax,
    sparse_dropout,
    sparse_features,
    spmm,
    to_csr,
    to_dense_adj,
    to_undirected,
)
from .readout import Set2Set, global_pool
from .structure import Graph, batch_graphs

__all__ = [
    "SPARSE_FEATURES_BELOW", "SparseAdj", "Graph", "MessagePassing", "Set2Set", "global_pool", "add_self_loops",
    "batch_graphs", "coalesce", "degree", "dropout", "gcn_norm", "is_undirected", "laplacian_eigenvectors", "linear",
    "random_walk_pe", "remove_self_loops", "scatter", "segment_softmax", "sparse_dropout", "sparse_features", "spmm",
    "to_csr", "to_dense_adj", "to_undirected",
]
