"""Variational quantum eigensolver for H2 in STO-3G along a potential energy curve (Peruzzo et al. 2014).

    E(theta_k) = <psi(theta_k)| H(R_k) |psi(theta_k)>  >=  E_exact(R_k)      (variational principle)

One set of circuit angles per bond length R_k; all points are simulated at once as one batched circuit
(each batch element its own angles). Every H(R_k) (``archlab.quantum.chemistry.h2``: Hartree-Fock with
STO-3G integrals + Jordan-Wigner, 4 qubits) is a sum over the same 15 Pauli words, so the energies are

    E_k = sum_w c_kw <P_w>_k          c: (points, words) buffer,  <P_w>_k from the batched state

The ansatz is ``givens`` (HF state + one double excitation: exact for H2) or ``hea`` (hardware-efficient,
``layers`` of RY RZ + CNOT ladder from the HF state). ``exact_energies`` diagonalizes each H(R_k);
``hf_energies`` are the Hartree-Fock energies.

Shapes: ``forward(index)`` (B,) long indices of curve points -> (B,) energies in hartree; ``forward()``:
every point (points,).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ...quantum import Circuit, PauliSum
from ...quantum.ansatz import givens_doubles, hardware_efficient, hardware_efficient_shape
from ...quantum.chemistry import Molecule, h2
from ...quantum.observables import expectation
from ...registry import register
from ..base import ArchModel


@functools.lru_cache(maxsize=512)
def _molecule(bond_length: float) -> Molecule:
    return h2(bond_length)


@dataclass
class VQEH2Config:
    points: int = 21
    """Bond lengths on the curve, evenly spaced from ``bond_min`` to ``bond_max`` (the equilibrium is added)."""
    bond_min: float = 0.5
    """Shortest bond length (angstrom)."""
    bond_max: float = 2.5
    """Longest bond length (angstrom)."""
    equilibrium: float = 0.7414
    """A bond length always on the curve: the experimental equilibrium of H2 (angstrom)."""
    ansatz: str = "givens"
    """``givens`` (double excitation on the HF state) or ``hea`` (hardware-efficient)."""
    layers: int = 3
    """Layers of the hardware-efficient ansatz (unused by ``givens``)."""
    init_std: float = 0.1
    """Standard deviation of the random initial angles."""

    def __post_init__(self) -> None:
        if not 1 <= self.points <= 200:
            raise ValueError(f"points must be in [1, 200], got {self.points}")
        if not 0.2 <= self.bond_min <= self.bond_max <= 10 or not 0.2 <= self.equilibrium <= 10:
            raise ValueError("need 0.2 <= bond_min <= bond_max <= 10 and 0.2 <= equilibrium <= 10 (angstrom)")
        if self.ansatz not in ("givens", "hea"):
            raise ValueError(f"ansatz must be 'givens' or 'hea', got {self.ansatz!r}")
        if not 1 <= self.layers <= 50 or not 0 <= self.init_std <= 10:
            raise ValueError("need 1 <= layers <= 50 and 0 <= init_std <= 10")


@register("vqe_h2", family="quantum")
class VQEH2(ArchModel):
    """VQE on the H2 (STO-3G, 4 qubits) potential energy curve: one circuit's angles per bond length."""

    config_class = VQEH2Config
    export_blocker = ("statevector simulation in complex128 arithmetic: the ONNX exporter does not translate complex "
                      "tensors")

    def __init__(self, config: VQEH2Config) -> None:
        super().__init__(config)
        c = config
        grid = torch.linspace(c.bond_min, c.bond_max, c.points, dtype=torch.float64).tolist()
        self.bond_lengths = sorted({round(r, 6) for r in grid} | {c.equilibrium})
        mols = [_molecule(r) for r in self.bond_lengths]
        self.words = sorted({w for m in mols for w in m.hamiltonian.terms})
        self.hf_state = mols[0].hf_state
        self.register_buffer("coeffs", torch.tensor([[m.hamiltonian.terms.get(w, 0.0) for w in self.words]
                                                     for m in mols], dtype=torch.float64), persistent=False)
        self.exact_energies = torch.tensor([m.hamiltonian.ground_energy() for m in mols], dtype=torch.float64)
        self.hf_energies = torch.tensor([m.hf_energy for m in mols], dtype=torch.float64)
        shape = () if c.ansatz == "givens" else hardware_efficient_shape(c.layers, 4)
        self.theta = nn.Parameter(c.init_std * torch.randn(shape + (len(mols),), dtype=torch.float64))

    @property
    def equilibrium_index(self) -> int:
        return self.bond_lengths.index(self.config.equilibrium)

    def forward(self, index: torch.Tensor | None = None) -> torch.Tensor:
        idx = torch.arange(len(self.bond_lengths)) if index is None else index
        theta = self.theta[..., idx]
        c = Circuit(4)
        if self.config.ansatz == "givens":
            givens_doubles(c, theta, self.hf_state)
        else:
            hardware_efficient(c, theta, self.hf_state)
        psi = c.simulate()  # (B, 2, 2, 2, 2)
        pauli = torch.stack([expectation(psi, PauliSum({w: 1.0})) for w in self.words], dim=-1)  # (B, words)
        return (pauli * self.coeffs[idx]).sum(-1)

    @classmethod
    def example_input(cls, config: VQEH2Config, batch_size: int = 2) -> torch.Tensor:
        return torch.arange(batch_size) % (config.points + 1)
