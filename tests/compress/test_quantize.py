"""Quantization: observers and fake quantization equal torch.ao's / torch's / torchao's for the same scales and
zero points (gradients of the straight-through estimator included); the fx rewrite folds BatchNorm exactly;
the int8 ONNX graph runs in onnxruntime's integer kernels and agrees with the fake-quantized model."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import archlab
from archlab.compress.quantize import (
    FakeQuantize,
    Observer,
    QuantConfig,
    calibrate,
    fake_quantize,
    load_quant_state,
    post_training_quantize,
    qparams,
    quant_state,
    quantize_model,
    set_quant_mode,
    to_float_model,
)
from archlab.errors import ArchlabError

pytestmark = pytest.mark.usefixtures("single_thread")


def _trained_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics and affine parameters (a fresh model has mean 0, var 1)."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
    return model.eval()


# -- observers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_observer_equals_torch_ao(symmetric: bool) -> None:
    tq = pytest.importorskip("torch.ao.quantization")
    x = torch.randn(4, 8, 5, 5) * 3 + 0.7
    ours = Observer("uint8" if not symmetric else "int8", symmetric=symmetric)
    ref = tq.MinMaxObserver(dtype=torch.qint8 if symmetric else torch.quint8,
                            qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine)
    for batch in (x, x * 2 - 1):
        ours(batch)
        ref(batch)
    s, z = ours.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    assert s.item() == rs.item() and z.item() == rz.item()


def test_moving_average_observer_equals_torch_ao() -> None:
    tq = pytest.importorskip("torch.ao.quantization")
    ours = Observer("uint8", averaging_constant=0.01)
    ref = tq.MovingAverageMinMaxObserver(averaging_constant=0.01, dtype=torch.quint8)
    gen = torch.Generator().manual_seed(1)
    for i in range(5):
        x = torch.randn(32, 16, generator=gen) * (1 + i)
        ours(x)
        ref(x)
    assert torch.allclose(ours.min_val, ref.min_val) and torch.allclose(ours.max_val, ref.max_val)
    s, z = ours.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    assert s.item() == pytest.approx(rs.item(), rel=1e-6) and z.item() == rz.item()


def test_per_channel_observer_equals_torch_ao() -> None:
    tq = pytest.importorskip("torch.ao.quantization")
    w = torch.randn(6, 3, 5, 5) * torch.linspace(0.1, 2.0, 6).reshape(-1, 1, 1, 1)
    ours = Observer("int8", symmetric=True, per_channel=True, ch_axis=0)
    ref = tq.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    ours(w)
    ref(w)
    s, z = ours.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    assert torch.equal(s, rs) and torch.equal(z.long(), rz.long())


def test_qparams_keep_zero_exact_and_floor_the_scale() -> None:
    s, z = qparams(torch.tensor(0.3), torch.tensor(2.0))  # range widened to [0, 2]: zero is representable
    assert z.item() == 0 and s.item() == pytest.approx(2.0 / 255)
    s, _ = qparams(torch.tensor(0.0), torch.tensor(0.0))
    assert s.item() == torch.finfo(torch.float32).eps


# -- fake quantization and its straight-through gradient ---------------------------------------------------------
def test_fake_quant_per_tensor_equals_torch_with_ste_gradient() -> None:
    x = (torch.randn(2000) * 4).requires_grad_()  # scale covers [-2.1, 2.9]: many values are clipped
    x_ref = x.detach().clone().requires_grad_()
    scale, zero = torch.tensor(0.0196), torch.tensor(107, dtype=torch.int32)
    ours = fake_quantize(x, scale, zero, "uint8")
    ref = torch.fake_quantize_per_tensor_affine(x_ref, scale.item(), int(zero), 0, 255)
    assert torch.equal(ours, ref)
    g = torch.randn(2000)
    ours.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad, x_ref.grad)
    assert 0 < int((x.grad == 0).sum()) < 2000  # clipped values get no gradient, the others pass straight


def test_fake_quant_per_channel_equals_torch_with_ste_gradient() -> None:
    w = (torch.randn(8, 4, 3, 3) * 2).requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    scale = torch.linspace(0.005, 0.02, 8)
    zero = torch.zeros(8, dtype=torch.int32)
    ours = fake_quantize(w, scale, zero, "int8", axis=0)
    ref = torch.fake_quantize_per_channel_affine(w_ref, scale, zero, 0, -128, 127)
    assert torch.equal(ours, ref)
    g = torch.randn_like(w)
    ours.backward(g)
    ref.backward(g)
    assert torch.equal(w.grad, w_ref.grad)


def test_fake_quant_equals_torchao_quantize_dequantize() -> None:
    qp = pytest.importorskip("torchao.quantization.quant_primitives", reason="torchao (test extra) not installed")
    x = torch.randn(16, 32) * 3
    scale, zero = torch.tensor(0.021), torch.tensor(121, dtype=torch.int32)
    block = tuple(x.shape)  # one block: per-tensor
    q = qp.quantize_affine(x, block, scale.reshape(1, 1), zero.reshape(1, 1), torch.uint8, 0, 255)
    ref = qp.dequantize_affine(q, block, scale.reshape(1, 1), zero.reshape(1, 1), torch.uint8, 0, 255)
    assert torch.equal(fake_quantize(x, scale, zero, "uint8"), ref)
    w = torch.randn(8, 20)
    s = torch.linspace(0.004, 0.03, 8)
    z = torch.zeros(8, dtype=torch.int32)
    block = (1, 20)  # one block per output row: per-channel along axis 0
    q = qp.quantize_affine(w, block, s.reshape(8, 1), z.reshape(8, 1), torch.int8, -128, 127)
    ref = qp.dequantize_affine(q, block, s.reshape(8, 1), z.reshape(8, 1), torch.int8, -128, 127)
    assert torch.equal(fake_quantize(w, s, z, "int8", axis=0), ref)


def test_fake_quantize_module_calibrates_then_freezes() -> None:
    fq = FakeQuantize(Observer("uint8"))
    x = torch.rand(100) * 5
    assert torch.equal(fq(x), x)  # calibration: observing only
    fq.observing, fq.quantizing = False, True
    assert fq.scale.item() == pytest.approx(x.max().item() / 255)
    assert (fq(x) - x).abs().max() <= fq.scale / 2 + 1e-6
    fq(x * 10)
    assert fq.scale.item() == pytest.approx(x.max().item() / 255)  # frozen: a larger input changes nothing


# -- the fx rewrite --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_batchnorm_folding_is_exact_and_static_ptq_stays_close(name: str) -> None:
    model = _trained_bn(archlab.create(name, in_channels=1, num_classes=10, **({"norm": "batch"} if name == "lenet5"
                                                                              else {})))
    x = torch.randn(8, 1, 28, 28)
    gm = quantize_model(model, QuantConfig(scheme="static"))
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in gm.modules())
    with torch.no_grad():
        ref = model(x)
        for fq in gm.modules():  # every quantizer off, weights included: only the folding is left
            if isinstance(fq, FakeQuantize):
                fq.observing, fq.quantizing = False, False
        assert torch.allclose(gm(x), ref, atol=1e-5)
        calibrate(gm, [torch.randn(16, 1, 28, 28) for _ in range(4)])
        q = gm(x)
    # int8 weights and activations everywhere: the logits move by a few quantization steps
    assert 0 < (q - ref).abs().max() < 0.1 * ref.abs().max()


def test_dynamic_quantization_quantizes_inputs_of_weighted_layers_only() -> None:
    model = _trained_bn(archlab.create("resnet20", in_channels=1, num_classes=10))
    gm = post_training_quantize(model, QuantConfig(scheme="dynamic", per_channel=False))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert (gm(x) - model(x)).abs().max() < 0.1 * model(x).abs().max()
    assert not list(quant_state(gm))[0].startswith("act_quant")  # no static activation quantizers


def test_quantized_model_round_trips_through_the_float_model_and_its_quant_state() -> None:
    model = _trained_bn(archlab.create("resnet20", in_channels=1, num_classes=10))
    cfg = QuantConfig(scheme="qat", per_channel=True, observer="moving_average")
    gm = quantize_model(model, cfg)
    set_quant_mode(gm, observing=True, quantizing=True)
    gm.train()
    opt = torch.optim.SGD(gm.parameters(), lr=0.05)
    for _ in range(2):  # QAT steps move the latent weights through the straight-through estimator
        loss = gm(torch.randn(8, 1, 28, 28)).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    set_quant_mode(gm, observing=False, quantizing=True)
    gm.eval()
    rebuilt = quantize_model(to_float_model(gm, model), cfg)
    load_quant_state(rebuilt, quant_state(gm))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), gm(x), atol=1e-5)
    with pytest.raises(ArchlabError, match="quantizer state lacks"):
        load_quant_state(quantize_model(archlab.create("lenet5"), cfg), quant_state(gm))


def test_untraceable_model_is_one_line() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ArchlabError, match="torch.fx"):
        quantize_model(Branchy(), QuantConfig())


# -- the int8 runtime ------------------------------------------------------------------------------------------
def test_missing_runtime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from archlab.compress import int8_runtime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ArchlabError, match=r"archlab\[export\]"):
        int8_runtime.require_runtime()


@pytest.mark.parametrize("per_channel", [True, False])
def test_onnxruntime_runs_int8_kernels_with_our_scales(per_channel: bool, tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime (extra 'export') not installed")
    import onnx
    from onnx import numpy_helper

    from archlab.compress import int8_runtime as rt

    model = _trained_bn(archlab.create("resnet20", in_channels=1, num_classes=10, depth=8))
    calib = [torch.randn(16, 1, 28, 28) for _ in range(3)]
    gm = post_training_quantize(model, QuantConfig(scheme="static", per_channel=per_channel), lambda: calib)
    path = rt.export_onnx(gm, calib[0][:1], tmp_path / "int8.onnx", quantized=True)
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = rt.constants(graph)
    # The graph carries our numbers: int8 weights, the input quantizer's scale and zero point.
    assert sum(a.dtype == "int8" and a.ndim == 4 for a in inits.values()) == 7  # 7 conv layers in resnet8
    assert sum(a.dtype == "int32" and a.ndim == 1 and a.size > 1 for a in inits.values()) >= 7  # biases
    first_q = next(n for n in graph.node if n.op_type == "QuantizeLinear")
    assert consts[first_q.input[1]].item() == gm.act_quant_1.scale.item()
    assert consts[first_q.input[2]].item() == gm.act_quant_1.zero_point.item()
    session = rt.Session(path)
    ops = session.integer_ops()
    assert ops.get("QLinearConv") == 7 and ops.get("QLinearAdd") == 3 and "QGemm" in ops
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        ref = gm(x)
    out = session(x)
    # Integer requantization rounds once per layer where fp32 fake quantization does not: a few output steps.
    step = gm.get_submodule(list(gm.graph.nodes)[-2].target).scale.item()
    assert (out - ref).abs().max() <= 8 * step
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    fp32 = rt.Session(rt.export_onnx(model, x[:1], tmp_path / "fp32.onnx", quantized=False))
    with torch.no_grad():
        assert torch.allclose(fp32(x), model(x), atol=1e-5)
    assert not fp32.integer_ops()


# -- the qat loop ----------------------------------------------------------------------------------------------
QAT_TINY = {"name": "qat_tiny", "seed": 0,
            "model": {"name": "cnn2d", "image_size": 8, "channels": [8, 16], "hidden": 32, "norm": "batch"},
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 3e-3, "qat": {"lr": 3e-4}},
            "train": {"loop": "qat", "steps": 30, "log_every": 5, "checkpoint_every": 37},
            "loop": {"qat_epochs": 0.4, "calib_batches": 2, "freeze_observers": 0.5, "runtime": False}}


def test_qat_loop_resumes_in_the_qat_phase_exactly(assert_resume_exact) -> None:
    # fp32 steps 0-30, QAT 30-50 (observers frozen at 40); the cut run resumes from step 37.
    assert_resume_exact(QAT_TINY)


def test_qat_loop_reports_every_stage_and_its_run_reloads(tmp_path) -> None:
    import copy
    import json

    from archlab.recipe import from_dict
    from archlab.runner import evaluate, train

    raw = copy.deepcopy(QAT_TINY)
    raw["loop"]["runtime"] = True
    raw["loop"]["latency_rounds"] = 1
    summary = train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)
    m = summary["metrics"]
    assert m["fp32_test_acc"] > 0.5 and m["ptq_test_acc"] > 0.5 and m["test_acc"] > 0.5
    assert m["ptq_drop"] == pytest.approx(m["fp32_test_acc"] - m["ptq_test_acc"])
    assert m["qat_drop"] == pytest.approx(m["fp32_test_acc"] - m["test_acc"])
    report = json.loads((tmp_path / "run" / "quantize.json").read_text())
    if "int8_test_acc" in m:  # onnxruntime installed: the deployed int8 model ran in integer kernels
        assert report["runtime"]["integer_ops"]["QLinearConv"] == 2
        assert abs(m["int8_test_acc"] - m["ptq_test_acc"]) < 0.05 and m["ort_int8_ms"] > 0
        assert (tmp_path / "run" / "model.int8.onnx").is_file()
    # archlab eval rebuilds the QAT model from the saved network and quantizers: the same accuracy.
    assert evaluate(tmp_path / "run", device="cpu")["test_acc"] == pytest.approx(m["test_acc"])


def test_qat_loop_rejects_a_model_it_cannot_quantize(tmp_path) -> None:
    import copy

    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = copy.deepcopy(QAT_TINY)
    raw["model"] = {"name": "cnn1d"}  # its forward branches on the input's rank: torch.fx cannot trace it
    raw["data"] = {"name": "mnist1d", "batch_size": 32, "val_fraction": 0.1}
    with pytest.raises(ArchlabError, match="torch.fx"):
        train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)


# -- archlab compress --method quantize -------------------------------------------------------------------------
def test_compress_command_quantizes_a_run(tmp_path) -> None:
    import json

    from archlab.cli import main
    from archlab.recipe import from_dict
    from archlab.runner import evaluate, train

    raw = {"name": "digits_cnn_tiny", "seed": 0,
           "model": {"name": "cnn2d", "image_size": 8, "channels": [8, 16], "hidden": 32, "norm": "batch"},
           "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
           "optim": {"name": "adam", "lr": 3e-3}, "train": {"loop": "supervised", "steps": 60, "log_every": 30}}
    run = tmp_path / "run"
    train(from_dict(raw), out=run, progress=False, log=lambda _m: None)
    out = tmp_path / "int8"
    assert main(["compress", str(run), "--method", "quantize", "--per-channel", "--calib-batches", "2",
                 "--out", str(out), "--latency-repeats", "3"]) == 0
    report = json.loads((out / "compress.json").read_text())
    settings = report["settings"]
    assert settings["scheme"] == "static" and settings["per_channel"] and settings["calib_batches"] == 2
    assert abs(report["after"]["test_acc"] - report["before"]["test_acc"]) < 0.05
    if "runtime_integer_ops" in settings:  # the table's "after" ran in onnxruntime's int8 kernels
        assert settings["runtime_integer_ops"]["QLinearConv"] == 2 and (out / "model.int8.onnx").is_file()
        # both latencies in onnxruntime (fp32 session vs int8 session), the eager one kept beside them
        assert report["runtime"].startswith("onnxruntime") and "latency_ms_torch_eager" in report["before"]
        assert "both in onnxruntime" in (out / "compress.md").read_text()
    assert archlab.load(out) is not None and (out / "quantization.safetensors").is_file()
    assert evaluate(out, device="cpu")["test_acc"] > 0.5  # the float network with the (BN-folded) weights
    dyn = tmp_path / "dyn"
    assert main(["compress", str(run), "--method", "quantize", "--scheme", "dynamic", "--out", str(dyn),
                 "--latency-repeats", "3"]) == 0
    assert json.loads((dyn / "compress.json").read_text())["settings"]["calib_batches"] == 0
    with pytest.raises(SystemExit):
        main(["compress", str(run), "--method", "quantize", "--scheme", "bogus", "--out", str(tmp_path / "x")])
