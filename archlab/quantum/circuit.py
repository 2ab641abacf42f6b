"""A differentiable statevector simulator: ``Circuit`` records gates, then simulates on demand.

    c = Circuit(2)
    c.h(0).cnot(0, 1).ry(theta, 1)          # angle first, wires after; applied in call order
    c.state()                                # (4,) complex: amplitudes of |00>, |01>, |10>, |11>
    c.expval("ZZ")                           # <psi| Z_0 Z_1 |psi>, differentiable in theta
    c.expval(hamiltonian, diff_method="adjoint")

**State.** n qubits are ``2^n`` complex amplitudes, held as a tensor of shape (B, 2, ..., 2) with one
axis per wire; the amplitude of basis state ``|b_0 ... b_{n-1}>`` sits at index ``[b_0, ..., b_{n-1}]``,
so wire 0 is the most significant bit of the flattened index (PennyLane's convention).

**Gates.** A k-qubit gate is a 2^k x 2^k matrix U acting on k wires. Applying it never builds a 2^n x 2^n
matrix. A single-qubit gate on wire w views the state as (B, 2^w, 2, 2^(n-w-1)) and mixes the two
halves, ``psi'[., a, i, r] = sum_j U[i, j] psi[., a, j, r]``; a controlled gate applies its 2 x 2 block
to the half of the state where the control is 1 (CNOT just flips that half); other gates move the
touched axes last, view the state as (B, 2^(n-k), 2^k) and do one batched matrix product. Cost
O(B 2^n 2^k) per gate. Runs of single-qubit gates on one wire are first multiplied into one 2 x 2 matrix.

**Batches.** A parameter may be a tensor of shape () or (B,); a batched parameter simulates B circuits
at once (same gates, B angles) and ``state``/``expval``/``probs`` gain a leading B axis.

**Gradients** (``expval(..., diff_method=...)``): ``"backprop"`` differentiates through the simulation
with autograd; ``"parameter-shift"`` and ``"adjoint"`` (``archlab.quantum.gradients``) compute the same
gradient the way hardware can (shifted circuits) or with O(1) extra states (Jones & Gacon 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ArchlabError
from . import gates
from .gradients import expval_with_gradient
from .observables import PauliSum, as_pauli_sum, expectation
from .statevector import apply_controlled, apply_matrix

#: The ``diff_method`` values of :meth:`Circuit.expval`.
DIFF_METHODS = ("backprop", "parameter-shift", "adjoint")

MAX_QUBITS = 26  # 2^26 complex128 amplitudes = 1 GiB per state


@dataclass
class Op:
    """One recorded gate: its name, its angle (None for fixed gates), its wires and, for ``unitary``,
    its matrix."""

    name: str
    wires: tuple[int, ...]
    theta: torch.Tensor | None = None
    fixed: torch.Tensor | None = None


class Circuit:
    """A list of gates on ``n_qubits`` wires starting from ``|0...0>``; see the module docstring.

    Every gate method returns the circuit, so calls chain. Angles are real tensors (or Python floats)
    of shape () or (B,); all batched angles of one circuit share B.
    """

    def __init__(self, n_qubits: int, dtype: torch.dtype = torch.complex128, device: torch.device | str | None = None):
        if not isinstance(n_qubits, int) or not 1 <= n_qubits <= MAX_QUBITS:
            raise ArchlabError(f"n_qubits must be an integer in [1, {MAX_QUBITS}], got {n_qubits!r}")
        if dtype not in (torch.complex64, torch.complex128):
            raise ArchlabError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}")
        self.n_qubits, self.dtype = n_qubits, dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.ops: list[Op] = []
        self.batch_size: int | None = None
        self.initial: torch.Tensor | None = None

    # -- recording -----------------------------------------------------------------------------------
    def _wires(self, name: str, wires: tuple[int, ...]) -> tuple[int, ...]:
        for w in wires:
            if not isinstance(w, int) or not 0 <= w < self.n_qubits:
                raise ArchlabError(f"{name}: wire {w!r} is not one of 0..{self.n_qubits - 1}")
        if len(set(wires)) != len(wires):
            raise ArchlabError(f"{name}: wires {wires} must be distinct")
        return wires

    def _angle(self, name: str, theta: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(theta, device=self.device)
        if t.is_complex() or t.dtype == torch.bool:
            raise ArchlabError(f"{name}: the angle must be a real tensor or number, got {t.dtype}")
        t = t.to(self.dtype.to_real())
        if t.dim() > 1:
            raise ArchlabError(f"{name}: an angle has shape () or (batch,), got {tuple(t.shape)}")
        if t.dim() == 1:
            if self.batch_size is not None and self.batch_size != t.shape[0]:
                raise ArchlabError(f"{name}: batch of {t.shape[0]} angles, but earlier gates have {self.batch_size}")
            self.batch_size = t.shape[0]
        return t

    def _add(self, name: str, wires: tuple[int, ...], theta: torch.Tensor | float | None = None) -> Circuit:
        wires = self._wires(name, wires)
        self.ops.append(Op(name, wires, None if theta is None else self._angle(name, theta)))
        return self

    def x(self, wire: int) -> Circuit:
        return self._add("x", (wire,))

    def y(self, wire: int) -> Circuit:
        return self._add("y", (wire,))

    def z(self, wire: int) -> Circuit:
        return self._add("z", (wire,))

    def h(self, wire: int) -> Circuit:
        """Hadamard."""
        return self._add("h", (wire,))

    def s(self, wire: int) -> Circuit:
        return self._add("s", (wire,))

    def t(self, wire: int) -> Circuit:
        return self._add("t", (wire,))

    def rx(self, theta: torch.Tensor | float, wire: int) -> Circuit:
        """exp(-i theta X / 2)."""
        return self._add("rx", (wire,), theta)

    def ry(self, theta: torch.Tensor | float, wire: int) -> Circuit:
        """exp(-i theta Y / 2)."""
        return self._add("ry", (wire,), theta)

    def rz(self, theta: torch.Tensor | float, wire: int) -> Circuit:
        """exp(-i theta Z / 2)."""
        return self._add("rz", (wire,), theta)

    def rot(self, phi: torch.Tensor | float, theta: torch.Tensor | float, omega: torch.Tensor | float,
            wire: int) -> Circuit:
        """RZ(omega) RY(theta) RZ(phi): recorded as three rotations (phi acts first)."""
        return self.rz(phi, wire).ry(theta, wire).rz(omega, wire)

    def phase(self, phi: torch.Tensor | float, wire: int) -> Circuit:
        """diag(1, e^{i phi})."""
        return self._add("phase", (wire,), phi)

    def cnot(self, control: int, target: int) -> Circuit:
        return self._add("cnot", (control, target))

    def cz(self, control: int, target: int) -> Circuit:
        return self._add("cz", (control, target))

    def swap(self, a: int, b: int) -> Circuit:
        return self._add("swap", (a, b))

    def crx(self, theta: torch.Tensor | float, control: int, target: int) -> Circuit:
        return self._add("crx", (control, target), theta)

    def cry(self, theta: torch.Tensor | float, control: int, target: int) -> Circuit:
        return self._add("cry", (control, target), theta)

    def crz(self, theta: torch.Tensor | float, control: int, target: int) -> Circuit:
        return self._add("crz", (control, target), theta)

    def toffoli(self, c0: int, c1: int, target: int) -> Circuit:
        return self._add("toffoli", (c0, c1, target))

    def double_excitation(self, theta: torch.Tensor | float, w0: int, w1: int, w2: int, w3: int) -> Circuit:
        """Givens rotation by theta/2 between |0011> and |1100> on four wires (PennyLane's DoubleExcitation)."""
        return self._add("double_excitation", (w0, w1, w2, w3), theta)

    def unitary(self, matrix: torch.Tensor, wires: int | tuple[int, ...] | list[int]) -> Circuit:
        """Any (2^k, 2^k) or (B, 2^k, 2^k) matrix on k wires (not checked for unitarity; differentiable
        only with ``diff_method="backprop"``)."""
        w = (wires,) if isinstance(wires, int) else tuple(wires)
        self._wires("unitary", w)
        m = torch.as_tensor(matrix, device=self.device).to(self.dtype)
        if m.shape[-2:] != (2 ** len(w), 2 ** len(w)) or m.dim() not in (2, 3):
            raise ArchlabError(f"unitary on {len(w)} wires needs a ({2 ** len(w)}, {2 ** len(w)}) matrix, "
                               f"got {tuple(m.shape)}")
        if m.dim() == 3:
            if self.batch_size is not None and self.batch_size != m.shape[0]:
                raise ArchlabError(f"unitary: batch of {m.shape[0]} matrices, but earlier gates have {self.batch_size}")
            self.batch_size = m.shape[0]
        self.ops.append(Op("unitary", w, fixed=m))
        return self

    def basis_state(self, bits: str | list[int]) -> Circuit:
        """Start from ``|bits>`` instead of ``|0...0>`` (X on every 1; e.g. the Hartree-Fock state)."""
        b = [int(ch) for ch in bits]
        if len(b) != self.n_qubits or set(b) - {0, 1}:
            raise ArchlabError(f"basis_state needs {self.n_qubits} bits of 0/1, got {bits!r}")
        for wire, bit in enumerate(b):
            if bit:
                self.x(wire)
        return self

    # -- simulation ----------------------------------------------------------------------------------
    def op_matrix(self, op: Op, theta: torch.Tensor | None = None, block: bool = False) -> torch.Tensor:
        """The matrix of a recorded gate (at ``theta`` instead of its own angle, when given); ``block``:
        for a controlled gate, only the 2 x 2 block that acts on the target when the control is 1."""
        if op.fixed is not None:
            return op.fixed
        if op.theta is None:
            u = gates.fixed_matrix(op.name, self.dtype, self.device)
        else:
            u = gates.matrix(op.name, op.theta if theta is None else theta, self.dtype, block)
        return u[..., 2:, 2:] if block and op.theta is None else u

    def zero_state(self) -> torch.Tensor:
        """|0...0> as a (1, 2, ..., 2) tensor."""
        psi = torch.zeros((1,) + (2,) * self.n_qubits, dtype=self.dtype, device=self.device)
        psi.view(-1)[0] = 1
        return psi

    def simulate(self, thetas: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """The final state as a (B, 2, ..., 2) tensor (B = 1 when nothing is batched); ``thetas``
        replaces the recorded angles (parameter-shift evaluates shifted circuits this way)."""
        psi = self.zero_state()
        # Single-qubit gates wait on their wire and are multiplied into one 2 x 2 matrix (a 2 x 2 product
        # is far cheaper than a pass over 2^n amplitudes); a gate on several wires first applies what waits there.
        pending: dict[int, torch.Tensor] = {}

        def flush(wires: tuple[int, ...]) -> torch.Tensor:
            out = psi
            for w in wires:
                if w in pending:
                    out = apply_matrix(out, pending.pop(w), (w,))
            return out

        for i, op in enumerate(self.ops):
            u = self.op_matrix(op, None if thetas is None else thetas[i], block=op.name in gates.CONTROLLED)
            if len(op.wires) == 1:
                w = op.wires[0]
                pending[w] = u @ pending[w] if w in pending else u
                continue
            psi = flush(op.wires)
            if op.name == "cnot":  # X on the target where the control is 1: a flip of that half
                psi = apply_controlled(psi, None, *op.wires)
            elif op.name in gates.CONTROLLED:
                psi = apply_controlled(psi, u, *op.wires)
            else:
                psi = apply_matrix(psi, u, op.wires)
        return flush(tuple(pending))

    def _unbatch(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.batch_size is not None else x.squeeze(0)

    def state(self) -> torch.Tensor:
        """The statevector: (2^n,) or (B, 2^n), wire 0 the most significant bit of the index."""
        psi = self.simulate()
        return self._unbatch(psi.reshape(psi.shape[0], -1))

    def expval(self, observable: str | PauliSum, diff_method: str = "backprop") -> torch.Tensor:
        """``<psi| O |psi>`` for a Pauli string (``"ZZI"``) or a :class:`PauliSum`: () or (B,) real."""
        obs = as_pauli_sum(observable, self.n_qubits)
        if diff_method == "backprop":
            value = expectation(self.simulate(), obs)
        elif diff_method in ("parameter-shift", "adjoint"):
            value = expval_with_gradient(self, obs, diff_method)
        else:
            raise ArchlabError(f"diff_method must be one of {', '.join(DIFF_METHODS)}, got {diff_method!r}")
        return self._unbatch(value)

    def basis_probabilities(self) -> torch.Tensor:
        """|psi|^2 as a (B, 2, ..., 2) real tensor."""
        return self.simulate().abs().square()

    def probs(self, wires: int | list[int] | tuple[int, ...] | None = None) -> torch.Tensor:
        """Probabilities of the basis states of ``wires`` (default: all), the first wire most significant:
        (2^k,) or (B, 2^k)."""
        w = tuple(range(self.n_qubits)) if wires is None else ((wires,) if isinstance(wires, int) else tuple(wires))
        self._wires("probs", w)
        p = self.basis_probabilities()
        others = [i + 1 for i in range(self.n_qubits) if i not in w]
        if others:
            p = p.sum(dim=others)
        # The kept axes are in wire order; put them in the order asked for.
        order = sorted(w)
        p = p.permute([0] + [order.index(x) + 1 for x in w])
        return self._unbatch(p.reshape(p.shape[0], -1))

    def sample(self, shots: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``shots`` measurements of every wire in the computational basis: (shots, n) or (B, shots, n)
        integer bits, column i = wire i."""
        if not isinstance(shots, int) or not 1 <= shots <= 10**8:
            raise ArchlabError(f"shots must be an integer in [1, 1e8], got {shots!r}")
        with torch.no_grad():
            p = self.probs()
            flat = p.reshape(-1, p.shape[-1]).double()
            idx = torch.multinomial(flat, shots, replacement=True, generator=generator)
        bits = (idx[..., None] >> torch.arange(self.n_qubits - 1, -1, -1, device=idx.device)) & 1
        return bits if self.batch_size is not None else bits[0]

