"""DP-SGD's clipped gradient sum without ``vmap``: one batched forward and one backward to the layer outputs.

The fast path of :mod:`archlab.privacy.dpsgd` (``DPSGD(..., fast=True)``, ``[loop] fast = true`` of the dpsgd
loop); it returns what the reference's ``clip_per_sample(per_sample_grads(...))`` summed over the batch returns.

Every trainable parameter belongs to a layer whose per-example gradient is a function of the layer's input
``a`` and the gradient ``g`` of the summed loss with respect to its output (Goodfellow 2015, "Efficient
per-example gradient computations"). One forward with hooks records ``a`` and the output's autograd edge of
every such layer; one ``torch.autograd.grad`` of ``L = sum_i loss_i`` (``= B * loss_fn(model(x), y)``, the loss
must average over the batch) returns every ``g``; no parameter gradient is formed by autograd. With ``L``
positions per example (1 for a Linear on flat features, ``H_out * W_out`` for a conv, after ``unfold``):

    Linear / Conv (groups = 1):  a_i: (K, L) inputs (a conv's unfolded patches), g_i: (O, L)
        G_i        = g_i a_i^T                                    (O, K) the example's weight gradient
        ||G_i||^2  = sum_{l,l'} (a_i^T a_i)_{ll'} (g_i^T g_i)_{ll'}   "ghost norm" (Li et al. 2021, Sec. 4),
                   = ||a_i||^2 ||g_i||^2                            for L = 1; costs L^2 (K + O), no G_i
        bias_i     = sum_l g_i[:, l]
    LayerNorm / GroupNorm:  weight_i = sum over positions of g_i * a_hat_i, bias_i = sum of g_i, with a_hat the
        normalised input (recomputed from a).

(In the code ``a`` is stored (B, L, K) and ``g`` (B, O, L); a conv patch is ordered kernel position first,
channel last, and its weight's gradient is permuted back to ``(O, C, k_1, ..)`` once, after the sum.)

The example's norm over all parameters and its clipping factor are those of the reference,

    n_i = sqrt(sum_layers ||G_i||^2 + ||bias_i||^2),     c_i = min(1, C / (n_i + 1e-6)),

and the clipped sum comes out of one contraction per layer over examples and positions ("book-keeping",
Bu et al. 2023, "Differentially Private Optimization on Large Model at Small Cost"):

    sum_i c_i G_i = sum_{i,l} (c_i g_i[:, l]) a_i[:, l]^T          one (O, B L) x (B L, K) matrix product

Per layer the cheaper of two ways (the per-layer choice of Bu et al. 2022, "mixed ghost clipping"): with L = 1
the ghost norm (K + O per example, against O K for the per-example gradient) and the contraction above; with
L > 1 the per-example gradients themselves (one batched matmul g_i a_i^T, O K L per example, never more than
the ghost norm's L^2 (K + O) plus the contraction's O K L) and ``sum_i c_i G_i`` on them, unless those
B x O x K elements exceed ``max_instantiate``: then the ghost norm, which needs no per-example gradient.

``channels_last=True`` (4-d inputs): the forward runs on channels-last (NHWC) copies of the input and of the
4-d conv weights (``torch.func.functional_call``; the copies require grad only so that the layer outputs do,
their gradients are never formed). Same mathematics; PyTorch's CPU max-pooling and convolutions are much
faster in that layout (dp_cnn, batch 240, 1 thread: the forward takes about a third of the time). The
model's forward must then not ``.view()`` its feature maps (``flatten`` / ``reshape`` are fine).

A parameter reached through several calls (a layer used twice, or tied between layers) gets the sum of its
per-example gradients over the calls before the norm. Requirements: every trainable parameter belongs to a
Linear, Conv1d/2d/3d, LayerNorm or GroupNorm and is used only by that module's forward (no ``F.linear(x,
other.weight)``); conv padding mode ``"zeros"``; examples do not mix (no BatchNorm in training mode); the
inputs of these layers are not changed in place after the layer has read them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.func import functional_call

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SUPPORTED = (nn.Linear, *CONVS, nn.LayerNorm, nn.GroupNorm)
MAX_INSTANTIATE = 1 << 25
"""Largest B x O x K (elements) of a layer's per-example weight gradients formed when L > 1 (128 MiB in float32)."""


def _trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]


def unsupported_layers(model: nn.Module) -> list[str]:
    """``"name (Type)"`` of every module with trainable parameters that the fast path cannot handle."""
    bad = []
    for name, m in model.named_modules():
        if not _trainable(m):
            continue
        if not isinstance(m, SUPPORTED) or (isinstance(m, CONVS) and m.padding_mode != "zeros"):
            bad.append(f"{name or '(model)'} ({type(m).__name__})")
    return bad


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """A copy of the 4-d ``t`` stored channels-last (N, H, W, C in memory; explicit even when C = 1)."""
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


def _sq_norms(t: torch.Tensor) -> torch.Tensor:
    """(B,): the squared norm of every example's slice ``t[i]``."""
    return torch.linalg.vector_norm(t.reshape(len(t), -1), dim=1).square()


@dataclass
class _Factored:
    """Per-example gradients ``G_i = g_i a_i^T`` kept as their factors: ``g`` (B, O, L), ``a`` (B, L, K)."""

    g: torch.Tensor
    a: torch.Tensor

    def sq_norms(self) -> torch.Tensor:
        if self.g.shape[2] == 1:
            return _sq_norms(self.a) * _sq_norms(self.g)
        aa = torch.bmm(self.a, self.a.transpose(1, 2))  # (B, L, L)
        gg = torch.bmm(self.g.transpose(1, 2), self.g)
        return (aa * gg).sum((1, 2))

    def per_example(self) -> torch.Tensor:
        return torch.bmm(self.g, self.a)  # (B, O, K)

    def weighted_sum(self, c: torch.Tensor) -> torch.Tensor:
        b, o, length = self.g.shape
        if length == 1:
            return (self.g[:, :, 0] * c[:, None]).t() @ self.a[:, 0, :]
        cg = (self.g * c[:, None, None]).transpose(0, 1).reshape(o, b * length)
        return cg @ self.a.reshape(b * length, -1)


Grad = torch.Tensor | _Factored  # one call's per-example gradients of one parameter: (B, ...) or factored


def _conv_patches(m: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """The conv's input as patches (B, L, k_1 .. k_n C), L the number of output positions, each patch
    kernel-position-major and channel-minor (the weight's ``permute(0, 2, .., n + 1, 1)`` order: the copy reads
    runs of channels, contiguous in a channels-last input): zero padding, ``Tensor.unfold`` per spatial dim (a
    view), one copy."""
    n = x.dim() - 2
    if m.padding == "same":
        pads = []
        for d, k in zip(reversed(m.dilation), reversed(m.kernel_size), strict=True):
            pads += [d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2]
    else:
        pads = [q for p in reversed((0,) * n if m.padding == "valid" else m.padding) for q in (p, p)]
    if any(pads):
        x = F.pad(x, pads)
    for i, (k, s, d) in enumerate(zip(m.kernel_size, m.stride, m.dilation, strict=True)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)  # (B, C, O_1, .., O_i, rest.., span_1, .., span_i)
        if d > 1:
            x = x[..., ::d]
    b, c = x.shape[:2]
    return x.permute(0, *range(2, 2 + 2 * n), 1).reshape(b, -1, c * math.prod(m.kernel_size))


def _layer_grads(m: nn.Module, a: torch.Tensor, g: torch.Tensor, max_instantiate: int) -> dict[str, Grad]:
    """Per-example gradients of ``m``'s trainable parameters from its input ``a`` and output gradient ``g``.
    A conv weight's come as (O, k_1 .. k_n, C / groups) per example (see :func:`_to_weight`)."""
    b = a.shape[0]
    want = dict(_trainable(m))
    out: dict[str, Grad] = {}
    if isinstance(m, nn.Linear):
        a3 = a.reshape(b, -1, m.in_features)  # (B, L, K)
        g3 = g.reshape(b, -1, m.out_features).transpose(1, 2)  # (B, O, L)
    elif isinstance(m, CONVS):
        a3, g3 = _conv_patches(m, a), g.flatten(2)
    if isinstance(m, (nn.Linear, *CONVS)):
        if "weight" in want:
            groups = getattr(m, "groups", 1)
            if groups > 1:  # per group: (O / G, L) x (L, k C / G)
                o, (length, kc) = g3.shape[1], a3.shape[1:]
                c = m.in_channels
                w = torch.einsum("bgol,blkgc->bgokc", g3.reshape(b, groups, o // groups, length),
                                 a3.reshape(b, length, kc // c, groups, c // groups))
                out["weight"] = w.reshape(b, o, -1)
            else:
                fac = _Factored(g3, a3)
                small = b * g3.shape[1] * a3.shape[2] <= max_instantiate
                out["weight"] = fac.per_example() if g3.shape[2] > 1 and small else fac
        if "bias" in want:
            out["bias"] = g3.sum(2)
        return out
    if isinstance(m, nn.LayerNorm):
        a_hat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
        lead = tuple(range(1, a.dim() - len(m.normalized_shape)))
    else:  # GroupNorm: channel dim 1, positions after it
        a_hat = F.group_norm(a, m.num_groups, eps=m.eps)
        lead = tuple(range(2, a.dim()))
    if "weight" in want:
        out["weight"] = (g * a_hat).sum(lead) if lead else g * a_hat
    if "bias" in want:
        out["bias"] = g.sum(lead) if lead else g
    return out


def _to_weight(m: nn.Module, pname: str, t: torch.Tensor) -> torch.Tensor:
    """A summed gradient in :func:`_layer_grads`' order as the parameter's own shape and order."""
    p = getattr(m, pname)
    if isinstance(m, CONVS) and pname == "weight":  # (O, k_1 .. k_n, C / groups) -> (O, C / groups, k_1 .. k_n)
        n = p.dim() - 2
        return t.reshape(p.shape[0], *p.shape[2:], p.shape[1]).permute(0, n + 1, *range(1, n + 1)).contiguous()
    return t.reshape(p.shape)


@contextmanager
def _recording(model: nn.Module) -> Iterator[list[tuple[nn.Module, torch.Tensor, GradientEdge]]]:
    """Forward hooks on every layer with trainable parameters: (layer, its input, its output's autograd edge)
    per call. The edge is taken before any in-place op on the output, so its gradient is the layer's own."""
    calls: list[tuple[nn.Module, torch.Tensor, GradientEdge]] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls.append((module, args[0].detach(), get_gradient_edge(output)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if _trainable(m)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def clipped_grad_sum(model: nn.Module, loss_fn: Loss, x: torch.Tensor, y: torch.Tensor, max_norm: float,
                     max_instantiate: int = MAX_INSTANTIATE,
                     channels_last: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """``({name: sum_i c_i g_i}, norms, loss)``: every example's gradient clipped to ``max_norm`` and summed
    over the batch, the per-example gradient norms before clipping (B,) and the batch's mean loss (detached);
    ``loss_fn`` averages over the batch."""
    bad = unsupported_layers(model)
    if bad:
        raise ValueError(f"the DP-SGD fast path cannot compute per-example gradients of: {', '.join(bad)}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = {id(p): n for n, p in params.items()}
    with _recording(model) as calls:
        if channels_last and x.dim() == 4:
            weights = {n: _nhwc(p.detach()).requires_grad_(p.requires_grad) if p.dim() == 4 else p
                       for n, p in model.named_parameters()}
            out = functional_call(model, weights, (_nhwc(x),))
        else:
            out = model(x)
        mean_loss = loss_fn(out, y)
        loss = mean_loss * len(x)  # sum_i loss_i
    if not calls:
        raise ValueError("the model's forward used none of its layers with trainable parameters")
    outs = torch.autograd.grad(loss, [edge for _, _, edge in calls], allow_unused=True, materialize_grads=True)

    parts: dict[str, list[Grad]] = {n: [] for n in params}
    owner: dict[str, tuple[nn.Module, str]] = {}  # a module and attribute holding the parameter, for its order
    for (m, a, _), g in zip(calls, outs, strict=True):
        for pname, grad in _layer_grads(m, a, g, max_instantiate).items():
            n = names[id(getattr(m, pname))]
            parts[n].append(grad)
            owner.setdefault(n, (m, pname))
    b = len(x)
    grads: dict[str, Grad] = {}  # one entry per parameter reached: several calls' per-example gradients add up
    for n, ps in parts.items():
        if len(ps) == 1:
            grads[n] = ps[0]
        elif ps:  # (tied conv weights have the same shape, so the same order)
            grads[n] = sum((p.per_example() if isinstance(p, _Factored) else p).reshape(b, -1) for p in ps)

    sq = sum(g.sq_norms() if isinstance(g, _Factored) else _sq_norms(g) for g in grads.values())
    norms = torch.as_tensor(sq, dtype=loss.dtype, device=x.device).expand(b).sqrt()  # sq is 0 if no grads
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    summed = {}
    for n, p in params.items():
        g = grads.get(n)
        if g is None:  # not reached by the forward: a zero gradient, as in the reference
            summed[n] = torch.zeros_like(p)
            continue
        total = g.weighted_sum(factor) if isinstance(g, _Factored) else torch.tensordot(factor, g, dims=1)
        summed[n] = _to_weight(*owner[n], total)
    return summed, norms, mean_loss.detach()
