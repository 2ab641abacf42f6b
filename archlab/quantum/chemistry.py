"""The qubit Hamiltonian of a hydrogen molecule (or chain) in the STO-3G basis, from first principles.

Three steps, as in Szabo & Ostlund, "Modern Quantum Chemistry" (1996), Ch. 3 and App. A:

1. **Integrals over s-type Gaussians.** Each hydrogen 1s orbital is STO-3G: a fixed sum of three
   normalized Gaussians ``g_a(r) = (2a/pi)^(3/4) exp(-a |r - A|^2)``. For two Gaussians a, b on centres
   A, B (``p = a + b``, ``P = (aA + bB)/p``, ``K = exp(-ab/p |A-B|^2)``), App. A gives, before normalization::

       overlap       S  = (pi/p)^(3/2) K
       kinetic       T  = ab/p (3 - 2 ab/p |A-B|^2) S
       nuclear       V  = -Z_C 2 pi/p K F0(p |P-C|^2)
       repulsion  (ab|cd) = 2 pi^(5/2) / (p q sqrt(p+q)) K_ab K_cd F0(pq/(p+q) |P-Q|^2)

   with the Boys function ``F0(t) = (1/2) sqrt(pi/t) erf(sqrt t)``.
2. **Restricted Hartree-Fock** (Sec. 3.4.6, the SCF procedure): orthogonalize with ``X = S^(-1/2)``,
   iterate ``F(P) C = S C e`` until the density ``P = 2 sum_occ C C^T`` stops changing.
3. **Second quantization and the Jordan-Wigner transform.** In the basis of spin orbitals (spatial
   orbital k gives spin orbitals 2k (up) and 2k+1 (down), PennyLane's order)::

       H = E_nuc + sum_pq h_pq a+_p a_q + 1/2 sum_pqrs (pq|rs) a+_p a+_r a_s a_q

   and ``a+_j = Z_0 ... Z_(j-1) (X_j - i Y_j) / 2`` (Jordan & Wigner 1928) turns it into a :class:`PauliSum`.

The Hartree-Fock state of N electrons is ``|1...10...0>`` (the lowest N spin orbitals occupied).
Numbers are float64 torch tensors; lengths are in bohr unless a name says angstrom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ArchlabError
from .observables import PauliSum

#: Bohr radius in angstrom (CODATA 2018), the conversion PennyLane's qchem uses.
BOHR_ANGSTROM = 0.529177210903

# STO-3G for hydrogen (Hehre, Stewart & Pople 1969; zeta = 1.24 already folded into the exponents),
# the values of the Basis Set Exchange.
STO3G_H_EXPONENTS = (3.42525091, 0.62391373, 0.16885540)
STO3G_H_COEFFS = (0.15432897, 0.53532814, 0.44463454)


def boys0(t: torch.Tensor) -> torch.Tensor:
    """F0(t) = int_0^1 exp(-t s^2) ds = (1/2) sqrt(pi/t) erf(sqrt t); F0(0) = 1."""
    small = t < 1e-12
    safe = torch.where(small, torch.ones_like(t), t)
    return torch.where(small, 1 - t / 3, 0.5 * torch.sqrt(math.pi / safe) * torch.erf(torch.sqrt(safe)))


@dataclass
class Integrals:
    """Atomic-orbital integrals: overlap S, core Hamiltonian H = T + V (n, n), repulsion (n, n, n, n)
    in chemists' order ``(ab|cd)``, and the nuclear repulsion energy."""

    overlap: torch.Tensor
    core: torch.Tensor
    repulsion: torch.Tensor
    nuclear: float


def sto3g_integrals(coords: torch.Tensor) -> Integrals:
    """Integrals of one STO-3G 1s orbital per hydrogen atom at ``coords`` (atoms, 3) in bohr."""
    n = coords.shape[0]
    alpha = torch.tensor(STO3G_H_EXPONENTS, dtype=torch.float64)
    # Contraction coefficient times the normalization of each primitive: (atoms, 3) centres, (3,) weights.
    d = torch.tensor(STO3G_H_COEFFS, dtype=torch.float64) * (2 * alpha / math.pi) ** 0.75
    centre = coords.to(torch.float64)
    # Every primitive pair: index [A, i, B, j] for primitive i on atom A and j on atom B.
    a = alpha[None, :, None, None]
    b = alpha[None, None, None, :]
    p = a + b
    r_ab2 = ((centre[:, None, :] - centre[None, :, :]) ** 2).sum(-1)[:, None, :, None]
    k = torch.exp(-a * b / p * r_ab2)
    s_prim = (math.pi / p) ** 1.5 * k
    t_prim = a * b / p * (3 - 2 * a * b / p * r_ab2) * s_prim
    # Gaussian product centres P (A, i, B, j, 3)
    big_p = (a[..., None] * centre[:, None, None, None, :]
             + b[..., None] * centre[None, None, :, None, :]) / p[..., None]
    v_prim = torch.zeros_like(s_prim)
    for c in range(n):  # nuclear attraction of every nucleus (charge 1)
        v_prim = v_prim - 2 * math.pi / p * k * boys0(p * ((big_p - centre[c]) ** 2).sum(-1))
    w = d[None, :, None, None] * d[None, None, None, :]
    contract = lambda x: (w * x).sum(dim=(1, 3))  # noqa: E731 - (A, i, B, j) -> (A, B)

    # Two-electron integrals over primitive quadruples: [A,i,B,j] x [C,k,D,l].
    pp = p.expand(n, 3, n, 3).reshape(n, 3, n, 3, 1, 1, 1, 1)
    qq = pp.reshape(1, 1, 1, 1, n, 3, n, 3)
    kk = k.reshape(n, 3, n, 3, 1, 1, 1, 1) * k.reshape(1, 1, 1, 1, n, 3, n, 3)
    pq2 = ((big_p.reshape(n, 3, n, 3, 1, 1, 1, 1, 3) - big_p.reshape(1, 1, 1, 1, n, 3, n, 3, 3)) ** 2).sum(-1)
    eri_prim = 2 * math.pi**2.5 / (pp * qq * torch.sqrt(pp + qq)) * kk * boys0(pp * qq / (pp + qq) * pq2)
    w4 = w.reshape(1, 3, 1, 3, 1, 1, 1, 1) * w.reshape(1, 1, 1, 1, 1, 3, 1, 3)
    eri = (w4 * eri_prim).sum(dim=(1, 3, 5, 7))

    dist = torch.cdist(centre, centre)
    nuclear = float(sum(1 / dist[i, j] for i in range(n) for j in range(i + 1, n)))
    return Integrals(contract(s_prim), contract(t_prim + v_prim), eri, nuclear)


@dataclass
class HartreeFock:
    """Result of restricted Hartree-Fock: total energy (nuclear repulsion included), orbital energies
    (n,), MO coefficients C (n AOs, n MOs; columns are orbitals, lowest energy first)."""

    energy: float
    orbital_energies: torch.Tensor
    coefficients: torch.Tensor


def hartree_fock(ints: Integrals, electrons: int, max_iter: int = 100, tol: float = 1e-12) -> HartreeFock:
    """Closed-shell SCF (Szabo & Ostlund Sec. 3.4.6) from the core-Hamiltonian guess."""
    if electrons % 2 or not 0 < electrons <= 2 * ints.core.shape[0]:
        raise ArchlabError(f"restricted Hartree-Fock needs an even number of electrons <= {2 * ints.core.shape[0]}")
    occ = electrons // 2
    evals, evecs = torch.linalg.eigh(ints.overlap)
    x = evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # S^(-1/2), symmetric orthogonalization
    density = torch.zeros_like(ints.core)
    for _ in range(max_iter):
        # G_mn = sum_ls P_ls [ (mn|sl) - 1/2 (ml|sn) ]
        coulomb = torch.einsum("ls,mnsl->mn", density, ints.repulsion)
        exchange = torch.einsum("ls,mlsn->mn", density, ints.repulsion)
        fock = ints.core + coulomb - 0.5 * exchange
        e, c_prime = torch.linalg.eigh(x.T @ fock @ x)
        c = x @ c_prime
        new_density = 2 * c[:, :occ] @ c[:, :occ].T
        converged = (new_density - density).abs().max() < tol
        density = new_density
        if converged:
            break
    coulomb = torch.einsum("ls,mnsl->mn", density, ints.repulsion)
    exchange = torch.einsum("ls,mlsn->mn", density, ints.repulsion)
    fock = ints.core + coulomb - 0.5 * exchange
    energy = 0.5 * float((density * (ints.core + fock)).sum()) + ints.nuclear
    return HartreeFock(energy, e, c)


# -- Jordan-Wigner: fermionic operators as sums of Pauli strings with complex coefficients -----------
_PRODUCT = {  # single-qubit Pauli products: (a, b) -> (phase, a b)
    ("I", "I"): (1, "I"), ("I", "X"): (1, "X"), ("I", "Y"): (1, "Y"), ("I", "Z"): (1, "Z"),
    ("X", "I"): (1, "X"), ("X", "X"): (1, "I"), ("X", "Y"): (1j, "Z"), ("X", "Z"): (-1j, "Y"),
    ("Y", "I"): (1, "Y"), ("Y", "X"): (-1j, "Z"), ("Y", "Y"): (1, "I"), ("Y", "Z"): (1j, "X"),
    ("Z", "I"): (1, "Z"), ("Z", "X"): (1j, "Y"), ("Z", "Y"): (-1j, "X"), ("Z", "Z"): (1, "I"),
}
Operator = dict[str, complex]


def _multiply(a: Operator, b: Operator) -> Operator:
    out: Operator = {}
    for wa, ca in a.items():
        for wb, cb in b.items():
            phase, word = 1 + 0j, []
            for x, y in zip(wa, wb, strict=True):
                ph, ch = _PRODUCT[(x, y)]
                phase *= ph
                word.append(ch)
            key = "".join(word)
            out[key] = out.get(key, 0) + phase * ca * cb
    return out


def ladder(j: int, n: int, create: bool) -> Operator:
    """Jordan-Wigner image of a+_j (``create``) or a_j on n spin orbitals: Z...Z (X -+ iY)/2 I...I."""
    prefix, suffix = "Z" * j, "I" * (n - j - 1)
    sign = -1 if create else 1
    return {prefix + "X" + suffix: 0.5, prefix + "Y" + suffix: 0.5j * sign}


def fermionic_hamiltonian(h_mo: torch.Tensor, eri_mo: torch.Tensor, constant: float, cutoff: float = 1e-12) -> PauliSum:
    """``constant + sum h_pq a+_p a_q + 1/2 sum (pq|rs) a+_p a+_r a_s a_q`` over spin orbitals (2k up,
    2k+1 down), Jordan-Wigner transformed. ``h_mo`` (m, m) and ``eri_mo`` (m, m, m, m) are over spatial
    orbitals, chemists' order."""
    m = h_mo.shape[0]
    n = 2 * m
    up = [ladder(j, n, True) for j in range(n)]
    down = [ladder(j, n, False) for j in range(n)]
    total: Operator = {"I" * n: complex(constant)}

    def add(op: Operator, scale: float) -> None:
        for w, c in op.items():
            total[w] = total.get(w, 0) + scale * c

    for p in range(m):
        for q in range(m):
            if abs(h_mo[p, q]) > cutoff:
                for s in (0, 1):
                    add(_multiply(up[2 * p + s], down[2 * q + s]), float(h_mo[p, q]))
    for p in range(m):
        for q in range(m):
            for r in range(m):
                for s_ in range(m):
                    v = float(eri_mo[p, q, r, s_])
                    if abs(v) <= cutoff:
                        continue
                    for sig in (0, 1):
                        for tau in (0, 1):
                            a, b = 2 * p + sig, 2 * r + tau
                            if a == b:  # a+_a a+_a = 0
                                continue
                            op = _multiply(_multiply(up[a], up[b]), _multiply(down[2 * s_ + tau], down[2 * q + sig]))
                            add(op, 0.5 * v)
    for w, c in total.items():
        if abs(c.imag) > 1e-10:
            raise RuntimeError(f"Jordan-Wigner gave a non-Hermitian term {w}: {c}")
    return PauliSum([(c.real, w) for w, c in total.items() if abs(c) > cutoff])


@dataclass
class Molecule:
    """A molecule's qubit Hamiltonian with its Hartree-Fock reference."""

    hamiltonian: PauliSum
    hf_energy: float
    hf_state: str
    """Occupation bit string of the Hartree-Fock determinant (wire 0 = spin orbital 0)."""


def hydrogen_chain(coords_bohr: torch.Tensor) -> Molecule:
    """The STO-3G qubit Hamiltonian of neutral hydrogen atoms at ``coords_bohr`` (atoms, 3)."""
    atoms = coords_bohr.shape[0]
    if coords_bohr.dim() != 2 or coords_bohr.shape[1] != 3 or not 2 <= atoms <= 4 or atoms % 2:
        raise ArchlabError("hydrogen_chain takes (atoms, 3) coordinates of 2 or 4 atoms")
    ints = sto3g_integrals(coords_bohr)
    hf = hartree_fock(ints, electrons=atoms)
    c = hf.coefficients
    h_mo = c.T @ ints.core @ c
    eri_mo = torch.einsum("ap,bq,cr,ds,abcd->pqrs", c, c, c, c, ints.repulsion)
    ham = fermionic_hamiltonian(h_mo, eri_mo, ints.nuclear)
    return Molecule(ham, hf.energy, "1" * atoms + "0" * atoms)


def h2(bond_length_angstrom: float) -> Molecule:
    """H2 along z with the given bond length in angstrom (4 qubits; the HF state is |1100>)."""
    if not 0.05 <= bond_length_angstrom <= 20:
        raise ArchlabError(f"bond length must be in [0.05, 20] angstrom, got {bond_length_angstrom}")
    r = bond_length_angstrom / BOHR_ANGSTROM
    return hydrogen_chain(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, r]], dtype=torch.float64))
