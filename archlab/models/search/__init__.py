"""Architecture search models: the DARTS supernet and the networks derived from it, and the
NAS-Bench-Graph macro architecture (``nasbench_graph``, family graph; in ``archlab/search/``)."""

from ...search import nasbench_model  # noqa: F401
from . import darts  # noqa: F401
