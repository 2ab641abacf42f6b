"""``archlab export RUN_DIR --format onnx --out model.onnx``: a trained model as an ONNX graph, checked.

    archlab export runs/mnist_lenet5 --out lenet5.onnx            # batch 1
    archlab export runs/gpt_char --out gpt.onnx --batch 8 --opset 18

The model of a run directory (or a ``save_pretrained`` folder) is loaded, put in eval mode and traced by
PyTorch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``: ``torch.export`` captures the
graph, which is decomposed to core ATen operators and translated to ONNX by onnxscript). The input the
trace is made with is the model's own :meth:`~archlab.models.base.ArchModel.example_input` at batch
``--batch`` (drawn with seed 0); the ONNX graph has these fixed shapes.

Every export is checked before the file is put in place: onnxruntime (CPU) runs the graph on the
example input and its outputs are compared with PyTorch's eager outputs. The check passes when

    max |y_onnxruntime - y_torch| <= 1e-5 * max(1, max |y_torch|)

i.e. 1e-5 absolute for outputs of order one, and 1e-5 relative to the largest output otherwise (float32
round-off grows with the magnitude; a deep ResNet at initialization has logits in the thousands). The
command prints the difference either way; a failed check writes no file.

A model that cannot be exported says why in one line, from its class attribute ``export_blocker``
(e.g. graph models size their sparse adjacency from the values of ``edge_index``: data-dependent
shapes ``torch.export`` cannot capture). The contract test ``tests/test_export.py`` exports every
registered model without a blocker and checks that every declared blocker still blocks; the table of
both is in ``docs/export.md``.

Needs the optional extra ``export`` (``onnx``, ``onnxscript``, ``onnxruntime``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ArchlabError

TOLERANCE = 1e-5
"""The check's bound on ``max |y_ort - y_torch| / max(1, max |y_torch|)`` (float32)."""

_STEPS = {"TorchExportError": "torch.export (graph capture)",
          "ConversionError": "ONNX translation (decomposition or onnxscript)"}


class NotExportable(ArchlabError):
    """The model declares (``export_blocker``) or shows that it cannot become an ONNX graph."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name} cannot be exported to ONNX: {reason}")
        self.name = name
        self.reason = reason


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how well onnxruntime reproduces PyTorch."""

    path: Path
    name: str
    batch: int
    opset: int
    outputs: int
    max_abs_diff: float
    max_abs_output: float
    export_seconds: float
    size_bytes: int

    @property
    def scaled_diff(self) -> float:
        """``max_abs_diff / max(1, max_abs_output)``: the number the check bounds by :data:`TOLERANCE`."""
        return self.max_abs_diff / max(1.0, self.max_abs_output)

    def summary(self) -> str:
        return (f"onnxruntime vs PyTorch: max |diff| = {self.max_abs_diff:.2e} over {self.outputs} output(s), "
                f"largest |output| {self.max_abs_output:.3g} (check: <= {TOLERANCE:g} x max(1, largest |output|))")


def require_export_extra() -> None:
    """One line naming the extra when onnx, onnxscript or onnxruntime is missing."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not _importable(m)]
    if missing:
        raise ArchlabError(f"archlab export needs the optional extra 'export' ({', '.join(missing)} missing): "
                           "pip install 'archlab[export]'")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def export_blocker(model: Any) -> str | None:
    """The reason ``model`` declares for not being exportable, or None (every registered class says)."""
    return type(model).export_blocker


def example_inputs(model: Any, batch: int) -> tuple[torch.Tensor, ...]:
    """The model's own example input at ``batch`` as a tuple of positional arguments."""
    x = type(model).example_input(model.config, batch_size=batch)
    return x if isinstance(x, tuple) else (x,)


def flat_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a (nested tuple / list / NamedTuple) output, in order -- the ONNX graph's outputs."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in flat_tensors(item)]
    return []


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints its progress and logs warnings (e.g. torchvision operators it skips); a
    command prints its own one-line result instead."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _failure(name: str, exc: BaseException) -> NotExportable:
    """An undeclared exporter failure as one line: the step that failed and the first line of its cause."""
    step = _STEPS.get(type(exc).__name__, type(exc).__name__)
    cause = exc.__cause__ or exc
    first = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
    return NotExportable(name, f"{step} failed: {type(cause).__name__}: {first[:300]} (if this is expected, "
                               "declare it as the model class's export_blocker)")


def run_onnx(path: str | os.PathLike, inputs: tuple[torch.Tensor, ...], threads: int = 0) -> list[Any]:
    """Outputs (numpy arrays) of onnxruntime's CPU session on ``inputs`` (``threads``: 0 = its default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return session.run(None, feeds)


def export_onnx(model: Any, out: str | os.PathLike, batch: int = 1, opset: int | None = None) -> ExportResult:
    """Export ``model`` (eval mode, its example input at ``batch``) to ``out`` and check it with onnxruntime.

    Raises :class:`NotExportable` for a declared blocker or an exporter failure, and ArchlabError when
    onnxruntime's outputs differ from PyTorch's beyond the tolerance (no file is written then)."""
    require_export_extra()
    name = getattr(model, "registry_name", type(model).__name__)
    reason = export_blocker(model)
    if reason is not None:
        raise NotExportable(name, reason)
    if not 1 <= batch <= 4096:
        raise ArchlabError(f"--batch must be in [1, 4096], got {batch}")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not 18 <= opset <= newest:
        raise ArchlabError(f"--opset must be in [18, {newest}] (the dynamo exporter starts at 18), got {opset}")
    out = Path(out)
    if out.is_dir():
        raise ArchlabError(f"--out {out} is a directory; name the .onnx file to write")
    with torch.random.fork_rng(devices=[]):  # the same example input on every call, the caller's RNG untouched
        torch.manual_seed(0)
        inputs = example_inputs(model, batch)
    training = model.training
    model.eval()  # the graph is the inference graph (dropout off, BatchNorm on running statistics)
    try:
        with torch.no_grad():
            expected = [t.float() for t in flat_tensors(model(*inputs))]
        t0 = time.perf_counter()
        try:
            with _quiet():
                program = torch.onnx.export(model, inputs, dynamo=True, opset_version=opset, verbose=False)
        except Exception as exc:  # the exporter's errors have no common public base class
            raise _failure(name, exc) from None
    finally:
        model.train(training)  # the caller's model is left as it was
    seconds = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with _quiet():
            program.save(tmp)
        got = run_onnx(tmp, inputs)
        if len(got) != len(expected):
            raise ArchlabError(f"{name}: the ONNX graph has {len(got)} outputs, PyTorch returns {len(expected)}")
        diff = max(float((torch.from_numpy(g).float() - e).abs().max()) for g, e in zip(got, expected, strict=True))
        largest = max(float(e.abs().max()) for e in expected)
        result = ExportResult(out, name, batch, program.model.opset_imports.get("", opset or 0), len(got), diff,
                              largest, seconds, Path(tmp).stat().st_size)
        if not result.scaled_diff <= TOLERANCE:
            raise ArchlabError(f"{name}: {result.summary()} -- check failed, nothing written")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return result


# ---------------------------------------------------------------------------------------- command


def add_parser(sub: Any) -> None:
    s = sub.add_parser("export", help="export a run's model to ONNX and check it against onnxruntime")
    s.add_argument("run_dir", help="run directory or save_pretrained folder")
    s.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    s.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    s.add_argument("--batch", type=int, default=1, help="batch size of the example input (fixed in the graph)")
    s.add_argument("--opset", type=int, help="ONNX opset, >= 18 (default: the exporter's; 20 with torch 2.13)")
    s.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from .registry import load

    require_export_extra()
    model = load(args.run_dir)
    result = export_onnx(model, args.out, batch=args.batch, opset=args.opset)
    print(f"archlab: exported {result.name} (batch {result.batch}, opset {result.opset}) to {result.path} "
          f"({result.size_bytes / 1e6:.2f} MB) in {result.export_seconds:.1f} s")
    print(result.summary() + ": ok")
    return 0
