"""Quantum kernels: the ZZ fidelity kernel equals qiskit-machine-learning's FidelityQuantumKernel, is a valid
kernel (symmetric, unit diagonal, positive semi-definite), and separates Havlíček et al.'s ad hoc data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from archlab.errors import ArchlabError
from archlab.quantum.kernels import ad_hoc_data, fidelity_kernel

pytestmark = pytest.mark.usefixtures("single_thread")


def test_fidelity_kernel_equals_qiskit_machine_learning():
    pytest.importorskip("qiskit_machine_learning")
    from qiskit.circuit.library import zz_feature_map
    from qiskit_machine_learning.kernels import FidelityQuantumKernel

    rng = np.random.default_rng(0)
    for n in (2, 3):
        x, y = rng.uniform(0, 2 * np.pi, (6, n)), rng.uniform(0, 2 * np.pi, (4, n))
        ref = FidelityQuantumKernel(feature_map=zz_feature_map(feature_dimension=n, reps=2, entanglement="full"))
        ours = fidelity_kernel(torch.tensor(x), torch.tensor(y)).numpy()
        np.testing.assert_allclose(ours, ref.evaluate(x, y), atol=1e-10)


def test_fidelity_kernel_is_a_kernel():
    x = torch.rand(12, 3, dtype=torch.float64) * 6
    k = fidelity_kernel(x)
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k.diagonal(), torch.ones(12, dtype=torch.float64))
    assert torch.linalg.eigvalsh(k).min() > -1e-10
    with pytest.raises(ArchlabError, match="same n"):
        fidelity_kernel(x, torch.zeros(2, 2))


def test_svc_on_the_ad_hoc_data_reaches_test_accuracy_one():
    """Havlíček et al. 2019 / qiskit-machine-learning's kernel tutorial: 20 training and 5 test points per
    class, gap 0.3, SVC on the precomputed ZZ kernel classifies the test set perfectly."""
    svm = pytest.importorskip("sklearn.svm")
    for seed in (0, 1):
        xtr, ytr, xte, yte = ad_hoc_data(20, 5, seed=seed)
        assert xtr.shape == (40, 2) and ytr.float().mean() == 0.5 and len(xte) == 10
        clf = svm.SVC(kernel="precomputed").fit(fidelity_kernel(xtr).numpy(), ytr.numpy())
        assert clf.score(fidelity_kernel(xte, xtr).numpy(), yte.numpy()) == 1.0
