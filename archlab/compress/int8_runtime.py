"""Deploy a quantized model where int8 really runs: ONNX with QuantizeLinear/DequantizeLinear (QDQ) nodes
carrying archlab's scales and zero points, executed by onnxruntime on the CPU.

The fake-quantized ``torch.fx`` model of :mod:`archlab.compress.quantize` is exported with
``torch.onnx.export`` (every quantizer routed through torch's ``fake_quantize_*`` ops, which the exporter
writes as a QuantizeLinear -> DequantizeLinear pair with the same ``(s, z)``). Then the graph is finished the
way integer kernels need it (Jacob et al. 2018 §2.4):

- each weight ``W -> Q -> DQ`` becomes an int8 initializer ``q_W`` (computed here, bit-equal to the fake
  quantization) feeding the DequantizeLinear: the file holds int8 weights (about 4x smaller);
- each Conv/Gemm bias ``b`` becomes an int32 initializer ``round(b / (s_x s_W))`` (per output channel) behind a
  DequantizeLinear of scale ``s_x s_W``, zero point 0.

onnxruntime's graph optimizer then fuses ``DQ -> Conv/Gemm/Add/AveragePool -> (Relu) -> Q`` groups into
``QLinearConv``, ``QGemm``, ``QLinearAdd``, ``QLinearGlobalAveragePool`` (uint8 activations x int8
weights, int32 accumulation) and drops QDQ pairs around max pooling and reshapes. :func:`integer_ops` lists
the fused operators of the optimized graph, which is how a test and the reports check that int8 kernels run.

fp32 and int8 are timed in the same runtime, same threads (:func:`latency_ms`). onnx/onnxruntime are the
optional extra ``export``; without them every entry point raises one line saying so.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArchlabError
from .quantize import use_torch_ops

OPSET = 17
"""ONNX opset of the exported graphs (per-channel DequantizeLinear needs >= 13)."""

#: Operators of onnxruntime's optimized graph that compute on 8-bit integers.
INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
               "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "MatMulInteger",
               "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLinear")


def require_runtime() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or one line naming the missing optional extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ArchlabError(f"the int8 runtime needs onnx and onnxruntime ({exc.name} is missing): "
                           "pip install 'archlab[export]'") from None
    return onnx, onnxruntime


def runtime_available() -> bool:
    try:
        require_runtime()
    except ArchlabError:
        return False
    return True


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, quantized: bool) -> Path:
    """Write ``model`` (fp32, or a quantized ``torch.fx`` model of :mod:`.quantize`) to ``path`` as ONNX with
    a dynamic batch dimension; a quantized model is finished into int8 weights and int32 biases (module
    docstring). Returns ``path``."""
    onnx, _ = require_runtime()
    path = Path(path)
    model = model.eval()
    if quantized:
        use_torch_ops(model, True)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: torch.export has no shape rule for the fake_quantize ops, so it cannot
            # export them with a dynamic batch dimension; tracing with real tensors can.
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as exc:  # noqa: BLE001 -- the exporter raises many types; one line for the user
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchlabError(f"ONNX export of {type(model).__name__} failed: {msg[:200]}") from exc
    finally:
        if quantized:
            use_torch_ops(model, False)
    if quantized:
        graph = onnx.load(str(path))
        finish_qdq(graph)
        onnx.save(graph, str(path))
    return path


def constants(graph: Any) -> dict[str, np.ndarray]:
    """Every constant of the graph (initializers and Constant nodes) by output name."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def finish_qdq(model_proto: Any) -> dict[str, int]:
    """In place: constant weights behind QuantizeLinear become int8 initializers; float Conv/Gemm biases
    whose input and weight are dequantized become int32 + DequantizeLinear. Returns counts of both."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    consts = constants(graph)
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    weights = biases = 0
    dead: list[Any] = []
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        x = consts[node.input[0]]
        scale, zero = consts[node.input[1]], consts[node.input[2]]
        axis = _axis(node) % max(x.ndim, 1)
        shape = [1] * x.ndim
        if scale.ndim:
            shape[axis] = -1
        s = torch.from_numpy(scale.astype(np.float32)).reshape(shape)
        z = torch.from_numpy(zero.astype(np.int64)).reshape(shape)
        info = np.iinfo(zero.dtype)
        # The fake quantization's arithmetic: z + round(x * (1 / s)), half to even, then clamp.
        q = torch.clamp(z + torch.round(torch.from_numpy(x.astype(np.float32)) * (1.0 / s)), info.min, info.max)
        name = node.output[0]
        graph.initializer.append(numpy_helper.from_array(q.numpy().astype(zero.dtype), name))
        dead.append(node)
        weights += 1
    for node in dead:
        graph.node.remove(node)
    producer = {out: node for node in graph.node for out in node.output}
    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        dq_x, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        if dq_x.input[1] not in consts or dq_w.input[1] not in consts:
            continue
        bias = consts[node.input[2]].astype(np.float64)
        s = (consts[dq_x.input[1]].astype(np.float64) * consts[dq_w.input[1]].astype(np.float64)).astype(np.float32)
        s = np.broadcast_to(s, bias.shape).copy() if s.ndim else s
        q = np.clip(np.rint(bias / s.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
        base = node.input[2]
        graph.initializer.extend([numpy_helper.from_array(q, base + ".int32"),
                                  numpy_helper.from_array(s.astype(np.float32), base + ".scale"),
                                  numpy_helper.from_array(np.zeros_like(q) if s.ndim else np.int32(0),
                                                          base + ".zero_point")])
        dq = helper.make_node("DequantizeLinear", [base + ".int32", base + ".scale", base + ".zero_point"],
                              [base + ".dequantized"], axis=0, name=base + ".dequantize")
        graph.node.insert(list(graph.node).index(node), dq)
        node.input[2] = base + ".dequantized"
        biases += 1
    used = {i for node in graph.node for i in node.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    return {"int8_weights": weights, "int32_biases": biases}


class Session:
    """One onnxruntime inference session (CPU, ``threads`` intra-op threads, all graph optimizations).
    ``optimized_ops`` counts the operators of the graph onnxruntime actually runs."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        onnx, ort = require_runtime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # the optimized-model dump warns that it is machine specific; we only read it
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with tempfile.TemporaryDirectory() as tmp:
            opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            optimized = onnx.load(opts.optimized_model_filepath)
        self.optimized_ops = Counter(node.op_type for node in optimized.graph.node)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def integer_ops(self) -> dict[str, int]:
        return integer_ops(self.optimized_ops)


def integer_ops(ops: Counter) -> dict[str, int]:
    """The 8-bit integer operators among an optimized graph's operator counts."""
    return {op: n for op, n in sorted(ops.items()) if op in INTEGER_OPS}


def latency_ms(fns: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, warmup: int = 20,
               rounds: int = 7, iters: int = 50, clock: str = "wall") -> dict[str, float]:
    """Median milliseconds per call of each function on ``x``, measured side by side: ``rounds`` rounds, each
    timing ``iters`` single calls of every function in turn. The median over all single calls ignores the
    calls a busy shared machine preempts (a mean over a round of calls does not). ``clock = "thread"``
    counts the CPU time of the calling thread instead of wall time: with one intra-op thread (torch and
    onnxruntime both compute in the caller) it leaves out the time other processes hold the core, which on an
    overloaded machine inflates calls longer than a scheduler slice."""
    if clock not in ("wall", "thread"):
        raise ValueError(f"clock must be wall or thread, got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.thread_time
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn(x)
        for _ in range(rounds):
            for name, fn in fns.items():
                for _ in range(iters):
                    t0 = now()
                    fn(x)
                    samples[name].append((now() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


@torch.no_grad()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 500) -> float:
    """Top-1 accuracy of ``fn`` (torch module or :class:`Session`) on ``(x, y)`` in batches."""
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (fn(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum().item()
    return correct / max(1, len(x))
