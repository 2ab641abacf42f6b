"""Density-matrix mode: equal to PennyLane's default.mixed with depolarizing and amplitude-damping noise,
equal to the statevector simulator without noise, and a valid density matrix throughout."""

from __future__ import annotations

import pytest
import torch

from archlab.errors import ArchlabError
from archlab.quantum import Circuit, PauliSum
from archlab.quantum.density import DensityCircuit

pytestmark = pytest.mark.usefixtures("single_thread")
H = PauliSum({"ZZI": 0.7, "XIY": -0.4, "IYZ": 1.1})


def _noisy(c, theta, p, gamma):
    c.h(0).ry(theta[0], 1).cnot(0, 1).depolarizing(p, 1).crx(theta[1], 1, 2).amplitude_damping(gamma, 2)
    c.rot(theta[2], theta[3], theta[0], 0).cz(0, 2).depolarizing(p, 0).amplitude_damping(gamma, 1)
    return c


def test_equals_pennylane_default_mixed():
    qml = pytest.importorskip("pennylane")
    theta = torch.tensor([0.4, -1.3, 2.2, 0.9], dtype=torch.float64)
    dev = qml.device("default.mixed", wires=3)

    @qml.qnode(dev, interface="torch")
    def ref(t, p, gamma):
        qml.Hadamard(0)
        qml.RY(t[0], 1)
        qml.CNOT([0, 1])
        qml.DepolarizingChannel(p, 1)
        qml.CRX(t[1], wires=[1, 2])
        qml.AmplitudeDamping(gamma, 2)
        qml.Rot(t[2], t[3], t[0], wires=0)
        qml.CZ([0, 2])
        qml.DepolarizingChannel(p, 0)
        qml.AmplitudeDamping(gamma, 1)
        return qml.density_matrix([0, 1, 2])

    rho = _noisy(DensityCircuit(3), theta, 0.1, 0.3).density_matrix()
    torch.testing.assert_close(rho, ref(theta, 0.1, 0.3).to(rho.dtype), atol=1e-10, rtol=0)
    ours = _noisy(DensityCircuit(3), theta, 0.1, 0.3).expval(H)
    assert ours.item() == pytest.approx(float(torch.trace(rho @ H.matrix()).real), abs=1e-12)


def test_noiseless_equals_the_statevector_and_gradients_flow():
    theta = torch.tensor([0.4, -1.3, 2.2, 0.9], dtype=torch.float64, requires_grad=True)
    rho = _noisy(DensityCircuit(3), theta, 0.0, 0.0).density_matrix()
    c = Circuit(3).h(0).ry(theta[0], 1).cnot(0, 1).crx(theta[1], 1, 2).rot(theta[2], theta[3], theta[0], 0).cz(0, 2)
    psi = c.state()
    torch.testing.assert_close(rho, torch.outer(psi, psi.conj()), atol=1e-12, rtol=0)
    (g_mixed,) = torch.autograd.grad(_noisy(DensityCircuit(3), theta, 0.0, 0.0).expval(H), theta)
    (g_pure,) = torch.autograd.grad(c.expval(H), theta)
    torch.testing.assert_close(g_mixed, g_pure, atol=1e-10, rtol=0)


def test_channels_keep_a_valid_density_matrix():
    theta = torch.tensor([0.4, -1.3, 2.2, 0.9], dtype=torch.float64)
    rho = _noisy(DensityCircuit(3), theta, torch.tensor([0.0, 0.2, 0.9], dtype=torch.float64), 0.5).density_matrix()
    assert rho.shape == (3, 8, 8)
    torch.testing.assert_close(rho, rho.conj().transpose(-1, -2))
    torch.testing.assert_close(rho.diagonal(dim1=1, dim2=2).sum(-1).real, torch.ones(3, dtype=torch.float64))
    assert torch.linalg.eigvalsh(rho).min() > -1e-12
    # purity falls as depolarizing noise grows
    purity = torch.einsum("bij,bji->b", rho, rho).real
    assert purity[0] > purity[1] > purity[2]
    # full amplitude damping sends every qubit it touches to |0>
    c = DensityCircuit(1).x(0).amplitude_damping(1.0, 0)
    torch.testing.assert_close(c.probs(), torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ArchlabError, match="density_matrix"):
        c.state()
    with pytest.raises(ArchlabError, match=r"\[0, 1\]"):
        DensityCircuit(1).depolarizing(1.5, 0)
