"""``archlab compress RUN_DIR --method quantize``: int8 post-training quantization of a finished run.

    archlab compress runs/mnist_lenet5-s0 --method quantize --per-channel --calib-batches 10
    archlab compress runs/mnist_resnet20-s0 --method quantize --scheme dynamic

The plug-in of :mod:`archlab.compress.command` (``HELP``, ``add_arguments``, ``apply``). ``static`` calibrates
activation scales on ``--calib-batches`` training batches (:mod:`.quantize`) and, with the extra ``export``,
runs the int8 ONNX graph in onnxruntime (:mod:`.int8_runtime`): the after-accuracy and after-latency of the
table are then the runtime's, and ``quantization.json`` holds fp32 vs int8 latency in that same runtime
(plus torch eager fp32). ``dynamic`` stays in torch (fake quantization). The new run directory holds the
float network with the latent weights (``archlab.load``), ``quantization.safetensors`` (every quantizer's
scale, zero point and range: :func:`~archlab.compress.quantize.load_quant_state` rebuilds the quantized
model) and, for the runtime, ``model.int8.onnx`` / ``model.fp32.onnx``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_bytes, save_tensors_atomic
from . import int8_runtime as rt
from .command import CompressContext, Compressed
from .quantize import QuantConfig, calibration_batches, post_training_quantize, quant_state, to_float_model

HELP = ("int8 post-training quantization (dynamic, or static calibrated on training batches; per-tensor or "
        "per-channel weights); runs the static model in onnxruntime's int8 kernels when the extra 'export' is "
        "installed")


def add_arguments(group: Any) -> None:
    group.add_argument("--scheme", choices=["dynamic", "static"], default="static",
                       help="dynamic: activations quantized per batch; static: calibrated activation scales (default)")
    group.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    group.add_argument("--calib-batches", type=int, default=10,
                       help="static: training batches (of the run's batch size) for calibration (10)")
    group.add_argument("--observer", choices=["minmax", "moving_average"], default="minmax",
                       help="static: activation range estimator (minmax)")


def apply(model: torch.nn.Module, args: Any, ctx: CompressContext) -> Compressed:
    """Quantize a finished run's model; its int8 ONNX graph runs in onnxruntime when available."""
    cfg = QuantConfig(scheme=args.scheme, per_channel=args.per_channel, observer=args.observer)
    batch = int(ctx.recipe.get("data", {}).get("batch_size", 128))
    train_x = ctx.data.train.x
    gm = post_training_quantize(model, cfg, lambda: calibration_batches(train_x, args.calib_batches, batch,
                                                                          ctx.seed))
    settings: dict[str, Any] = {"scheme": cfg.scheme, "per_channel": cfg.per_channel, "observer": cfg.observer,
                                "calib_batches": args.calib_batches if cfg.scheme == "static" else 0,
                                "fake_quant_test_acc": ctx.evaluate(gm)}
    forward, reference, runtime = gm, None, "torch eager"
    files: dict[str, bytes] = {}
    if cfg.scheme == "static" and rt.runtime_available():
        with tempfile.TemporaryDirectory() as tmp:
            x1 = ctx.data.test.x[:1]
            fp32_path = rt.export_onnx(model, x1, Path(tmp) / "model.fp32.onnx", quantized=False)
            int8_path = rt.export_onnx(gm, x1, Path(tmp) / "model.int8.onnx", quantized=True)
            threads = torch.get_num_threads()
            fp32, int8 = rt.Session(fp32_path, threads), rt.Session(int8_path, threads)
            files = {p.name: p.read_bytes() for p in (fp32_path, int8_path)}
        lat = rt.latency_ms({"onnxruntime_fp32": fp32, "onnxruntime_int8": int8, "torch_fp32": model}, x1)
        settings.update({"runtime": "onnxruntime " + rt.require_runtime()[1].__version__,
                         "runtime_threads": threads, "runtime_integer_ops": int8.integer_ops(),
                         "runtime_fp32_test_acc": ctx.evaluate(fp32),
                         "latency_batch1_ms": lat,
                         "runtime_speedup_batch1": lat["onnxruntime_fp32"] / lat["onnxruntime_int8"],
                         "onnx_bytes": {k: len(v) for k, v in files.items()}})
        forward, reference, runtime = int8, fp32, settings["runtime"]
    elif cfg.scheme == "static":
        settings["runtime"] = "none (install the extra 'export' for onnxruntime's int8 kernels)"

    def save(folder: Path) -> None:
        to_float_model(gm, model).save_pretrained(folder)
        save_tensors_atomic(quant_state(gm), folder / "quantization.safetensors")
        atomic_write_bytes(folder / "quantization.json", (json.dumps(settings, indent=2) + "\n").encode())
        for name, data in files.items():
            atomic_write_bytes(folder / name, data)

    return Compressed(model=gm, forward=forward, save=save, settings=settings, runtime=runtime,
                      reference_forward=reference)
