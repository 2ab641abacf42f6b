"""archlab.quantum's simulator: equal to PennyLane's default.qubit on random circuits over every gate
(states, expectation values of random Pauli sums, their gradients), three gradient methods that agree,
and the properties of a simulator (unitarity, normalization, sampling converges to probs)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from archlab.errors import ArchlabError
from archlab.quantum import Circuit, PauliSum
from archlab.quantum.statevector import apply_matrix

pytestmark = pytest.mark.usefixtures("single_thread")

# (name, number of wires, number of angles); rot takes three.
GATES = [("x", 1, 0), ("y", 1, 0), ("z", 1, 0), ("h", 1, 0), ("s", 1, 0), ("t", 1, 0), ("rx", 1, 1),
         ("ry", 1, 1), ("rz", 1, 1), ("rot", 1, 3), ("phase", 1, 1), ("cnot", 2, 0), ("cz", 2, 0),
         ("swap", 2, 0), ("crx", 2, 1), ("cry", 2, 1), ("crz", 2, 1), ("toffoli", 3, 0),
         ("double_excitation", 4, 1), ("unitary", 2, 0)]


def random_circuit(rng: random.Random, n: int, depth: int, n_angles: int) -> list[tuple[str, tuple, list[int]]]:
    """A gate list: (name, wires, indices into the angle vector); every gate that fits appears."""
    fitting = [g for g in GATES if g[1] <= n]
    ops = []
    for k in range(depth):
        name, arity, angles = fitting[k] if k < len(fitting) else rng.choice(fitting)
        ops.append((name, tuple(rng.sample(range(n), arity)), [rng.randrange(n_angles) for _ in range(angles)]))
    rng.shuffle(ops)
    return ops


def random_unitary(gen: torch.Generator, dim: int) -> torch.Tensor:
    a = torch.randn(dim, dim, dtype=torch.complex128, generator=gen)
    q, r = torch.linalg.qr(a)
    return (q * (r.diagonal() / r.diagonal().abs())).contiguous()


def random_pauli_sum(rng: random.Random, n: int, terms: int) -> PauliSum:
    return PauliSum([(rng.uniform(-1, 1), "".join(rng.choice("IXYZ") for _ in range(n))) for _ in range(terms)])


def build_ours(n: int, ops, theta: torch.Tensor, mats: list[torch.Tensor]) -> Circuit:
    """theta: (A,) or (A, B) angles."""
    c = Circuit(n)
    m = iter(mats)
    for name, wires, idx in ops:
        if name == "unitary":
            c.unitary(next(m), list(wires))
        else:
            getattr(c, name)(*[theta[i] for i in idx], *wires)
    return c


def build_pennylane(qml, ops, theta: torch.Tensor, mats: list[torch.Tensor]) -> None:
    table = {"x": qml.PauliX, "y": qml.PauliY, "z": qml.PauliZ, "h": qml.Hadamard, "s": qml.S, "t": qml.T,
             "rx": qml.RX, "ry": qml.RY, "rz": qml.RZ, "rot": qml.Rot, "phase": qml.PhaseShift, "cnot": qml.CNOT,
             "cz": qml.CZ, "swap": qml.SWAP, "crx": qml.CRX, "cry": qml.CRY, "crz": qml.CRZ,
             "toffoli": qml.Toffoli, "double_excitation": qml.DoubleExcitation}
    m = iter(mats)
    for name, wires, idx in ops:
        if name == "unitary":
            qml.QubitUnitary(next(m), wires=list(wires))
        else:
            table[name](*[theta[i] for i in idx], wires=list(wires))


def pennylane_observable(qml, obs: PauliSum):
    letters = {"I": qml.Identity, "X": qml.PauliX, "Y": qml.PauliY, "Z": qml.PauliZ}
    coeffs, words = [], []
    for word, c in obs.terms.items():
        coeffs.append(c)
        words.append(qml.prod(*[letters[ch](i) for i, ch in enumerate(word)]))
    return qml.Hamiltonian(coeffs, words)


@pytest.mark.parametrize("seed", range(25))
def test_random_circuits_equal_pennylane(seed):
    """25 seeds x (1 unbatched + 1 batched case) x 1..8 qubits = 200+ random circuits over every gate:
    statevectors, <random Pauli sum> and its gradient (three methods) equal default.qubit to 1e-10."""
    qml = pytest.importorskip("pennylane")
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for n in range(1, 9):
        batch = None if n % 2 else 3  # batched on even qubit counts, unbatched on odd
        depth, n_angles = 3 * n + 4, 4
        ops = random_circuit(rng, n, depth, n_angles)
        mats = [random_unitary(gen, 4) for name, _, _ in ops if name == "unitary"]
        shape = (n_angles,) if batch is None else (n_angles, batch)
        theta = (torch.rand(shape, dtype=torch.float64, generator=gen) * 4 * math.pi - 2 * math.pi)
        obs = random_pauli_sum(rng, n, 3)
        dev = qml.device("default.qubit", wires=n)

        @qml.qnode(dev, interface="torch", diff_method="backprop")
        def reference(t, ops=ops, mats=mats, obs=obs):
            build_pennylane(qml, ops, t, mats)
            return qml.state(), qml.expval(pennylane_observable(qml, obs))

        state = build_ours(n, ops, theta, mats).state()
        assert state.shape == ((2**n,) if batch is None else (batch, 2**n))
        t_ref = theta.clone().requires_grad_(True)
        state_ref, e_ref = reference(t_ref)
        torch.testing.assert_close(state, state_ref.detach().reshape(state.shape), atol=1e-10, rtol=0)
        (g_ref,) = torch.autograd.grad(e_ref.sum(), t_ref)
        # parameter-shift costs 2-4 simulations per angle: checked on up to 5 qubits here, everywhere below
        methods = ("backprop", "adjoint", "parameter-shift") if n <= 5 else ("backprop", "adjoint")
        for method in methods:
            t = theta.clone().requires_grad_(True)
            e = build_ours(n, ops, t, mats).expval(obs, diff_method=method)
            (g,) = torch.autograd.grad(e.sum(), t)
            torch.testing.assert_close(e, e_ref.reshape(e.shape).to(e.dtype), atol=1e-10, rtol=0)
            torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=0, msg=lambda m, meth=method: f"{meth}: {m}")


def test_probs_and_marginals_equal_pennylane():
    qml = pytest.importorskip("pennylane")
    theta = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    dev = qml.device("default.qubit", wires=3)

    @qml.qnode(dev, interface="torch")
    def ref(wires):
        qml.Hadamard(0)
        qml.RY(theta[0], 1)
        qml.CRX(theta[1], wires=[1, 2])
        qml.RZ(theta[2], 0)
        qml.CNOT([0, 2])
        return qml.probs(wires=wires)

    c = Circuit(3).h(0).ry(theta[0], 1).crx(theta[1], 1, 2).rz(theta[2], 0).cnot(0, 2)
    for wires in ([0, 1, 2], [2, 0], [1], [2, 1, 0]):
        torch.testing.assert_close(c.probs(wires), ref(wires), atol=1e-12, rtol=0)


def test_wire_zero_is_the_most_significant_bit():
    assert torch.argmax(Circuit(3).x(0).state().abs()).item() == 0b100
    assert torch.argmax(Circuit(3).x(2).state().abs()).item() == 0b001
    # cnot(control, target): the control is the first wire given
    assert torch.argmax(Circuit(2).x(1).cnot(1, 0).state().abs()).item() == 0b11


def test_gates_are_unitary_and_states_normalized():
    gen = torch.Generator().manual_seed(0)
    theta = torch.rand(5, dtype=torch.float64, generator=gen) * 6
    c = Circuit(4)
    for name, arity, angles in GATES:
        if name in ("unitary", "rot"):
            continue
        getattr(c, name)(*([theta[:]] * angles), *range(arity))
    for op in c.ops:
        u = c.op_matrix(op)
        eye = torch.eye(u.shape[-1], dtype=u.dtype).expand_as(u)
        torch.testing.assert_close(u @ u.conj().transpose(-1, -2), eye, atol=1e-12, rtol=0)
    norms = c.state().abs().square().sum(-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-12, rtol=0)


def test_apply_matrix_equals_the_full_kronecker_matrix():
    """Contracting only the touched axes equals multiplying by the 2^n x 2^n matrix (built here only)."""
    gen = torch.Generator().manual_seed(1)
    psi = torch.randn(1, 2, 2, 2, dtype=torch.complex128, generator=gen)
    u = random_unitary(gen, 2)
    full = torch.kron(torch.kron(torch.eye(2, dtype=u.dtype), u), torch.eye(2, dtype=u.dtype))  # u on wire 1
    torch.testing.assert_close(apply_matrix(psi, u, (1,)).reshape(-1), full @ psi.reshape(-1))
    cnot = torch.eye(4, dtype=u.dtype)[[0, 1, 3, 2]]
    # cnot(2, 0) = SWAP-conjugated: compare with the permutation of basis states it makes
    out = apply_matrix(psi, cnot, (2, 0)).reshape(2, 2, 2)
    expect = psi.reshape(2, 2, 2).clone()
    expect[:, :, 1] = psi.reshape(2, 2, 2)[[1, 0], :, 1]
    torch.testing.assert_close(out, expect)


def test_sampling_frequencies_converge_to_probs():
    """Chi-square test of 20 000 shots against probs (fixed generator; the 99.9% quantile of chi2 with
    7 degrees of freedom is 24.3)."""
    c = Circuit(3).h(0).ry(0.7, 1).cnot(0, 2).rx(1.9, 2)
    p = c.probs()
    bits = c.sample(20_000, torch.Generator().manual_seed(0))
    assert bits.shape == (20_000, 3) and set(bits.unique().tolist()) <= {0, 1}
    idx = bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]
    counts = torch.bincount(idx, minlength=8).double()
    expected = 20_000 * p
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 24.3
    batched = Circuit(2).ry(torch.tensor([0.0, math.pi], dtype=torch.float64), 0).sample(50)
    assert batched.shape == (2, 50, 2) and batched[0, :, 0].eq(0).all() and batched[1, :, 0].eq(1).all()


def test_parameter_shift_equals_finite_differences_on_a_shared_parameter():
    """An angle used by two gates: both contributions are summed (autograd chains the per-gate gradients)."""
    def energy(a: torch.Tensor, method: str) -> torch.Tensor:
        return Circuit(2).ry(a, 0).crx(2 * a, 0, 1).rz(a, 1).h(1).expval(PauliSum({"ZX": 0.5, "XZ": 1.0}), method)

    a = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    eps = 1e-6
    fd = (energy(a.detach() + eps, "backprop") - energy(a.detach() - eps, "backprop")) / (2 * eps)
    for method in ("parameter-shift", "adjoint", "backprop"):
        (g,) = torch.autograd.grad(energy(a, method), a)
        assert g.item() == pytest.approx(fd.item(), abs=1e-8)


def test_complex64_runs_in_single_precision():
    c = Circuit(2, dtype=torch.complex64).h(0).rx(0.3, 1)
    assert c.state().dtype == torch.complex64 and c.expval("ZZ").dtype == torch.float32


def test_bad_input_is_one_line():
    with pytest.raises(ArchlabError, match="wire 3"):
        Circuit(2).rx(0.1, 3)
    with pytest.raises(ArchlabError, match="distinct"):
        Circuit(2).cnot(1, 1)
    with pytest.raises(ArchlabError, match="acts on 2 qubits"):
        Circuit(3).expval("ZZ")
    with pytest.raises(ArchlabError, match="I, X, Y, Z"):
        PauliSum({"ZA": 1.0})
    with pytest.raises(ArchlabError, match="batch of 3"):
        Circuit(1).rx(torch.zeros(2), 0).ry(torch.zeros(3), 0)
    with pytest.raises(ArchlabError, match="diff_method"):
        Circuit(1).expval("Z", diff_method="finite")
    with pytest.raises(ArchlabError, match="backprop"):
        Circuit(1).unitary(torch.eye(2, dtype=torch.complex128, requires_grad=True), 0).expval("Z", "adjoint")
    with pytest.raises(ArchlabError, match="n_qubits"):
        Circuit(0)
