"""Architecture search models: the DARTS supernet and the networks derived from it, and the
NAS-Bench-Graph macro architecture (``nasbench_graph``, family graph)."""

from . import darts, nasbench_graph  # noqa: F401
