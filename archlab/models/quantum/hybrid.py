"""A hybrid classical-quantum classifier: linear encoder -> variational circuit -> linear readout.

    z = pi * tanh(W_in x + b_in)                  (B, qubits): one angle per qubit
    |psi(z)> = HEA(theta) RY(z) |0...0>           angle encoding, then ``layers`` of RY RZ + CNOT ladder
    h_q = <psi| Z_q |psi>                         (B, qubits) in [-1, 1]
    logits = W_out h + b_out                      (B, num_classes)

The linear encoder plays the role of the PCA often used to fit images into a few qubits (Mari et al. 2020,
"Transfer learning in hybrid classical-quantum neural networks", use a pre-trained network for it); here it is
trained together with the circuit. The circuit is a :class:`~archlab.quantum.layer.QuantumLayer`, so the gradient
reaches the encoder through the quantum layer.

Shapes: ``forward(x)``: (B, ...) flattened to (B, in_features) -> (B, num_classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...quantum.ansatz import hardware_efficient
from ...quantum.circuit import Circuit
from ...quantum.layer import QuantumLayer
from ...registry import register
from ..base import ArchModel


@dataclass
class HybridConfig:
    in_features: int = 64
    """Input features after flattening (digits: 8 x 8 = 64)."""
    num_classes: int = 10
    qubits: int = 4
    """Qubits = angles the encoder makes."""
    layers: int = 3
    """Hardware-efficient layers after the encoding."""

    def __post_init__(self) -> None:
        if not 1 <= self.in_features <= 1 << 20 or not 2 <= self.num_classes <= 10_000:
            raise ValueError("need 1 <= in_features <= 2^20 and 2 <= num_classes <= 10000")
        if not 1 <= self.qubits <= 16 or not 1 <= self.layers <= 100:
            raise ValueError("need 1 <= qubits <= 16 and 1 <= layers <= 100")


@register("hybrid_qnn", family="quantum")
class HybridQNN(ArchModel):
    """Hybrid classifier: linear encoder to one angle per qubit, a hardware-efficient circuit, linear readout."""

    config_class = HybridConfig
    export_blocker = ("statevector simulation in complex128 arithmetic: the ONNX exporter does not translate complex "
                      "tensors")

    def __init__(self, config: HybridConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = nn.Linear(c.in_features, c.qubits)
        observables = ["I" * q + "Z" + "I" * (c.qubits - q - 1) for q in range(c.qubits)]
        self.qnn = QuantumLayer(c.qubits, {"theta": (c.layers, c.qubits, 2)}, self.circuit, observables)
        self.readout = nn.Linear(c.qubits, c.num_classes)

    @staticmethod
    def circuit(c: Circuit, inputs: torch.Tensor, theta: torch.Tensor) -> None:
        for q in range(c.n_qubits):
            c.ry(inputs[q], q)
        hardware_efficient(c, theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = math.pi * torch.tanh(self.encoder(x.flatten(1)))
        return self.readout(self.qnn(z).float())

    @classmethod
    def example_input(cls, config: HybridConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, config.in_features)
