"""H2 / STO-3G: the Hamiltonian built here equals PennyLane's qchem, Hartree-Fock matches Szabo & Ostlund,
the Givens ansatz reaches the exact ground state, and the vqe loop trains, saves, resumes and evaluates."""

from __future__ import annotations

import json

import pytest
import torch

import archlab
from archlab.errors import ArchlabError
from archlab.quantum import Circuit
from archlab.quantum.ansatz import givens_doubles
from archlab.quantum.chemistry import BOHR_ANGSTROM, h2, hydrogen_chain, sto3g_integrals
from archlab.recipe import from_dict
from archlab.runner import evaluate, train

pytestmark = pytest.mark.usefixtures("single_thread")


def test_h2_hamiltonian_equals_pennylane_qchem():
    qml = pytest.importorskip("pennylane")
    np = pytest.importorskip("numpy")
    for bond in (0.7414, 1.6):
        mol = qml.qchem.Molecule(["H", "H"], np.array([[0.0, 0.0, 0.0], [0.0, 0.0, bond / BOHR_ANGSTROM]]))
        ref, wires = qml.qchem.molecular_hamiltonian(mol)
        assert wires == 4
        ours = h2(bond).hamiltonian
        # Same matrix (orbital signs could flip the sign of the XXYY-type terms; they do not here).
        torch.testing.assert_close(ours.matrix(), torch.tensor(qml.matrix(ref, wire_order=range(4))),
                                   atol=1e-7, rtol=0)
    assert h2(0.7414).hamiltonian.ground_energy() == pytest.approx(-1.137270, abs=1e-6)  # PennyLane qchem


def test_hartree_fock_and_integrals_match_szabo_ostlund():
    """Szabo & Ostlund, Sec. 3.5.2 (H2, STO-3G, R = 1.4 bohr): S12 = 0.6593, E_HF = -1.1167 Ha."""
    ints = sto3g_integrals(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]], dtype=torch.float64))
    assert ints.overlap[0, 1].item() == pytest.approx(0.6593, abs=1e-4)
    assert ints.overlap.diagonal().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert ints.repulsion[0, 0, 0, 0].item() == pytest.approx(0.7746, abs=1e-4)
    mol = hydrogen_chain(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]], dtype=torch.float64))
    assert mol.hf_energy == pytest.approx(-1.1167, abs=1e-4)
    # The HF determinant's energy is <HF|H|HF>
    hf = Circuit(4).basis_state(mol.hf_state).expval(mol.hamiltonian)
    assert hf.item() == pytest.approx(mol.hf_energy, abs=1e-10)


def test_givens_ansatz_reaches_the_exact_ground_energy():
    mol = h2(1.2)
    thetas = torch.linspace(-3.14, 3.14, 2001, dtype=torch.float64)
    energies = givens_doubles(Circuit(4), thetas, mol.hf_state).expval(mol.hamiltonian)  # one batched circuit
    assert energies.min().item() == pytest.approx(mol.hamiltonian.ground_energy(), abs=1e-5)
    assert (energies >= mol.hamiltonian.ground_energy() - 1e-12).all()  # the variational principle


def test_bad_molecules_are_one_line_errors():
    with pytest.raises(ArchlabError, match="bond length"):
        h2(-1.0)
    with pytest.raises(ArchlabError, match="2 or 4 atoms"):
        hydrogen_chain(torch.zeros(3, 3, dtype=torch.float64))


VQE = {"name": "vqe_tiny", "seed": 0,
       "model": {"name": "vqe_h2", "points": 3, "bond_min": 0.6, "bond_max": 2.0},
       "optim": {"name": "adam", "lr": 0.1},
       "train": {"loop": "vqe", "steps": 60, "eval_every": 20, "log_every": 20, "checkpoint_every": 20},
       "expect": {"metric": "max_error_mha", "compare": "max", "value": 1.6, "source": "chemical accuracy"}}


def _quiet(raw, out, **kw):
    return train(from_dict(raw), out=out, progress=False, log=lambda _m: None, **kw)


def test_vqe_loop_reaches_chemical_accuracy_and_evaluates(tmp_path):
    summary = _quiet(VQE, tmp_path / "run")
    assert summary["passed"] and summary["metrics"]["max_error_mha"] < 1.6
    assert summary["metrics"]["hf_error_eq_mha"] > 15  # the correlation energy HF misses at equilibrium
    assert (tmp_path / "run" / "plots" / "curve.png").is_file()
    rows = (tmp_path / "run" / "curve.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("bond_angstrom")
    model = archlab.load(tmp_path / "run")
    assert type(model).registry_name == "vqe_h2"
    again = evaluate(tmp_path / "run", device="cpu")
    assert again["max_error_mha"] == pytest.approx(summary["metrics"]["max_error_mha"], abs=1e-9)
    meta = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert meta["metrics"]["best_step"] > 0


def test_vqe_loop_resumes_exactly(assert_resume_exact):
    assert_resume_exact({**VQE, "model": {**VQE["model"], "ansatz": "hea", "layers": 1},
                         "train": {**VQE["train"], "steps": 8, "eval_every": 4, "checkpoint_every": 4}})


def test_vqe_loop_refuses_other_families():
    with pytest.raises(ArchlabError):
        from_dict({**VQE, "model": {"name": "mlp"}})
