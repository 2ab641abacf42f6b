"""Quantum machine learning: a small differentiable statevector simulator in PyTorch and the algorithms on top.

``Circuit`` (circuit.py) records gates and simulates them; ``PauliSum`` (observables.py) is a weighted sum of
Pauli strings; gradients come from backprop, the parameter-shift rule or the adjoint method (gradients.py);
``DensityCircuit`` (density.py) adds noise channels; ``QuantumLayer`` (layer.py) is a circuit as an ``nn.Module``.
Nothing here imports the engine: the registered models live in ``archlab.models.quantum`` and the training
loops in ``archlab.train``. A guide: docs/quantum.md.
"""

from .circuit import DIFF_METHODS, Circuit
from .density import DensityCircuit
from .layer import QuantumLayer
from .observables import PauliSum

__all__ = ["DIFF_METHODS", "Circuit", "DensityCircuit", "PauliSum", "QuantumLayer"]
