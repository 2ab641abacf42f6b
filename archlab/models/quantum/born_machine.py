"""Quantum circuit Born machine (Benedetti et al. 2019, "A generative modeling approach for benchmarking and
training shallow quantum circuits", npj Quantum Inf. 5, 45) learning the bars-and-stripes distribution.

A parameterized circuit defines a distribution over bit strings by the Born rule, ``q(x) = |<x|psi(theta)>|^2``,
from which a quantum computer samples directly. Here the circuit is the hardware-efficient ansatz (``layers`` of
RY RZ on every qubit and a CNOT ladder) on ``rows * cols`` qubits, and the target is the uniform distribution
over the bars-and-stripes images of that size (every image whose rows are all constant, or whose columns are;
3 x 3: 2^3 + 2^3 - 2 = 14 images of 512 bit strings), the benchmark of Benedetti et al. (Sec. "Results").
Training minimizes ``KL(p || q) = sum_x p(x) log(p(x) / q(x))`` on the exact probabilities the simulator gives.

Shapes: ``forward(index)`` (B,) long basis-state indices -> (B,) probabilities q(x); ``probabilities()`` -> (2^n,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...quantum.ansatz import hardware_efficient, hardware_efficient_shape
from ...quantum.circuit import Circuit
from ...registry import register
from ..base import ArchModel


def bars_and_stripes(rows: int, cols: int) -> torch.Tensor:
    """Indices (wire 0 = top-left pixel, row-major, most significant) of the bars-and-stripes images, sorted."""
    images = set()
    for mask in range(2**rows):  # stripes: every row constant
        images.add(tuple((mask >> (rows - 1 - r)) & 1 for r in range(rows) for _ in range(cols)))
    for mask in range(2**cols):  # bars: every column constant
        images.add(tuple((mask >> (cols - 1 - c)) & 1 for _ in range(rows) for c in range(cols)))
    return torch.tensor(sorted(int("".join(map(str, img)), 2) for img in images))


@dataclass
class BornMachineConfig:
    rows: int = 3
    """Image rows."""
    cols: int = 3
    """Image columns (qubits = rows * cols)."""
    layers: int = 6
    """Hardware-efficient layers."""
    init_std: float = 0.5
    """Standard deviation of the initial angles."""

    def __post_init__(self) -> None:
        if not 1 <= self.rows <= 4 or not 1 <= self.cols <= 4 or not 2 <= self.rows * self.cols <= 16:
            raise ValueError("need 1 <= rows, cols <= 4 and 2 <= rows * cols <= 16")
        if not 1 <= self.layers <= 100 or not 0 <= self.init_std <= 10:
            raise ValueError("need 1 <= layers <= 100 and 0 <= init_std <= 10")


@register("born_machine", family="quantum")
class BornMachine(ArchModel):
    """Quantum circuit Born machine (Benedetti et al. 2019) for the bars-and-stripes distribution."""

    config_class = BornMachineConfig
    export_blocker = ("statevector simulation in complex128 arithmetic: the ONNX exporter does not translate complex "
                      "tensors")

    def __init__(self, config: BornMachineConfig) -> None:
        super().__init__(config)
        self.n = config.rows * config.cols
        self.theta = nn.Parameter(config.init_std * torch.randn(hardware_efficient_shape(config.layers, self.n),
                                                                dtype=torch.float64))
        target = torch.zeros(2**self.n, dtype=torch.float64)
        images = bars_and_stripes(config.rows, config.cols)
        target[images] = 1 / len(images)
        self.register_buffer("target", target, persistent=False)

    def probabilities(self) -> torch.Tensor:
        return hardware_efficient(Circuit(self.n), self.theta).probs()

    def forward(self, index: torch.Tensor | None = None) -> torch.Tensor:
        q = self.probabilities()
        return q if index is None else q[index]

    def kl(self) -> torch.Tensor:
        """KL(target || model) over the images (the target is 0 elsewhere)."""
        p, q = self.target, self.probabilities()
        support = p > 0
        return (p[support] * (p[support].log() - q[support].clamp_min(1e-30).log())).sum()

    def sample(self, shots: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(shots, rows, cols) images drawn by the Born rule."""
        bits = hardware_efficient(Circuit(self.n), self.theta.detach()).sample(shots, generator)
        return bits.reshape(shots, self.config.rows, self.config.cols)

    @classmethod
    def example_input(cls, config: BornMachineConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.arange(batch_size)
