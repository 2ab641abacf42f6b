"""Factories for ``archlab bench quantum``: energy + gradient of a hardware-efficient ansatz.

The circuit is :func:`archlab.quantum.ansatz.hardware_efficient` (``layers`` of RY RZ on every qubit and a
CNOT ladder) and the observable the transverse-field Ising Hamiltonian ``H = -sum Z_i Z_(i+1) - sum X_i``
(2n - 1 Pauli terms). One timed unit = build the circuit, ``<H>``, and its gradient with respect to all
angles. The peer is PennyLane's ``default.qubit`` through its torch interface with backpropagation (the
same gates: RY, RZ, CNOT), complex128 on both sides.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from archlab.quantum import Circuit, PauliSum
from archlab.quantum.ansatz import hardware_efficient


def ising(n: int) -> PauliSum:
    zz = [(-1.0, "I" * i + "ZZ" + "I" * (n - i - 2)) for i in range(n - 1)]
    x = [(-1.0, "I" * i + "X" + "I" * (n - i - 1)) for i in range(n)]
    return PauliSum(zz + x)


def _angles(layers: int, qubits: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(layers, qubits, 2, generator=g, dtype=torch.float64).requires_grad_()


def ours(qubits: int = 12, layers: int = 10, threads: int = 1, diff_method: str = "backprop",
         **_: object) -> Callable[[], None]:
    torch.set_num_threads(threads)
    theta, ham = _angles(layers, qubits), ising(qubits)

    def run() -> None:
        energy = hardware_efficient(Circuit(qubits), theta).expval(ham, diff_method=diff_method)
        theta.grad = None
        energy.backward()

    return run


def ours_adjoint(**params: object) -> Callable[[], None]:
    return ours(**{**params, "diff_method": "adjoint"})


def peer(qubits: int = 12, layers: int = 10, threads: int = 1, **_: object) -> Callable[[], None]:
    import pennylane as qml

    torch.set_num_threads(threads)
    theta = _angles(layers, qubits)
    ham = qml.Hamiltonian([-1.0] * (2 * qubits - 1), [qml.Z(i) @ qml.Z(i + 1) for i in range(qubits - 1)]
                          + [qml.X(i) for i in range(qubits)])
    dev = qml.device("default.qubit", wires=qubits)

    @qml.qnode(dev, interface="torch", diff_method="backprop")
    def energy(t):
        for layer in t:
            for q in range(qubits):
                qml.RY(layer[q, 0], q)
                qml.RZ(layer[q, 1], q)
            for q in range(qubits - 1):
                qml.CNOT([q, q + 1])
        return qml.expval(ham)

    def run() -> None:
        e = energy(theta)
        theta.grad = None
        e.backward()

    return run
