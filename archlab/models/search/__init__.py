"""Architecture search models: the DARTS supernet and the networks derived from it, and the
NAS-Bench-Graph macro architecture (``nasbench_graph``, family graph), and the macro-space chain (``macro_chain``)."""

from . import darts, macro_chain, nasbench_graph  # noqa: F401
