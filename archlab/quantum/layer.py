"""``QuantumLayer``: a parameterized circuit as a ``torch.nn.Module`` for hybrid classical-quantum models.

    layer = QuantumLayer(n_qubits=2, weight_shapes={"w": (3, 2)}, circuit=my_circuit, observables=["ZI", "IZ"])
    y = layer(x)                       # x: (B, features) -> y: (B, 2) expectation values

``circuit(c, inputs, **weights)`` records gates on a fresh :class:`Circuit`: ``inputs`` is ``x`` transposed,
(features, B), so ``inputs[k]`` is a batch of angles and one batched simulation serves the whole batch;
``weights`` are the layer's trainable parameters (shapes from ``weight_shapes``, drawn uniformly from
[0, 2 pi) as PennyLane's TorchLayer does). The output is one expectation value per observable or, with
``observables=None``, the probabilities of the basis states of ``prob_wires`` (B, 2^k).
Gradients flow to the weights and to ``x`` (so layers before it train too), by ``diff_method``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .circuit import Circuit
from .observables import PauliSum


class QuantumLayer(nn.Module):
    """A circuit with trainable angles: (B, features) -> (B, outputs); see the module docstring."""

    def __init__(self, n_qubits: int, weight_shapes: dict[str, tuple[int, ...]],
                 circuit: Callable[..., object], observables: Sequence[str | PauliSum] | None = None,
                 prob_wires: Sequence[int] | None = None, diff_method: str = "backprop",
                 dtype: torch.dtype = torch.complex128) -> None:
        super().__init__()
        self.n_qubits, self.circuit, self.diff_method, self.dtype = n_qubits, circuit, diff_method, dtype
        self.observables = list(observables) if observables is not None else None
        self.prob_wires = list(prob_wires) if prob_wires is not None else list(range(n_qubits))
        real = dtype.to_real()
        self.weights = nn.ParameterDict({name: nn.Parameter(2 * math.pi * torch.rand(shape, dtype=real))
                                         for name, shape in weight_shapes.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = Circuit(self.n_qubits, dtype=self.dtype, device=x.device)
        self.circuit(c, x.to(self.dtype.to_real()).T, **dict(self.weights.items()))
        if self.observables is None:
            out = c.probs(self.prob_wires)
        else:
            out = torch.stack([c.expval(o, self.diff_method) for o in self.observables], dim=-1)
        # A circuit that ignored its inputs is unbatched: the same row for every example.
        return out if c.batch_size is not None else out.expand(x.shape[0], -1)
