"""QuantumLayer and the quantum classifiers: batched = per-example, gradients reach inputs and weights
(equal by every diff_method and to PennyLane's TorchLayer), and the re-uploading classifier learns the circle."""

from __future__ import annotations

import pytest
import torch

import archlab
from archlab.data import load_dataset
from archlab.quantum import Circuit
from archlab.quantum.layer import QuantumLayer
from archlab.recipe import from_dict
from archlab.runner import train

pytestmark = pytest.mark.usefixtures("single_thread")


def _circuit(c: Circuit, inputs: torch.Tensor, w: torch.Tensor) -> None:
    for q in range(c.n_qubits):
        c.ry(inputs[q], q)
    for layer in w:
        for q in range(c.n_qubits):
            c.rot(layer[q, 0], layer[q, 1], layer[q, 2], q)
        c.cnot(0, 1).crz(layer[0, 0], 1, 2)


def test_quantum_layer_batch_equals_one_example_at_a_time_and_methods_agree():
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    grads = {}
    for method in ("backprop", "parameter-shift", "adjoint"):
        torch.manual_seed(1)
        layer = QuantumLayer(3, {"w": (2, 3, 3)}, _circuit, ["ZII", "IXI", "YYZ"], diff_method=method)
        out = layer(x)
        assert out.shape == (5, 3)
        singles = torch.cat([layer(x[i : i + 1]) for i in range(5)])
        torch.testing.assert_close(out, singles, atol=1e-12, rtol=0)
        grads[method] = torch.autograd.grad(out.square().sum(), [x, layer.weights["w"]])
    for method in ("parameter-shift", "adjoint"):
        for a, b in zip(grads[method], grads["backprop"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_quantum_layer_equals_pennylane_torchlayer():
    qml = pytest.importorskip("pennylane")
    dev = qml.device("default.qubit", wires=3)

    @qml.qnode(dev, interface="torch", diff_method="backprop")
    def node(inputs, w):
        for q in range(3):
            qml.RY(inputs[..., q], q)
        for layer in w:
            for q in range(3):
                qml.Rot(layer[q, 0], layer[q, 1], layer[q, 2], wires=q)
            qml.CNOT([0, 1])
            qml.CRZ(layer[0, 0], wires=[1, 2])
        return [qml.expval(qml.Z(0)), qml.expval(qml.X(1)), qml.expval(qml.Y(0) @ qml.Y(1) @ qml.Z(2))]

    torch.manual_seed(0)
    ref = qml.qnn.TorchLayer(node, {"w": (2, 3, 3)})
    ours = QuantumLayer(3, {"w": (2, 3, 3)}, _circuit, ["ZII", "IXI", "YYZ"])
    with torch.no_grad():
        ours.weights["w"].copy_(ref.w.double())
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x).double(), atol=1e-6, rtol=0)  # TorchLayer keeps float32 weights


def test_circle_dataset_is_balanced_and_labelled_by_the_circle():
    data = load_dataset("circle", {"train_size": 4000, "test_size": 10})
    x, y = data.train.x, data.train.y
    assert x.shape[1] == 2 and x.abs().max() <= 1
    assert 0.45 < y.float().mean().item() < 0.55  # radius sqrt(2/pi) halves the square
    assert torch.equal(y, (x.square().sum(1) < 2 / torch.pi).long())


def test_reuploading_classifier_learns_the_circle(tmp_path):
    raw = {"name": "circle_tiny", "seed": 0,
           "model": {"name": "reuploading_classifier", "layers": 3},
           "data": {"name": "circle", "batch_size": 100, "val_fraction": 0.0,
                    "options": {"train_size": 200, "test_size": 400}},
           "optim": {"name": "adam", "lr": 0.05}, "train": {"steps": 120, "eval_every": 60}}
    summary = train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)
    assert summary["metrics"]["test_acc"] > 0.8  # chance is 0.5
    model = archlab.load(tmp_path / "run")
    assert model(torch.zeros(1, 2)).shape == (1, 2)


def test_hybrid_model_sends_gradients_through_the_circuit_to_the_encoder():
    model = archlab.create("hybrid_qnn", in_features=8, num_classes=3, qubits=3, layers=1)
    out = model(torch.randn(4, 8))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0])).backward()
    assert model.encoder.weight.grad.abs().sum() > 0 and model.qnn.weights["theta"].grad.abs().sum() > 0
