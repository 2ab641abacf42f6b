"""Quantum kernels: the ZZ feature map of Havlíček et al. 2019 and its fidelity kernel.

Havlíček, Córcoles, Temme, Harrow, Kandala, Chow & Gambetta 2019, "Supervised learning with quantum-enhanced
feature spaces" (Nature 567, 209). A data point x in R^n is encoded on n qubits by

    U_phi(x) = exp(i sum_S phi_S(x) Z_S) H^n      phi_i(x) = x_i,   phi_ij(x) = (pi - x_i)(pi - x_j)
    |phi(x)> = U_phi(x) U_phi(x) |0...0>           (the map is applied twice, their Eq. 2 with depth 2)

and the kernel is the fidelity of two encoded states, ``k(x, y) = |<phi(x)|phi(y)>|^2``, which any kernel
method (here scikit-learn's SVC with ``kernel="precomputed"``) can use. The diagonal part is written with
the gates qiskit's ``ZZFeatureMap`` uses: ``P(2 phi_i)`` on qubit i and ``CNOT P(2 phi_ij) CNOT`` on each
pair, i.e. ``exp(-i phi_S Z_S)`` up to a global phase, so the kernel is the same.

The ad hoc dataset of the paper (their Methods; qiskit-machine-learning's ``ad_hoc_data``): points on a
grid of [0, 2pi)^n are labelled by the sign of ``<phi(x)| V^dag Z...Z V |phi(x)>`` for a fixed random unitary
V, and only points with ``|<...>| >= gap`` are kept -- a problem the ZZ kernel separates by construction.
"""

from __future__ import annotations

import math

import torch

from ..errors import ArchlabError
from .circuit import Circuit
from .statevector import apply_matrix


def zz_feature_map(c: Circuit, x: torch.Tensor, reps: int = 2) -> Circuit:
    """Append ``reps`` repetitions of H^n then the ZZ phases to ``c``; ``x``: (n,) or (n, B) features."""
    n = c.n_qubits
    for _ in range(reps):
        for q in range(n):
            c.h(q).phase(2 * x[q], q)
        for i in range(n):
            for j in range(i + 1, n):
                c.cnot(i, j).phase(2 * (math.pi - x[i]) * (math.pi - x[j]), j).cnot(i, j)
    return c


def feature_states(x: torch.Tensor, reps: int = 2) -> torch.Tensor:
    """The encoded states of a batch: x (B, n) -> (B, 2^n) complex128."""
    c = zz_feature_map(Circuit(x.shape[1]), x.to(torch.float64).T, reps)
    psi = c.state()
    return psi if psi.dim() == 2 else psi.expand(x.shape[0], -1)


def fidelity_kernel(x: torch.Tensor, y: torch.Tensor | None = None, reps: int = 2) -> torch.Tensor:
    """``K[a, b] = |<phi(x_a)|phi(y_b)>|^2``: (A, n), (B, n) -> (A, B); ``y=None`` uses ``x`` (Gram matrix)."""
    if x.dim() != 2 or (y is not None and (y.dim() != 2 or y.shape[1] != x.shape[1])):
        raise ArchlabError("fidelity_kernel takes (A, n) and (B, n) feature matrices with the same n")
    sx = feature_states(x, reps)
    sy = sx if y is None else feature_states(y, reps)
    return (sx.conj() @ sy.T).abs().square()


def ad_hoc_data(train_per_class: int, test_per_class: int, n: int = 2, gap: float = 0.3, seed: int = 0,
                grid: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Havlíček et al.'s ad hoc classification problem: (x_train, y_train, x_test, y_test), y in {0, 1}.

    A grid of ``grid`` points per axis over [0, 2 pi)^n (100 for n = 2, as qiskit-machine-learning uses),
    the parity Z...Z measured after a random unitary V (QR of a complex Gaussian matrix, seeded),
    points with ``|<parity>| < gap`` dropped, then a balanced sample of each class without repeats.
    """
    if not 2 <= n <= 3:
        raise ArchlabError(f"ad hoc data is defined here for n = 2 or 3 qubits, got {n}")
    g = grid or (100 if n == 2 else 20)
    gen = torch.Generator().manual_seed(seed)
    axis = torch.arange(g, dtype=torch.float64) * (2 * math.pi / g)
    points = torch.cartesian_prod(*[axis] * n)  # (g^n, n)
    a = torch.complex(torch.randn(2**n, 2**n, generator=gen, dtype=torch.float64),
                      torch.randn(2**n, 2**n, generator=gen, dtype=torch.float64))
    q, r = torch.linalg.qr(a)
    v = q * (r.diagonal() / r.diagonal().abs())
    psi = feature_states(points).reshape((-1,) + (2,) * n)
    rotated = apply_matrix(psi, v, tuple(range(n))).reshape(len(points), -1)
    bits = torch.arange(2**n)
    parity = 1 - 2 * (sum((bits >> k) & 1 for k in range(n)) % 2)  # eigenvalues of Z...Z
    value = (rotated.abs().square() * parity).sum(-1)
    keep = value.abs() >= gap
    labels = (value > 0).long()
    out = []
    for cls in (0, 1):
        idx = torch.nonzero(keep & (labels == cls)).squeeze(1)
        if len(idx) < train_per_class + test_per_class:
            raise ArchlabError(f"only {len(idx)} grid points in class {cls}; ask for fewer or lower the gap")
        out.append(idx[torch.randperm(len(idx), generator=gen)[: train_per_class + test_per_class]])
    train_idx = torch.cat([o[:train_per_class] for o in out])
    test_idx = torch.cat([o[train_per_class:] for o in out])
    return points[train_idx], labels[train_idx], points[test_idx], labels[test_idx]
