"""Data re-uploading classifier (Pérez-Salinas, Cervera-Lierta, Gil-Fuster & Latorre 2020, Quantum 4, 226).

One qubit can be a universal classifier if the data enter the circuit many times: layer l applies, on
every qubit q, a general rotation whose angles are an affine function of the input,

    U_l,q(x) = Rot(phi_lq + w_lq * x~),     x~ = (x_1, x_2, 0)  (the input padded to 3 angles)

followed (with several qubits) by CZ between neighbouring qubits (their Sec. 5.2, "entanglement").
After L layers the class scores are the probabilities of the basis states of the first k = ceil(log2 C)
qubits: ``p(c | x) = |<c|psi(x)>|^2`` -- the fidelity with the class's label state (their Sec. 4, Eq. 9,
with the label states of one qubit |0>, |1>). The logits are ``log p``, so cross-entropy maximizes the
fidelity with the right label state.

Shapes: ``forward(x)``: (B, in_features <= 3) -> (B, num_classes) logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...quantum.circuit import Circuit
from ...quantum.layer import QuantumLayer
from ...registry import register
from ..base import ArchModel


@dataclass
class ReuploadingConfig:
    in_features: int = 2
    """Input features (at most 3: one Rot per layer and qubit takes 3 angles)."""
    num_classes: int = 2
    """Classes (at most 2^qubits)."""
    qubits: int = 1
    """Qubits; with more than one, CZ gates entangle neighbours after every layer."""
    layers: int = 6
    """Times the input is uploaded."""

    def __post_init__(self) -> None:
        if not 1 <= self.in_features <= 3:
            raise ValueError(f"in_features must be in [1, 3], got {self.in_features}")
        if not 1 <= self.qubits <= 12 or not 1 <= self.layers <= 100:
            raise ValueError("need 1 <= qubits <= 12 and 1 <= layers <= 100")
        if not 2 <= self.num_classes <= 2**self.qubits:
            raise ValueError(f"num_classes must be in [2, 2^qubits = {2 ** self.qubits}], got {self.num_classes}")


@register("reuploading_classifier", family="quantum")
class ReuploadingClassifier(ArchModel):
    """Data re-uploading quantum classifier (Pérez-Salinas et al. 2020): Rot(phi + w * x) layers, fidelity readout."""

    config_class = ReuploadingConfig
    export_blocker = ("statevector simulation in complex128 arithmetic: the ONNX exporter does not translate complex "
                      "tensors")

    def __init__(self, config: ReuploadingConfig) -> None:
        super().__init__(config)
        c = config
        readout = list(range(max(1, math.ceil(math.log2(c.num_classes)))))
        self.qnn = QuantumLayer(c.qubits, {"phi": (c.layers, c.qubits, 3), "w": (c.layers, c.qubits, 3)},
                                self.circuit, prob_wires=readout)
        with torch.no_grad():  # scales start near 1 (uniform [0, 2 pi) would scramble the input at once)
            self.qnn.weights["w"].normal_(1.0, 0.5)

    def circuit(self, c: Circuit, inputs: torch.Tensor, phi: torch.Tensor, w: torch.Tensor) -> None:
        """``inputs``: (in_features, B) -> padded to (3, B)."""
        x = F.pad(inputs, (0, 0, 0, 3 - inputs.shape[0]))
        for layer in range(self.config.layers):
            for q in range(c.n_qubits):
                angles = phi[layer, q, :, None] + w[layer, q, :, None] * x  # (3, B)
                c.rot(angles[0], angles[1], angles[2], q)
            for q in range(c.n_qubits - 1):
                c.cz(q, q + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.qnn(x)[:, : self.config.num_classes]
        return torch.log(probs.clamp_min(1e-12)).float()

    @classmethod
    def example_input(cls, config: ReuploadingConfig, batch_size: int = 2) -> torch.Tensor:
        return 2 * torch.rand(batch_size, config.in_features) - 1
