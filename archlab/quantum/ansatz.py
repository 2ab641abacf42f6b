"""Parameterized circuits ("ansatze") shared by VQE, the barren-plateau study and the benchmark.

    givens_doubles(c, theta, hf)       the Hartree-Fock state, then one double-excitation (Givens) rotation
    hardware_efficient(c, theta)       layers of RY, RZ on every wire, then a ladder of CNOTs

**Givens ansatz** (Arrazola et al. 2022, "Universal quantum circuits for quantum chemistry"). For H2
in a minimal basis, particle number and spin symmetry leave two determinants, ``|1100>`` (both electrons
in the bonding orbital) and ``|0011>`` (both in the antibonding one); a double excitation rotates
between them, ``cos(theta/2)|1100> - sin(theta/2)|0011>``, so one angle reaches the exact ground state.

**Hardware-efficient ansatz** (Kandala et al. 2017, Nature 549, 242): a layer is ``RY(a) RZ(b)`` on every
wire followed by ``CNOT(0,1) CNOT(1,2) ... CNOT(n-2,n-1)``; it ignores the problem's symmetries, which is
what makes it cheap on hardware and hard to train (McClean et al. 2018).

Shapes: ``theta`` for ``givens_doubles`` is () or (B,); for ``hardware_efficient`` (layers, n, 2) or
(layers, n, 2, B).
"""

from __future__ import annotations

import torch

from .circuit import Circuit


def givens_doubles(c: Circuit, theta: torch.Tensor, hf_state: str) -> Circuit:
    """|hf_state>, then DoubleExcitation(theta) on the first four wires."""
    return c.basis_state(hf_state).double_excitation(theta, 0, 1, 2, 3)


def hardware_efficient(c: Circuit, theta: torch.Tensor, initial: str | None = None) -> Circuit:
    """Optionally start from the basis state ``initial``, then ``theta.shape[0]`` layers of RY, RZ, CNOT ladder."""
    if initial is not None:
        c.basis_state(initial)
    for layer in theta.unbind(0):  # unbind: one backward node per layer instead of one per angle
        for wire, (a, b) in enumerate(layer.unbind(0)):
            c.ry(a, wire).rz(b, wire)
        for wire in range(c.n_qubits - 1):
            c.cnot(wire, wire + 1)
    return c


def hardware_efficient_shape(layers: int, n_qubits: int) -> tuple[int, int, int]:
    """Shape of the angle tensor of :func:`hardware_efficient`."""
    return (layers, n_qubits, 2)
