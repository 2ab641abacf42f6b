"""Quantum models: variational circuits built on the simulator in :mod:`archlab.quantum`.

Importing this package registers every model of the ``quantum`` family.
"""

from . import born_machine, hybrid, qaoa_maxcut, reuploading, vqe_h2  # noqa: F401
