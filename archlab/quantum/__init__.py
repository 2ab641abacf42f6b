"""Quantum machine learning: a small differentiable statevector simulator in PyTorch and the algorithms on top.

``Circuit`` (circuit.py) records gates and simulates them; ``PauliSum`` (observables.py) is a weighted sum of
Pauli strings; gradients come from backprop, the parameter-shift rule or the adjoint method (gradients.py).
Nothing here imports the engine: the registered models live in ``archlab.models.quantum`` and the training
loops in ``archlab.train``.
"""

from .circuit import DIFF_METHODS, Circuit
from .observables import PauliSum

__all__ = ["DIFF_METHODS", "Circuit", "PauliSum"]
