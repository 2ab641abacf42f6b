"""Mixed states and noise: a density-matrix simulator with depolarizing and amplitude-damping channels.

A mixed state of n qubits is a 2^n x 2^n density matrix rho (Hermitian, trace 1, positive). archlab holds it as
a tensor of shape (B, 2, ..., 2, 2, ..., 2): n row axes then n column axes, i.e. like the statevector of 2n
qubits. That makes every operation a statevector operation:

    gate U on wires w:     rho -> U rho U^dagger   = U on row wires w, then conj(U) on column wires n + w
    channel {K_k}:         rho -> sum_k K_k rho K_k^dagger          (Kraus operators, sum K^dagger K = I)
    <O> = tr(rho O),       p(x) = rho[x, x]

Channels (Nielsen & Chuang Sec. 8.3; PennyLane's ``DepolarizingChannel`` and ``AmplitudeDamping``)::

    depolarizing(p):      K = sqrt(1-p) I, sqrt(p/3) X, sqrt(p/3) Y, sqrt(p/3) Z
    amplitude_damping(g): K0 = [[1, 0], [0, sqrt(1-g)]],  K1 = [[0, sqrt g], [0, 0]]   (|1> decays to |0>)

``DensityCircuit`` records the same gates as :class:`~archlab.quantum.circuit.Circuit` plus the two channels;
``density_matrix()``, ``expval`` (backpropagation only), ``probs`` and ``sample`` work as there. Memory is
4^n amplitudes, so it is meant for small circuits (n <= 12).
"""

from __future__ import annotations

import torch

from ..errors import ArchlabError
from . import gates
from .circuit import Circuit, Op
from .observables import PauliSum, apply_pauli_string, as_pauli_sum
from .statevector import apply_matrix


def _kraus(op: Op, dtype: torch.dtype) -> list[torch.Tensor]:
    """The Kraus operators of a recorded channel (its strength is ``op.theta``, a tensor of shape () or (B,))."""
    q = op.theta.to(dtype)[..., None, None]
    if op.name == "depolarizing":
        paulis = [torch.sqrt(q / 3) * gates.pauli(a, dtype) for a in "xyz"]
        return [torch.sqrt(1 - q) * gates.pauli("i", dtype), *paulis]
    zero, one = torch.zeros_like(q), torch.ones_like(q)
    k0 = torch.cat([torch.cat([one, zero], -1), torch.cat([zero, torch.sqrt(1 - q)], -1)], -2)
    k1 = torch.cat([torch.cat([zero, torch.sqrt(q)], -1), torch.cat([zero, zero], -1)], -2)
    return [k0, k1]


class DensityCircuit(Circuit):
    """A :class:`Circuit` simulated as a density matrix, with noise channels; see the module docstring."""

    CHANNELS = ("depolarizing", "amplitude_damping")

    def _channel(self, name: str, strength: torch.Tensor | float, wire: int) -> DensityCircuit:
        t = torch.as_tensor(strength, dtype=self.dtype.to_real())
        if ((t < 0) | (t > 1)).any():
            raise ArchlabError(f"{name}: the probability must be in [0, 1], got {strength}")
        self._add(name, (wire,), t)
        return self

    def depolarizing(self, p: torch.Tensor | float, wire: int) -> DensityCircuit:
        """With probability p, replace the qubit's state by a random Pauli applied to it (X, Y or Z, p/3 each)."""
        return self._channel("depolarizing", p, wire)

    def amplitude_damping(self, gamma: torch.Tensor | float, wire: int) -> DensityCircuit:
        """Energy relaxation: |1> decays to |0> with probability gamma."""
        return self._channel("amplitude_damping", gamma, wire)

    def simulate(self, thetas: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """rho as a (B, 2, ..., 2) tensor with 2n axes (rows then columns)."""
        n = self.n_qubits
        rho = torch.zeros((1,) + (2,) * (2 * n), dtype=self.dtype, device=self.device)
        rho.view(-1)[0] = 1  # |0...0><0...0|
        for op in self.ops:
            cols = tuple(w + n for w in op.wires)
            if op.name in self.CHANNELS:
                rho = sum(apply_matrix(apply_matrix(rho, k, op.wires), k.conj(), cols) for k in _kraus(op, self.dtype))
            else:
                u = self.op_matrix(op)
                rho = apply_matrix(apply_matrix(rho, u, op.wires), u.conj(), cols)
        return rho

    def density_matrix(self) -> torch.Tensor:
        """(2^n, 2^n) or (B, 2^n, 2^n)."""
        rho = self.simulate()
        return self._unbatch(rho.reshape(rho.shape[0], 2**self.n_qubits, 2**self.n_qubits))

    def state(self) -> torch.Tensor:
        raise ArchlabError("a DensityCircuit has a density matrix, not a statevector: use density_matrix()")

    def basis_probabilities(self) -> torch.Tensor:
        rho = self.simulate()
        d = 2**self.n_qubits
        diag = rho.reshape(rho.shape[0], d, d).diagonal(dim1=1, dim2=2).real
        return diag.reshape((rho.shape[0],) + (2,) * self.n_qubits)

    def expval(self, observable: str | PauliSum, diff_method: str = "backprop") -> torch.Tensor:
        """tr(rho O) for a Pauli string or PauliSum: () or (B,); differentiable by backpropagation only."""
        if diff_method != "backprop":
            raise ArchlabError("a DensityCircuit differentiates by diff_method='backprop' only")
        obs = as_pauli_sum(observable, self.n_qubits)
        rho = self.simulate()
        d = 2**self.n_qubits
        total = torch.zeros(rho.shape[0], dtype=self.dtype.to_real(), device=self.device)
        for word, c in obs.terms.items():
            # P acts on the row axes: (P rho) has the same layout; tr(P rho) = sum of its diagonal.
            p_rho = apply_pauli_string(rho, word + "I" * self.n_qubits)
            total = total + c * p_rho.reshape(-1, d, d).diagonal(dim1=1, dim2=2).sum(-1).real
        return self._unbatch(total)
