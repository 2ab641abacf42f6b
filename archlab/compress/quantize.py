"""Affine int8 quantization: observers, fake quantization with a straight-through estimator, post-training
(dynamic and static) quantization and quantization-aware training (Jacob et al. 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"; Krishnamoorthi 2018,
"Quantizing deep convolutional networks for efficient inference: A whitepaper").

**Affine quantization.** A real tensor ``x`` is represented by integers ``q`` in ``[q_min, q_max]``
(uint8: [0, 255], int8: [-128, 127]) with a scale ``s > 0`` and an integer zero point ``z``:

    q = clamp(z + round(x / s), q_min, q_max)           (round: half to even)
    x_hat = s * (q - z)                                 (dequantized value)

Real zero is exactly representable (``x = 0 -> q = z``), so zero padding and ReLU's zeros lose nothing.
``x / s`` is computed as ``x * (1 / s)`` in fp32, as torch's kernels do, so results agree bit for bit.

**Scale and zero point from an observed range** ``[min, max]`` (first widened to contain 0):

    asymmetric:  s = (max - min) / (q_max - q_min),         z = clamp(q_min - round(min / s), q_min, q_max)
    symmetric:   s = max(|min|, |max|) / ((q_max - q_min) / 2),  z = 0 (int8) or 128 (uint8)

with ``s`` at least fp32's machine epsilon. Per-tensor: one ``(s, z)``; per-channel: one per slice along
``ch_axis`` (output channels of a weight, Krishnamoorthi §3.1: recovers most of per-tensor's loss on
depthwise/narrow layers). The observed range is the running min/max over everything seen (``MinMax``) or an
exponential moving average of per-batch minima/maxima, ``m <- m + c (m_batch - m)`` (``moving_average``,
Jacob et al. §3: EMA of activation ranges during training).

**Fake quantization** ``x -> x_hat`` simulates the rounding in fp32. Its derivative is zero almost
everywhere, so training uses the clipping-aware straight-through estimator (Bengio et al. 2013; Jacob et al.
§3): ``d x_hat / d x = 1`` where ``q_min <= z + round(x / s) <= q_max`` and 0 where the value was clipped.

**Schemes** (what :func:`quantize_model` builds, a ``torch.fx`` rewrite of any traceable model):

- every Conv/Linear weight: int8, symmetric, per-tensor or per-channel (``per_channel``);
  Conv -> BatchNorm pairs are folded first, ``W' = W gamma / sqrt(var + eps)``, ``b' = beta + (b - mu) gamma /
  sqrt(var + eps)`` (Jacob et al. §3.2), so the deployed network has no BatchNorm left;
- ``dynamic``: activations quantized on the fly (uint8, the min/max of the current batch) at the input of
  each Conv/Linear; outputs stay in fp32;
- ``static``: every activation tensor has a fixed uint8 ``(s, z)`` from calibration: the model input and the
  output of every computing node (Conv, Linear, add, average pooling ...). Where a Conv/Linear/add feeds
  only a ReLU the quantizer sits after the ReLU (fused, as integer kernels do); shape-only nodes (max
  pooling, flatten, slicing, zero padding, dropout) keep their input's quantization;
- ``qat``: the static graph with observers and fake quantization both on while training (the STE carries
  the gradient), observers frozen late in training (Krishnamoorthi §3.3).

Bias stays fp32 here; the int8 runtime (:mod:`archlab.compress.int8_runtime`) stores it as int32 with scale
``s_input * s_weight`` (Jacob et al. §2.4), a rounding error below ``s_input s_weight / 2`` per output.

Shapes: quantizers act elementwise; per-channel scales have shape ``[C]`` and broadcast along ``ch_axis``.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from ..errors import ArchlabError

QDType = Literal["uint8", "int8"]
Scheme = Literal["dynamic", "static", "qat"]
ObserverKind = Literal["minmax", "moving_average"]

EPS = torch.finfo(torch.float32).eps


def qrange(dtype: QDType) -> tuple[int, int]:
    """``(q_min, q_max)`` of an 8-bit type."""
    return (0, 255) if dtype == "uint8" else (-128, 127)


def qparams(min_val: torch.Tensor, max_val: torch.Tensor, dtype: QDType = "uint8",
            symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``s`` (fp32) and zero point ``z`` (int32) covering ``[min_val, max_val]`` (widened to hold 0).

    Shapes: ``min_val``, ``max_val``: ``[]`` or ``[C]`` -> ``s``, ``z`` of the same shape.
    """
    qmin, qmax = qrange(dtype)
    lo = torch.minimum(min_val.float(), torch.zeros_like(min_val.float()))
    hi = torch.maximum(max_val.float(), torch.zeros_like(max_val.float()))
    if symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / ((qmax - qmin) / 2), min=EPS)
        zero = torch.full_like(scale, 128 if dtype == "uint8" else 0, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / float(qmax - qmin), min=EPS)
        zero = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero


def _broadcast(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel ``[C]`` -> shape that broadcasts along ``axis`` of ``x``; scalars unchanged."""
    if t.dim() == 0 or t.numel() == 1 and x.dim() == 0:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


class FakeQuantSTE(torch.autograd.Function):
    """``x_hat = s (clamp(z + round(x / s), q_min, q_max) - z)`` with the clipping-aware straight-through
    gradient ``dL/dx = dL/dx_hat * [q_min <= z + round(x / s) <= q_max]``. No gradient for ``s``, ``z``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int,
                axis: int) -> torch.Tensor:
        s = _broadcast(scale.float(), x, axis)
        z = _broadcast(zero.float(), x, axis)
        q = z + torch.round(x * (1.0 / s))  # x * (1/s): the product torch's kernels compute
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return (torch.clamp(q, qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: QDType = "uint8",
                  axis: int = 0) -> torch.Tensor:
    """Quantize-dequantize ``x`` (per-tensor when ``scale`` has one element, else per-channel along ``axis``)."""
    qmin, qmax = qrange(dtype)
    return FakeQuantSTE.apply(x, scale, zero, qmin, qmax, axis)


def fake_quantize_torch(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: QDType,
                        axis: int = 0) -> torch.Tensor:
    """The same numbers through torch's public ``fake_quantize_per_{tensor,channel}_affine`` ops (which
    ``torch.onnx.export`` writes as QuantizeLinear -> DequantizeLinear)."""
    qmin, qmax = qrange(dtype)
    if scale.dim() == 0:  # Python numbers: constants for torch.export (the tensor overload has no shape rule)
        return torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zero.item()), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale.float(), zero.to(torch.int32), axis, qmin, qmax)


@dataclass
class QuantConfig:
    """What :func:`quantize_model` builds."""

    scheme: Scheme = "static"
    """``dynamic`` (activations quantized per batch at Conv/Linear inputs), ``static`` (calibrated activation
    scales everywhere) or ``qat`` (static graph, observers and fake quantization on while training)."""
    per_channel: bool = True
    """Weights: one scale per output channel (else one per tensor)."""
    observer: ObserverKind = "minmax"
    """Activation ranges: running min/max, or an exponential moving average of per-batch min/max."""
    averaging_constant: float = 0.01
    """EMA rate c of ``moving_average`` (torch.ao's default)."""
    symmetric_activations: bool = False
    """Activations: symmetric uint8 (z = 128) instead of affine."""
    fold_bn: bool = True
    """Fold Conv/Linear -> BatchNorm pairs before quantizing (the deployed graph has no BatchNorm)."""

    def __post_init__(self) -> None:
        if self.scheme not in ("dynamic", "static", "qat"):
            raise ValueError(f"scheme must be dynamic, static or qat, got {self.scheme!r}")
        if self.observer not in ("minmax", "moving_average"):
            raise ValueError(f"observer must be minmax or moving_average, got {self.observer!r}")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {self.averaging_constant}")


class Observer(nn.Module):
    """Tracks the range of the tensors it sees and turns it into ``(scale, zero_point)``.

    ``per_channel``: one range per slice along ``ch_axis``. ``averaging_constant = 0``: running min/max over
    everything seen; ``c > 0``: ``m <- m + c (m_batch - m)`` (the first batch initializes ``m``).
    """

    def __init__(self, dtype: QDType = "uint8", symmetric: bool = False, per_channel: bool = False,
                 ch_axis: int = 0, averaging_constant: float = 0.0) -> None:
        super().__init__()
        self.dtype, self.symmetric, self.per_channel = dtype, symmetric, per_channel
        self.ch_axis, self.averaging_constant = ch_axis, averaging_constant
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        if self.per_channel:
            flat = x.transpose(0, self.ch_axis).reshape(x.shape[self.ch_axis], -1)
            lo, hi = flat.amin(1), flat.amax(1)
        else:
            lo, hi = torch.aminmax(x)
        if not torch.isfinite(self.min_val).all() or self.min_val.shape != lo.shape:
            new_lo, new_hi = lo, hi
        elif self.averaging_constant:
            c = self.averaging_constant
            new_lo, new_hi = self.min_val + c * (lo - self.min_val), self.max_val + c * (hi - self.max_val)
        else:
            new_lo, new_hi = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)
        self.min_val, self.max_val = new_lo.clone(), new_hi.clone()  # buffers may change shape (per-channel)
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.isfinite(self.min_val).all():
            raise ArchlabError("a quantizer has observed nothing: calibrate before quantizing")
        return qparams(self.min_val, self.max_val, self.dtype, self.symmetric)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("min_val", "max_val"):  # per-channel ranges arrive with their own shape
            if prefix + name in state_dict:
                setattr(self, name, state_dict[prefix + name].clone())
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        kind = f"ema {self.averaging_constant}" if self.averaging_constant else "minmax"
        return f"{self.dtype}, {'symmetric' if self.symmetric else 'affine'}, " \
               f"{'per-channel' if self.per_channel else 'per-tensor'}, {kind}"


class FakeQuantize(nn.Module):
    """Observer + fake quantization. ``observing``: update the range from each input; ``quantizing``:
    return ``x_hat`` (with scales from the range so far) instead of ``x``. Calibration = observing only;
    QAT = both; a deployed model = quantizing only. ``use_torch_ops`` routes through torch's
    ``fake_quantize_*`` ops (same numbers; what the ONNX exporter understands)."""

    def __init__(self, observer: Observer) -> None:
        super().__init__()
        self.observer = observer
        self.observing, self.quantizing, self.use_torch_ops = True, False, False
        self.is_weight = False
        self.frozen_qparams: tuple[torch.Tensor, torch.Tensor] | None = None
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer(x)
            self.scale, self.zero_point = self.observer.calculate_qparams()
        if not self.quantizing:
            return x
        if self.use_torch_ops:
            return fake_quantize_torch(x, *self.frozen_qparams, self.observer.dtype, self.observer.ch_axis)
        return fake_quantize(x, self.scale, self.zero_point, self.observer.dtype, self.observer.ch_axis)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("scale", "zero_point"):
            if prefix + name in state_dict:
                setattr(self, name, state_dict[prefix + name].clone())
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"observing={self.observing}, quantizing={self.quantizing}"


class DynamicQuantize(nn.Module):
    """Quantize an activation with the uint8 affine ``(s, z)`` of its own min/max, batch by batch."""

    dtype: QDType = "uint8"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.aminmax(x.detach())
        scale, zero = qparams(lo, hi, "uint8")
        return fake_quantize(x, scale, zero, "uint8")


class WeightFakeQuantize(nn.Module):
    """Parametrization of a Conv/Linear ``weight``: ``W -> W_hat`` (int8 symmetric, per-tensor or per output
    channel). It wraps a :class:`FakeQuantize` over the current weight (recomputed while observing)."""

    def __init__(self, per_channel: bool) -> None:
        super().__init__()
        self.fq = FakeQuantize(Observer("int8", symmetric=True, per_channel=per_channel, ch_axis=0))
        self.fq.quantizing = self.fq.is_weight = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.fq.observing:  # weights change in QAT: their range is the current one, not a running one
            self.fq.observer.min_val = torch.tensor(float("inf"))
        return self.fq(weight)


class TiedQuantize(nn.Module):
    """Re-quantize with another quantizer's ``(s, z)`` (after max pooling, flattening, slicing, zero padding:
    values already on that grid, so it changes nothing in fp32). It makes every tensor entering an integer
    kernel come out of a quantize-dequantize pair, the pattern int8 runtimes fuse."""

    def __init__(self, source: FakeQuantize) -> None:
        super().__init__()
        self._source = [source]  # a list: not a second registration of the source module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src = self._source[0]
        if not src.quantizing:
            return x
        if src.use_torch_ops:
            return fake_quantize_torch(x, *src.frozen_qparams, src.observer.dtype)
        return fake_quantize(x, src.scale, src.zero_point, src.observer.dtype)


# -- graph rewriting ------------------------------------------------------------------------------------------
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_RELU_MODULES = (nn.ReLU,)
_RELU_FUNCTIONS = (F.relu, torch.relu)
# Nodes that only move, select or max-reduce values: their output has their input's quantization.
_SHAPE_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity, nn.Unflatten)
_SHAPE_FUNCTIONS = (torch.flatten, F.max_pool1d, F.max_pool2d, F.pad, F.dropout, operator.getitem, torch.reshape)
_SHAPE_METHODS = ("view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze",
                  "size", "dim")


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    m = _module(gm, node)
    return (isinstance(m, _RELU_MODULES) or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target == "relu"))


def _is_shape_only(gm: fx.GraphModule, node: fx.Node) -> bool:
    m = _module(gm, node)
    if m is not None:
        return isinstance(m, _SHAPE_MODULES)
    if node.op == "call_function":
        if node.target is F.pad:  # only constant zero padding keeps the quantization (0 is exact)
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
            return mode == "constant" and not value
        return node.target in _SHAPE_FUNCTIONS
    return node.op == "call_method" and node.target in _SHAPE_METHODS


def fold_batchnorm(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Fold every BatchNorm that is the only user of a Conv/Linear into that layer (eval statistics):

        W' = W * gamma / sqrt(var + eps)   (per output channel),   b' = beta + (b - mean) * gamma / sqrt(var + eps)

    The layer gains a bias when it had none; the BatchNorm node disappears. Returns the (layer, batchnorm)
    names folded."""
    folded = []
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, _BATCHNORM):
            continue
        prev = node.args[0]
        layer = _module(gm, prev) if isinstance(prev, fx.Node) else None
        if not isinstance(layer, _WEIGHTED) or len(prev.users) != 1 or not bn.track_running_stats:
            continue
        with torch.no_grad():
            inv = torch.rsqrt(bn.running_var + bn.eps)
            gamma = bn.weight if bn.affine else torch.ones_like(inv)
            beta = bn.bias if bn.affine else torch.zeros_like(inv)
            factor = gamma * inv
            bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = beta + (bias - bn.running_mean) * factor
            layer.weight.mul_(factor.reshape(-1, *[1] * (layer.weight.dim() - 1)))
            layer.bias = nn.Parameter(new_bias.detach().clone())
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded.append((str(prev.target), str(node.target)))
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


def _insert_after(gm: fx.GraphModule, node: fx.Node, module: nn.Module, name: str) -> fx.Node:
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        q = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
    return q


def _activation_fq(cfg: QuantConfig) -> FakeQuantize:
    c = cfg.averaging_constant if cfg.observer == "moving_average" else 0.0
    return FakeQuantize(Observer("uint8", symmetric=cfg.symmetric_activations, averaging_constant=c))


def quantize_model(model: nn.Module, cfg: QuantConfig) -> fx.GraphModule:
    """A quantized copy of ``model`` (a ``torch.fx.GraphModule``; ``model`` is untouched), observing only
    (calibration mode) for ``static``/``qat`` -- see :func:`set_quant_mode`.

    Raises :class:`ArchlabError` when the model cannot be traced by ``torch.fx`` or has no Conv/Linear layer.
    """
    base = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(base)
    except Exception as exc:  # noqa: BLE001 -- any tracing failure is the same user-facing problem
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArchlabError(f"quantization needs a model torch.fx can trace; {type(model).__name__}: {msg[:160]}") \
            from None
    for node in list(gm.graph.nodes):  # no-op modules would hide Conv -> ReLU pairs from the fusion rule
        if isinstance(_module(gm, node), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    folded = fold_batchnorm(gm) if cfg.fold_bn else []
    weighted = [n for n in gm.graph.nodes if isinstance(_module(gm, n), _WEIGHTED)]
    if not weighted:
        raise ArchlabError(f"{type(model).__name__} has no Conv or Linear layer to quantize")
    for node in weighted:
        layer = _module(gm, node)
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)) and layer.padding_mode != "zeros":
            raise ArchlabError(f"layer {node.target}: padding_mode {layer.padding_mode!r} is not quantized")
        parametrize.register_parametrization(layer, "weight", WeightFakeQuantize(cfg.per_channel))
    count = 0

    def name() -> str:
        nonlocal count
        count += 1
        return f"act_quant_{count}"

    if cfg.scheme == "dynamic":
        for node in weighted:
            x = node.args[0]
            gm.add_submodule(n := name(), DynamicQuantize())
            with gm.graph.inserting_before(node):
                q = gm.graph.call_module(n, (x,))
            node.replace_input_with(x, q)
    else:
        source: dict[fx.Node, FakeQuantize] = {}  # quantized node -> the quantizer that fixed its (s, z)
        for node in list(gm.graph.nodes):
            if node.op in ("output", "get_attr") or _is_relu(gm, node) or node in source:
                continue
            if _is_shape_only(gm, node):
                parent = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
                if parent in source and node.target not in ("size", "dim"):
                    # Exact in fp32 (values stay on the grid); it marks the tensor as quantized for the runtime.
                    tied = TiedQuantize(source[parent])
                    source[_insert_after(gm, node, tied, name())] = source[parent]
                continue
            users = list(node.users)
            if node.op != "placeholder" and len(users) == 1 and _is_relu(gm, users[0]):
                node = users[0]  # fused: Conv/Linear/add -> ReLU -> quantize
            fq = _activation_fq(cfg)
            source[_insert_after(gm, node, fq, name())] = fq
    gm.graph.lint()
    gm.recompile()
    gm.folded_batchnorms = folded
    set_quant_mode(gm, observing=cfg.scheme != "dynamic", quantizing=cfg.scheme == "dynamic")
    return gm


def quantizers(model: nn.Module) -> Iterable[FakeQuantize]:
    return (m for m in model.modules() if isinstance(m, FakeQuantize))


def set_quant_mode(model: nn.Module, observing: bool, quantizing: bool) -> None:
    """Calibration: ``observing=True, quantizing=False``; QAT: both; frozen, deployed: ``False, True``.
    Weight quantizers always quantize once activations do (and whenever the model is quantized)."""
    for fq in quantizers(model):
        fq.observing = observing
        fq.quantizing = quantizing or fq.is_weight


def use_torch_ops(model: nn.Module, on: bool = True) -> None:
    """Route every quantizer through torch's ``fake_quantize_*`` ops (for ``torch.onnx.export``)."""
    for fq in quantizers(model):
        fq.use_torch_ops = on
        # Copies outside the module's buffers: what torch.export sees as constants, not inputs.
        fq.frozen_qparams = (fq.scale.detach().clone(), fq.zero_point.detach().clone()) if on else None


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Run ``batches`` through a model in calibration mode (observing, not quantizing); then freeze it
    (quantizing, not observing). Returns the number of batches seen."""
    set_quant_mode(model, observing=True, quantizing=False)
    model.eval()
    n = 0
    for x in batches:
        model(x)
        n += 1
    if n == 0:
        raise ArchlabError("static quantization needs at least one calibration batch")
    set_quant_mode(model, observing=False, quantizing=True)
    freeze_weights(model)
    return n


def post_training_quantize(model: nn.Module, cfg: QuantConfig,
                           batches: Callable[[], Iterable[torch.Tensor]] | None = None) -> fx.GraphModule:
    """Dynamic (no data) or static (calibrated on ``batches()``) post-training quantization, frozen."""
    gm = quantize_model(model, cfg)
    if cfg.scheme == "dynamic":
        freeze_weights(gm)
        return gm
    if batches is None:
        raise ArchlabError("static quantization needs calibration batches")
    calibrate(gm, batches())
    return gm


def freeze_weights(model: nn.Module) -> None:
    """Fix every weight quantizer's scales at the current weights' range and stop observing them."""
    with torch.no_grad():
        for m in model.modules():
            if parametrize.is_parametrized(m, "weight"):
                for p in m.parametrizations.weight:
                    if isinstance(p, WeightFakeQuantize):
                        p.fq.observing = True
                        p(m.parametrizations.weight.original)
                        p.fq.observing = False


def quant_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The quantizers' buffers (ranges, scales, zero points) of a quantized model, by name."""
    return {k: v for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] in ("scale", "zero_point", "min_val", "max_val")}


def load_quant_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Restore :func:`quant_state` into a model built by :func:`quantize_model` from the same network, and
    freeze it (quantizing with those scales, not observing)."""
    missing = set(quant_state(model)) - set(state)
    if missing:
        raise ArchlabError(f"quantizer state lacks {len(missing)} entries (e.g. {sorted(missing)[0]}): it was "
                           "saved from another network or scheme")
    model.load_state_dict(state, strict=False)
    set_quant_mode(model, observing=False, quantizing=True)


def to_float_model(gm: fx.GraphModule, template: nn.Module) -> nn.Module:
    """A copy of ``template`` (the registered network ``gm`` was built from) carrying ``gm``'s float weights
    (the latent weights QAT trained, before fake quantization). A Conv/Linear folded with its BatchNorm takes
    the folded weight, and the BatchNorm becomes the identity plus the folded bias (mean 0, variance
    ``1 - eps``, scale 1, shift ``b'``), so the copy computes what ``gm`` computes without quantizers and
    re-quantizing it rebuilds ``gm`` exactly."""
    out = copy.deepcopy(template).eval()
    folded = dict(getattr(gm, "folded_batchnorms", []))
    with torch.no_grad():
        for name, layer in gm.named_modules():
            if not isinstance(layer, _WEIGHTED):
                continue
            target = out.get_submodule(name)
            latent = layer.parametrizations.weight.original if parametrize.is_parametrized(layer, "weight") \
                else layer.weight
            target.weight.copy_(latent)
            if name in folded:
                bn = out.get_submodule(folded[name])
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                if bn.affine:
                    bn.weight.fill_(1.0)
                if target.bias is not None:
                    target.bias.copy_(layer.bias)
                    if bn.affine:
                        bn.bias.zero_()
                elif bn.affine:
                    bn.bias.copy_(layer.bias)
                else:
                    bn.running_mean.copy_(-layer.bias)
            elif layer.bias is not None:
                target.bias.copy_(layer.bias)
    return out


def calibration_batches(x: torch.Tensor, n_batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """``n_batches`` batches of ``x`` drawn without replacement by a seeded permutation."""
    if n_batches < 1:
        raise ArchlabError(f"calibration needs at least 1 batch, got {n_batches}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_batches * batch_size]
    return [x[i] for i in idx.split(batch_size)]
