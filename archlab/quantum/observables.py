"""Observables: Pauli strings and weighted sums of them (``PauliSum``), applied without 2^n x 2^n matrices.

A Pauli string is a word over ``I X Y Z`` with one character per wire (character i acts on wire i):
``"ZZI"`` on three qubits is ``Z_0 Z_1``. A :class:`PauliSum` is ``sum_k c_k P_k`` with real
coefficients, so it is Hermitian: a qubit Hamiltonian (VQE), a cost function (QAOA) or a readout.

    <psi| O |psi> = sum_k c_k <psi| P_k |psi>,     P_k |psi> = the single-qubit Paulis applied wire by wire
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..errors import ArchlabError
from .gates import pauli


def check_pauli_string(word: str, n_qubits: int | None = None) -> str:
    """``word`` upper-cased; a one-line error unless it is a word over IXYZ of ``n_qubits`` characters."""
    up = word.upper()
    if not up or set(up) - set("IXYZ"):
        raise ArchlabError(f"Pauli string {word!r} must be a non-empty word over I, X, Y, Z")
    if n_qubits is not None and len(up) != n_qubits:
        raise ArchlabError(f"Pauli string {word!r} has {len(up)} characters; the circuit has {n_qubits} qubits")
    return up


class PauliSum:
    """``sum_k c_k P_k``: real coefficients times Pauli strings of one length (equal strings are merged).

    ``PauliSum({"ZZ": 0.5, "XI": -1.0})`` or ``PauliSum([(0.5, "ZZ"), (-1.0, "XI")])``; sums add with
    ``+`` and scale with ``*``.
    """

    def __init__(self, terms: Mapping[str, float] | Iterable[tuple[float, str]]) -> None:
        pairs = [(c, w) for w, c in terms.items()] if isinstance(terms, Mapping) else list(terms)
        merged: dict[str, float] = {}
        for coeff, word in pairs:
            w = check_pauli_string(word)
            merged[w] = merged.get(w, 0.0) + float(coeff)
        if not merged:
            raise ArchlabError("a PauliSum needs at least one term")
        lengths = {len(w) for w in merged}
        if len(lengths) != 1:
            raise ArchlabError(f"the Pauli strings of a PauliSum must have one length, got {sorted(lengths)}")
        self.terms = merged
        self.n_qubits = lengths.pop()

    def __add__(self, other: PauliSum) -> PauliSum:
        return PauliSum([(c, w) for w, c in self.terms.items()] + [(c, w) for w, c in other.terms.items()])

    def __mul__(self, scale: float) -> PauliSum:
        return PauliSum([(scale * c, w) for w, c in self.terms.items()])

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return "PauliSum(" + " + ".join(f"{c:.6g}*{w}" for w, c in self.terms.items()) + ")"

    def matrix(self, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
        """The dense 2^n x 2^n matrix (for exact diagonalization of small systems and for tests)."""
        total = torch.zeros(2**self.n_qubits, 2**self.n_qubits, dtype=dtype)
        for word, c in self.terms.items():
            m = torch.ones(1, 1, dtype=dtype)
            for ch in word:
                m = torch.kron(m, pauli(ch, dtype))
            total += c * m
        return total

    def ground_energy(self) -> float:
        """Smallest eigenvalue of :meth:`matrix` (exact diagonalization)."""
        return float(torch.linalg.eigvalsh(self.matrix())[0])


def as_pauli_sum(observable: str | PauliSum, n_qubits: int) -> PauliSum:
    """A Pauli string or a PauliSum, checked against the number of qubits."""
    obs = PauliSum({observable: 1.0}) if isinstance(observable, str) else observable
    if not isinstance(obs, PauliSum):
        raise ArchlabError(f"an observable is a Pauli string or a PauliSum, got {type(observable).__name__}")
    if obs.n_qubits != n_qubits:
        raise ArchlabError(f"observable acts on {obs.n_qubits} qubits; the circuit has {n_qubits}")
    return obs


def apply_pauli_string(psi: torch.Tensor, word: str) -> torch.Tensor:
    """``P |psi>`` for a state of shape (B, 2, ..., 2): each non-identity letter acts on its wire's axis."""
    out = psi
    for wire, ch in enumerate(word):
        if ch == "I":
            continue
        p = pauli(ch, psi.dtype, psi.device)
        out = torch.movedim(torch.tensordot(out, p, dims=([wire + 1], [1])), -1, wire + 1)
    return out


def apply_observable(psi: torch.Tensor, obs: PauliSum) -> torch.Tensor:
    """``O |psi>`` for ``O = sum_k c_k P_k`` (used by adjoint differentiation)."""
    return sum(c * apply_pauli_string(psi, w) for w, c in obs.terms.items())


def expectation(psi: torch.Tensor, obs: PauliSum) -> torch.Tensor:
    """``<psi| O |psi>`` per batch element: (B, 2, ..., 2) -> (B,) real.

    Strings of only I and Z are diagonal: their value is a sum of ``|psi|^2`` times +-1, cheaper than
    applying the string."""
    b = psi.shape[0]
    probs = None
    total = torch.zeros(b, dtype=psi.real.dtype, device=psi.device)
    for word, c in obs.terms.items():
        if set(word) <= {"I", "Z"}:
            if probs is None:
                probs = psi.abs().square()
            signs = torch.ones((), dtype=probs.dtype, device=psi.device)
            for wire, ch in enumerate(word):
                if ch == "Z":
                    z = torch.tensor([1.0, -1.0], dtype=probs.dtype, device=psi.device)
                    signs = signs * z.reshape([2 if i == wire else 1 for i in range(len(word))])
            total = total + c * (probs * signs).reshape(b, -1).sum(-1)
        else:
            value = (psi.conj() * apply_pauli_string(psi, word)).reshape(b, -1).sum(-1).real
            total = total + c * value
    return total
