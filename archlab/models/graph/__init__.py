"""Graph neural networks. Importing this package registers every model of the ``graph`` family."""

from . import cheb, gae, gat, gcn, gin, graph_transformer, hypergraph, mpnn, rgcn, sage, structure_learning, tgn  # noqa: F401
