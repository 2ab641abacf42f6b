"""``archlab bench export``: inference latency of a model exported by ``archlab export`` and run by onnxruntime
(ours) versus the same model, same weights and same input in PyTorch eager (peer).

"Ours" is what archlab ships for deployment -- the ONNX graph of :func:`archlab.export.export_onnx` (checked
against PyTorch at export) in an onnxruntime CPU session with all graph optimizations; the "peer" is what a user
runs without exporting: ``model.eval()`` under ``torch.inference_mode()``. One unit = ``number`` forwards of a
batch (``number`` chosen so a unit takes >= 20 ms on the slower side); both sides use one intra-op thread.

Timing. The two sides alternate (A B B A ...) after a warm-up. Each unit is timed twice: process CPU time
(``time.process_time``), the primary figure, and wall time. On a machine shared by many processes wall time is
not the work done: a process holding a core for a few ms at a time stretches every call longer than its time
slice by the number of processes waiting, while a short call often completes inside one slice -- so wall-time
ratios between a 0.1 ms and a 10 ms call mean little there. With one thread per side, CPU time is the compute.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import archlab
from archlab.export import example_inputs, export_onnx


def _model(model: str, config: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    return archlab.create(model, **config).eval()


def _inputs(net: torch.nn.Module, batch: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    return example_inputs(net, batch)


def ours(model: str, batch: int, threads: int, config: dict[str, Any], directory: Path) -> Callable[[], Any]:
    import onnxruntime as ort

    net = _model(model, config)
    inputs = _inputs(net, batch)
    path = directory / f"{model}-b{batch}.onnx"
    export_onnx(net, path, batch=batch)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: session.run(None, feeds)


def peer(model: str, batch: int, threads: int, config: dict[str, Any], directory: Path) -> Callable[[], Any]:
    net = _model(model, config)
    inputs = _inputs(net, batch)

    def forward() -> Any:
        with torch.inference_mode():
            return net(*inputs)

    return forward


def _time(fn: Callable[[], Any], number: int) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(number):
        fn()
    return (time.process_time() - c0) / number, (time.perf_counter() - w0) / number


def run(params: dict[str, Any], log: Any) -> tuple[dict[str, Any], str]:
    threads, warmup, repeats = params.get("threads", 1), params.get("warmup", 3), params.get("repeats", 11)
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="archlab-bench-export-") as d:
        for case in params["cases"]:
            args = (case["model"], case["batch"], threads, case.get("config", {}), Path(d))
            sides = {"onnxruntime": ours(*args), "torch eager": peer(*args)}
            for _ in range(warmup):
                for fn in sides.values():
                    fn()
            slowest = max(_time(fn, 1)[0] for fn in sides.values())
            number = max(1, math.ceil(0.02 / max(slowest, 1e-6)))
            cpu: dict[str, list[float]] = {k: [] for k in sides}
            wall: dict[str, list[float]] = {k: [] for k in sides}
            for i in range(repeats):
                for key in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
                    c, w = _time(sides[key], number)
                    cpu[key].append(c)
                    wall[key].append(w)
            med = {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in sides}
            row = {"case": case["name"], "model": case["model"], "batch": case["batch"], "number": number,
                   "onnxruntime_cpu_ms": 1e3 * med["onnxruntime"][0], "eager_cpu_ms": 1e3 * med["torch eager"][0],
                   "onnxruntime_wall_ms": 1e3 * med["onnxruntime"][1], "eager_wall_ms": 1e3 * med["torch eager"][1],
                   "times": {"cpu_s": cpu, "wall_s": wall}}
            row["ratio_cpu"] = row["eager_cpu_ms"] / row["onnxruntime_cpu_ms"]
            row["ratio_wall"] = row["eager_wall_ms"] / row["onnxruntime_wall_ms"]
            log(f"{row['case']}: onnxruntime {row['onnxruntime_cpu_ms']:.3f} ms, eager {row['eager_cpu_ms']:.3f} ms "
                f"CPU -> {row['ratio_cpu']:.2f}x (wall {row['ratio_wall']:.2f}x)")
            rows.append(row)
    lines = ["| case | onnxruntime (ms CPU) | torch eager (ms CPU) | eager / onnxruntime (CPU) | "
             "onnxruntime (ms wall) | torch eager (ms wall) | eager / onnxruntime (wall) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['onnxruntime_cpu_ms']:.3f} | {r['eager_cpu_ms']:.3f} | "
                     f"**{r['ratio_cpu']:.2f}x** | {r['onnxruntime_wall_ms']:.3f} | {r['eager_wall_ms']:.3f} | "
                     f"{r['ratio_wall']:.2f}x |")
    lines += ["", f"Medians of {repeats} alternating repeats after {warmup} warm-up calls, per forward; {threads} "
              "intra-op thread(s) each side. > 1: onnxruntime faster."]
    return {"cases": rows, "threads": threads, "repeats": repeats, "warmup": warmup}, "\n".join(lines) + "\n"
