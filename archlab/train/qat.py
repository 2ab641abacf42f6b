"""Quantization in one run: train fp32, quantize after training (PTQ), then quantization-aware training
(``train.loop = "qat"``); Jacob et al. 2018, Krishnamoorthi 2018.

Two phases of ordinary supervised steps (cross-entropy, minibatches from one seeded
:class:`~archlab.train.supervised.BatchStream`, ``data.augment`` as in the supervised loop), each with its own
named optimizer:

    fp32   train.epochs (or train.steps) with [optim] / [optim.model]            -> theta (fp32 accuracy)
    PTQ    at the phase boundary, no training: static int8 (activation ranges calibrated on loop.calib_batches
           training batches) and dynamic int8 of theta, scored on val/test
    qat    loop.qat_epochs with [optim.qat] on the static int8 graph (:func:`~archlab.compress.quantize_model`,
           BatchNorm folded), fake quantization with the straight-through estimator in every forward pass:

               loss = CE(f_q(x; W_hat, act_hat), y),   dL/dW = dL/dW_hat * [W inside the int8 range]

           activation ranges keep being observed (moving average or min/max, starting from the calibration) for
           the first loop.freeze_observers of the phase, then frozen (Krishnamoorthi §3.3)

At the end the run reports ``fp32_test_acc``, ``ptq_test_acc`` (static), ``ptq_dynamic_test_acc``,
``test_acc`` (the QAT model, fake-quantized), the drops ``ptq_drop = fp32 - ptq`` and ``qat_drop``, and
``qat_recovered = (qat - ptq) / (fp32 - ptq)`` when PTQ lost accuracy. With onnx/onnxruntime installed (extra
``export``) the static PTQ and QAT models are exported as int8 QDQ graphs and run by onnxruntime's integer
kernels: ``int8_test_acc`` / ``int8_qat_test_acc`` are the runtime's accuracy, ``ort_fp32_ms`` / ``ort_int8_ms``
the batch-1 latency of the fp32 and int8 graphs in that same runtime (``int8_speedup`` their ratio,
``torch_fp32_ms`` torch eager for reference).

The saved model is the network with the QAT latent weights (BatchNorm folded into its layers:
:func:`~archlab.compress.to_float_model`); ``quantization.safetensors`` holds every quantizer's scale, zero
point and range, ``quantize.json`` all the numbers, ``model.*.onnx`` the runtime graphs. The checkpoint holds
the phase, both optimizers, the quantizers and the data position: a run resumes exactly in either phase.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..compress.quantize import (
    QuantConfig,
    calibrate,
    calibration_batches,
    load_quant_state,
    post_training_quantize,
    quant_state,
    quantize_model,
    set_quant_mode,
    to_float_model,
)
from ..data import Dataset, make_transform
from ..engine.loop import Context, Loop, Trainable, register_loop
from ..errors import ArchlabError
from ..io import atomic_write_bytes, save_tensors_atomic
from ..models.base import ArchModel
from .supervised import BatchStream, Supervised, classification_scores

if TYPE_CHECKING:
    from ..recipe import Recipe

QUANT_FILE = "quantization.safetensors"


@dataclass
class QATConfig:
    """``[loop]`` of the qat loop. The fp32 phase lasts ``train.epochs`` (or ``train.steps``)."""

    qat_epochs: float = 1.0
    """Epochs of quantization-aware training after the fp32 phase (0: report PTQ only)."""
    per_channel: bool = True
    """Weights: one int8 scale per output channel (else one per tensor)."""
    observer: Literal["minmax", "moving_average"] = "moving_average"
    """Activation range estimator in calibration and QAT: running min/max, or EMA of per-batch min/max."""
    averaging_constant: float = 0.01
    """EMA rate of ``moving_average``."""
    calib_batches: int = 10
    """Training batches (of data.batch_size) that calibrate the static PTQ model and the QAT start."""
    freeze_observers: float = 0.5
    """Fraction of the QAT phase after which activation ranges stop changing (1: never)."""
    runtime: bool = True
    """Export the int8 models to onnxruntime at the end (accuracy and latency) when onnxruntime is installed."""
    latency_rounds: int = 7
    """Timed rounds (50 batch-1 calls each, fp32 and int8 interleaved) of the latency measurement."""

    def __post_init__(self) -> None:
        if not 0 <= self.qat_epochs <= 1000:
            raise ValueError(f"qat_epochs must be in [0, 1000], got {self.qat_epochs}")
        if not 1 <= self.calib_batches <= 100_000:
            raise ValueError(f"calib_batches must be in [1, 100000], got {self.calib_batches}")
        if not 0 <= self.freeze_observers <= 1:
            raise ValueError(f"freeze_observers must be in [0, 1], got {self.freeze_observers}")
        if not 0 < self.averaging_constant <= 1 or self.latency_rounds < 1:
            raise ValueError("need 0 < averaging_constant <= 1 and latency_rounds >= 1")

    def quant_config(self, scheme: str) -> QuantConfig:
        return QuantConfig(scheme=scheme, per_channel=self.per_channel, observer=self.observer,  # type: ignore[arg-type]
                           averaging_constant=self.averaging_constant)


@register_loop("qat")
class QAT(Loop):
    """fp32 training, post-training int8 quantization, then quantization-aware training; int8 runtime check."""

    Config = QATConfig
    model_families = ("classic",)
    trainables = ("model", "qat")
    metrics = ("val_acc", "val_loss", "test_acc", "test_loss", "fp32_test_acc", "ptq_test_acc",
               "ptq_dynamic_test_acc", "ptq_drop", "qat_drop", "qat_recovered", "int8_test_acc", "int8_drop",
               "int8_qat_test_acc", "ort_fp32_ms", "ort_int8_ms", "int8_speedup", "torch_fp32_ms")
    progress_keys = ("loss", "phase")

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Dataset, model: ArchModel) -> None:
        if recipe.train.accumulate != 1 or recipe.train.l1 or recipe.train.compile:
            raise ArchlabError("train.accumulate, train.l1 and train.compile are not used by the qat loop; leave "
                               "them at their defaults")
        Supervised.check_fit(recipe, data, model)
        quantize_model(model, QuantConfig(scheme="static"))  # one-line error when the network cannot be quantized

    def __init__(self, recipe: Recipe, model: ArchModel, data: Dataset, ctx: Context) -> None:
        if ctx.dist.enabled:
            raise ArchlabError("the qat loop runs in one process; drop --nproc")
        super().__init__(recipe, model.to(ctx.device), data, ctx)
        cfg: QATConfig = self.cfg
        tc, dc = recipe.train, recipe.data
        self.train_x, self.train_y = data.train.x.to(ctx.device), data.train.y.to(ctx.device)
        self.stream = BatchStream(len(data.train), dc.batch_size, seed=ctx.seed)
        self.aug_gen = torch.Generator().manual_seed(ctx.seed + 1)
        self.augment = make_transform(dc.augment) if dc.augment else None
        per_epoch = max(1, len(data.train) // dc.batch_size)
        self.fp32_steps = tc.steps or max(1, round(tc.epochs * per_epoch))
        self.qat_steps = round(cfg.qat_epochs * per_epoch)
        self.freeze_at = round(cfg.freeze_observers * self.qat_steps)
        self.total_steps = self.fp32_steps + self.qat_steps
        self.eval_every = (tc.eval_every or per_epoch) if len(data.val) else 0
        self.opt = Trainable("model", self.model, recipe.optim["model"], self.fp32_steps, ctx, tc.grad_clip)
        self.qmodel: nn.Module | None = None
        self.qopt: Trainable | None = None
        self.observing = True
        self.scores: dict[str, float] = {}  # fp32 and PTQ scores, fixed at the phase boundary
        self.report: dict[str, Any] = {}
        self.onnx_files: dict[str, bytes] = {}

    # -- phases ------------------------------------------------------------------------------------------
    def _calibration(self) -> list[torch.Tensor]:
        """The same training batches every time (seeded apart from the training stream)."""
        return calibration_batches(self.train_x, self.cfg.calib_batches, self.recipe.data.batch_size,
                                   self.ctx.seed + 7919)

    def _scores(self, forward: Any, tag: str) -> dict[str, float]:
        out = {}
        for split in ("val", "test"):
            part = getattr(self.data, split)
            if len(part):
                s = classification_scores(forward, part, split, self.recipe.data.eval_batch_size, self.ctx.device)
                out[f"{tag}_{split}_acc"] = s[f"{split}_acc"]
        return out

    def _ptq(self, scheme: str) -> nn.Module:
        return post_training_quantize(self.model, self.cfg.quant_config(scheme), self._calibration)

    def _build_qat(self) -> None:
        """The QAT graph of the fp32 weights, ranges calibrated like PTQ's, observing and fake-quantizing."""
        self.model.eval()
        self.qmodel = quantize_model(self.model, self.cfg.quant_config("qat")).to(self.ctx.device)
        calibrate(self.qmodel, self._calibration())
        set_quant_mode(self.qmodel, observing=True, quantizing=True)
        self.observing = True
        self.qopt = Trainable("qat", self.qmodel, self.recipe.optim["qat"], max(1, self.qat_steps), self.ctx,
                              self.recipe.train.grad_clip)

    def _start_qat(self) -> None:
        """Phase boundary: score fp32, static and dynamic PTQ; build the QAT model."""
        self.model.eval()
        with torch.no_grad():
            self.scores = {**self._scores(self.model, "fp32"), **self._scores(self._ptq("static"), "ptq"),
                           **self._scores(self._ptq("dynamic"), "ptq_dynamic")}
        self._build_qat()

    def _freeze(self) -> None:
        assert self.qmodel is not None
        set_quant_mode(self.qmodel, observing=False, quantizing=True)
        self.observing = False

    def train_step(self, step: int) -> dict[str, Any]:
        qat = step >= self.fp32_steps
        if qat and self.qmodel is None:
            self._start_qat()
        if qat and step - self.fp32_steps == self.freeze_at and self.observing:
            self._freeze()
        trainable = self.qopt if qat else self.opt
        assert trainable is not None
        module = trainable.module

        def micro_loss() -> torch.Tensor:
            idx = self.stream.next().to(self.ctx.device)
            x, y = self.train_x[idx], self.train_y[idx]
            if self.augment is not None:
                x = self.augment(x, self.aug_gen)
            if qat:  # fake quantization simulates int8 in fp32: no lower-precision autocast on top
                return F.cross_entropy(module(x), y)
            with self.ctx.precision.autocast():
                logits = module(x)
            return F.cross_entropy(logits.float(), y)

        out = trainable.accumulated_step(1, 0.0, micro_loss)
        out["phase"] = int(qat)
        return out

    # -- evaluation and results ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        part = getattr(self.data, split)
        if len(part) == 0:
            return {}
        if self.qmodel is None:
            self.model.eval()
            return classification_scores(self.model, part, split, self.recipe.data.eval_batch_size,
                                         self.ctx.device, self.ctx.precision.autocast)
        set_quant_mode(self.qmodel, observing=False, quantizing=True)  # evaluation must not move the ranges
        self.qmodel.eval()
        try:
            return classification_scores(self.qmodel, part, split, self.recipe.data.eval_batch_size, self.ctx.device)
        finally:
            set_quant_mode(self.qmodel, observing=self.observing, quantizing=True)

    def final_metrics(self) -> dict[str, float]:
        if self.qmodel is None:  # qat_epochs = 0: the run ends at the phase boundary
            self._start_qat()
        self._freeze()
        out: dict[str, float] = {**self.evaluate("val"), **self.evaluate("test")}
        s = self.scores
        if "fp32_test_acc" in s:
            fp32, ptq = s["fp32_test_acc"], s["ptq_test_acc"]
            out.update({"fp32_test_acc": fp32, "ptq_test_acc": ptq, "ptq_dynamic_test_acc": s["ptq_dynamic_test_acc"],
                        "ptq_drop": fp32 - ptq, "qat_drop": fp32 - out["test_acc"]})
            if fp32 > ptq:
                out["qat_recovered"] = (out["test_acc"] - ptq) / (fp32 - ptq)
        self.report = {"fp32_steps": self.fp32_steps, "qat_steps": self.qat_steps, "scores": dict(s)}
        if self.cfg.runtime and len(self.data.test):
            out.update(self._runtime())
        self.report["metrics"] = dict(out)
        return out

    def _runtime(self) -> dict[str, float]:
        """The fp32, PTQ-int8 and QAT-int8 graphs in onnxruntime: accuracy and batch-1 latency (same runtime)."""
        from ..compress import int8_runtime as rt

        if not rt.runtime_available():
            self.report["runtime"] = "onnxruntime not installed (extra 'export'): no int8 runtime numbers"
            return {}
        self.model.eval()
        assert self.qmodel is not None
        test = self.data.test
        x1 = test.x[:1].cpu()
        threads = torch.get_num_threads()
        cpu_model = self.model.cpu()
        with tempfile.TemporaryDirectory() as tmp:
            paths = {"fp32": rt.export_onnx(cpu_model, x1, Path(tmp) / "model.fp32.onnx", quantized=False),
                     "ptq": rt.export_onnx(self._ptq("static").cpu(), x1, Path(tmp) / "model.ptq.int8.onnx",
                                           quantized=True),
                     "qat": rt.export_onnx(self.qmodel.cpu(), x1, Path(tmp) / "model.int8.onnx", quantized=True)}
            sessions = {k: rt.Session(p, threads) for k, p in paths.items()}
            self.onnx_files = {p.name: p.read_bytes() for p in paths.values()}
        self.model.to(self.ctx.device)
        self.qmodel.to(self.ctx.device)
        fp32_acc = rt.accuracy(sessions["fp32"], test.x, test.y)
        int8_acc = rt.accuracy(sessions["ptq"], test.x, test.y)
        qat_acc = rt.accuracy(sessions["qat"], test.x, test.y)
        lat = rt.latency_ms({"ort_fp32": sessions["fp32"], "ort_int8": sessions["ptq"], "torch_fp32": cpu_model}, x1,
                            rounds=self.cfg.latency_rounds)
        self.report["runtime"] = {"name": "onnxruntime " + rt.require_runtime()[1].__version__, "threads": threads,
                                  "integer_ops": sessions["ptq"].integer_ops(),
                                  "ort_fp32_test_acc": fp32_acc, "latency_batch1_ms": lat}
        return {"int8_test_acc": int8_acc, "int8_drop": fp32_acc - int8_acc, "int8_qat_test_acc": qat_acc,
                "ort_fp32_ms": lat["ort_fp32"], "ort_int8_ms": lat["ort_int8"],
                "int8_speedup": lat["ort_fp32"] / lat["ort_int8"], "torch_fp32_ms": lat["torch_fp32"]}

    def final_object(self) -> ArchModel:
        if self.qmodel is None:
            return self.model
        return to_float_model(self.qmodel, self.model)  # type: ignore[return-value,arg-type]

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        run = Path(run_dir)
        if self.qmodel is not None:
            save_tensors_atomic(quant_state(self.qmodel), run / QUANT_FILE)
        atomic_write_bytes(run / "quantize.json", (json.dumps(self.report, indent=2) + "\n").encode())
        for name, data in self.onnx_files.items():
            atomic_write_bytes(run / name, data)

    @classmethod
    def evaluate_run(cls, run_dir: str | os.PathLike, recipe: Recipe, ctx: Context) -> dict[str, float]:
        """``archlab eval RUN``: the QAT model rebuilt from the saved network and ``quantization.safetensors``."""
        from safetensors.torch import load_file

        from ..registry import load

        path = Path(run_dir) / QUANT_FILE
        if not path.is_file():
            raise ArchlabError(f"{run_dir} has no {QUANT_FILE}: the qat run did not finish")
        model = load(run_dir, map_location="cpu")
        qmodel = quantize_model(model, recipe.loop.quant_config("qat"))
        load_quant_state(qmodel, load_file(str(path)))
        qmodel.to(ctx.device).eval()
        data = cls.load_data(recipe)
        out: dict[str, float] = {}
        for split in ("val", "test"):
            part = getattr(data, split)
            if len(part):
                out.update(classification_scores(qmodel, part, split, recipe.data.eval_batch_size, ctx.device))
        return out

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.opt.state_dict(), "qat": None if self.qopt is None else self.qopt.state_dict(),
                "observing": self.observing, "scores": dict(self.scores), "stream": self.stream.state_dict(),
                "aug_gen": self.aug_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["model"])
        self.stream.load_state_dict(state["stream"])
        self.aug_gen.set_state(state["aug_gen"])
        self.scores = dict(state["scores"])
        if state["qat"] is not None:
            self._build_qat()
            assert self.qopt is not None and self.qmodel is not None
            self.qopt.load_state_dict(state["qat"])
            self.observing = bool(state["observing"])
            set_quant_mode(self.qmodel, observing=self.observing, quantizing=True)
