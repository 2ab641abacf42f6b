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
        fns = {"ort_fp32": fp32, "ort_int8": int8, "torch_fp32": net}
        ms = rt.latency_ms(fns, x, warmup=5, rounds=rounds, iters=int(case["iters"]), clock="thread")
        wall = rt.latency_ms(fns, x, warmup=1, rounds=rounds, iters=int(case["iters"]), clock="wall")
        rows.append({"case": case["name"], "model": case["model"], "batch": case["batch"], **ms,
                     "speedup": ms["ort_fp32"] / ms["ort_int8"], "wall_ms": wall,
                     "wall_speedup": wall["ort_fp32"] / wall["ort_int8"], "integer_ops": int8.integer_ops()})
    lines = ["| case | torch eager fp32 (ms) | onnxruntime fp32 (ms) | onnxruntime int8 (ms) | speedup fp32/int8 "
             "(same runtime) | wall-clock speedup | int8 kernels |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ops = ", ".join(f"{k} x{v}" for k, v in r["integer_ops"].items())
        lines.append(f"| {r['case']} | {r['torch_fp32']:.3f} | {r['ort_fp32']:.3f} | {r['ort_int8']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['wall_speedup']:.2f}x | {ops} |")
    lines += ["", f"{threads} thread(s); milliseconds = median CPU time of the calling thread per call (all compute "
              "runs in it with one thread; the machine is shared, and wall time adds the time other processes "
              "hold the core), over "
              f"{rounds} interleaved rounds; the wall-clock column is the same ratio from wall time. onnxruntime "
              f"{rt.require_runtime()[1].__version__}.", ""]
    return {"threads": threads, "rounds": rounds, "cases": rows}, "\n".join(lines)
