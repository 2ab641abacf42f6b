"""QAOA for MaxCut (Farhi, Goldstone & Gutmann 2014, "A Quantum Approximate Optimization Algorithm").

A cut of a graph G = (V, E) splits the nodes in two; its size is the number of edges across. With one
qubit per node (bit = side), the cut size is the diagonal operator

    C = sum_{(i,j) in E} (1 - Z_i Z_j) / 2

QAOA with depth p prepares, from the uniform superposition ``|+>^n``,

    |gamma, beta> = U_B(beta_p) U_C(gamma_p) ... U_B(beta_1) U_C(gamma_1) |+>^n
    U_C(gamma) = exp(-i gamma C) = prod_(i,j) exp(+i gamma Z_i Z_j / 2)   (up to a global phase)
    U_B(beta)  = exp(-i beta sum_i X_i) = prod_i RX(2 beta)

and maximizes the expected cut ``<gamma, beta| C |gamma, beta>``; the approximation ratio is that over
the maximum cut (found here by enumerating all 2^n cuts). Each ``exp(i gamma Z_i Z_j / 2)`` is
``CNOT(i, j) RZ(-gamma, j) CNOT(i, j)``.
"""

from __future__ import annotations

import random

import torch

from ..errors import ArchlabError
from .circuit import Circuit
from .observables import PauliSum

Edges = list[tuple[int, int]]


def ring_graph(n: int) -> Edges:
    """The cycle 0-1-...-(n-1)-0."""
    return [(i, (i + 1) % n) for i in range(n)]


def random_regular_graph(n: int, degree: int, seed: int) -> Edges:
    """A uniformly random simple d-regular graph: the pairing model, redrawn until no loop or double edge."""
    if n * degree % 2 or not degree < n:
        raise ArchlabError(f"no {degree}-regular graph on {n} nodes (need n * degree even and degree < n)")
    rng = random.Random(seed)
    for _ in range(10_000):
        stubs = [v for v in range(n) for _ in range(degree)]
        rng.shuffle(stubs)
        edges = {tuple(sorted(stubs[k:k + 2])) for k in range(0, len(stubs), 2)}
        if len(edges) == n * degree // 2 and all(a != b for a, b in edges):
            return sorted(edges)
    raise ArchlabError(f"could not draw a {degree}-regular graph on {n} nodes")


def maxcut_hamiltonian(edges: Edges, n: int) -> PauliSum:
    """C = sum_(i,j) (1 - Z_i Z_j) / 2 as a PauliSum on n qubits."""
    terms = [(0.5 * len(edges), "I" * n)]
    for i, j in edges:
        word = ["I"] * n
        word[i] = word[j] = "Z"
        terms.append((-0.5, "".join(word)))
    return PauliSum(terms)


def max_cut(edges: Edges, n: int) -> int:
    """The maximum cut size by enumerating all 2^n assignments (n <= 24)."""
    if n > 24:
        raise ArchlabError(f"max_cut enumerates 2^n cuts; n = {n} is too many")
    z = torch.arange(2**n)
    best = torch.zeros(2**n, dtype=torch.int64)
    for i, j in edges:
        best += ((z >> (n - 1 - i)) ^ (z >> (n - 1 - j))) & 1
    return int(best.max())


def qaoa_circuit(n: int, edges: Edges, gammas: torch.Tensor, betas: torch.Tensor) -> Circuit:
    """The depth-p QAOA state for ``gammas``, ``betas`` of shape (p,) (or (p, B) for a batch of angle sets)."""
    c = Circuit(n)
    for wire in range(n):
        c.h(wire)
    for gamma, beta in zip(gammas, betas, strict=True):
        for i, j in edges:
            c.cnot(i, j).rz(-gamma, j).cnot(i, j)
        for wire in range(n):
            c.rx(2 * beta, wire)
    return c
