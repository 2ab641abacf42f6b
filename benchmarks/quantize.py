"""``archlab bench quantize``: int8 vs fp32 latency in onnxruntime (and torch eager fp32) for LeNet-5 and ResNet-20.

Each case builds the network (random weights, BatchNorm statistics from a few random batches), quantizes it
statically with per-channel weights (:func:`archlab.compress.post_training_quantize`, calibrated on random
inputs), exports both graphs (:func:`archlab.compress.int8_runtime.export_onnx`) and times them with
:func:`archlab.compress.int8_runtime.latency_ms`: rounds in which every variant runs ``iters`` calls in turn.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

import archlab
from archlab.compress import QuantConfig, post_training_quantize
from archlab.compress import int8_runtime as rt


def _network(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = archlab.create(name, in_channels=1, num_classes=10)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(32, 1, 28, 28))
    return net.eval()


def run(params: dict[str, Any], log: Any) -> tuple[dict[str, Any], str]:
    threads, rounds = int(params.get("threads", 1)), int(params.get("rounds", 9))
    torch.set_num_threads(threads)
    rows = []
    for case in params["cases"]:
        net = _network(case["model"])
        calib = [torch.randn(32, 1, 28, 28) for _ in range(4)]
        gm = post_training_quantize(net, QuantConfig(scheme="static", per_channel=True),
                                    lambda c=calib: c)
        x = torch.randn(case["batch"], 1, 28, 28)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = rt.Session(rt.export_onnx(net, x[:1], Path(tmp) / "fp32.onnx", quantized=False), threads)
            int8 = rt.Session(rt.export_onnx(gm, x[:1], Path(tmp) / "int8.onnx", quantized=True), threads)
        log(f"case {case['name']}: int8 kernels {int8.integer_ops()}")
        ms = rt.latency_ms({"ort_fp32": fp32, "ort_int8": int8, "torch_fp32": net}, x, warmup=5, rounds=rounds,
                           iters=int(case["iters"]))
        rows.append({"case": case["name"], "model": case["model"], "batch": case["batch"], **ms,
                     "speedup": ms["ort_fp32"] / ms["ort_int8"], "integer_ops": int8.integer_ops()})
    lines = ["| case | torch eager fp32 (ms) | onnxruntime fp32 (ms) | onnxruntime int8 (ms) | speedup fp32/int8 "
             "(same runtime) | int8 kernels |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ops = ", ".join(f"{k} x{v}" for k, v in r["integer_ops"].items())
        lines.append(f"| {r['case']} | {r['torch_fp32']:.3f} | {r['ort_fp32']:.3f} | {r['ort_int8']:.3f} | "
                     f"{r['speedup']:.2f}x | {ops} |")
    lines += ["", f"{threads} thread(s); medians of {rounds} interleaved rounds; onnxruntime "
              f"{rt.require_runtime()[1].__version__}.", ""]
    return {"threads": threads, "rounds": rounds, "cases": rows}, "\n".join(lines)
