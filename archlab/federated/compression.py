"""Compressing client updates before they are sent: top-k sparsification with error feedback, and 8-bit
stochastic quantization. The server receives the decompressed update; the loop counts the bytes.

**Top-k with error feedback** (Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with Memory"; Sattler et
al. 2019 for federated updates). Client k keeps a residual ``e_k`` (starts at 0) of what it has not
sent yet:

    a      = Delta_k + e_k
    sent   = top_k(a)         the ceil(rho * d) entries of largest magnitude over the whole update, others 0
    e_k   <- a - sent

so every coordinate is eventually transmitted; ``sum of sent + e_k = sum of Delta_k`` at every round.
Cost: 4 bytes of value + 4 bytes of index per kept entry.

**8-bit stochastic quantization** (the unbiased stochastic rounding of QSGD, Alistarh et al. 2017, on a
per-tensor min-max grid of 256 levels): with ``lo = min v``, ``s = (max v - lo) / 255``,

    q = floor((v - lo) / s + u),  u ~ U[0, 1)        (an integer in 0..255: 1 byte)
    v_hat = lo + s * q                                 E[v_hat] = v,  |v_hat - v| < s

Cost: 1 byte per entry + 8 bytes (lo, s) per tensor.
"""

from __future__ import annotations

import math

import torch


def topk(update: dict[str, torch.Tensor], fraction: float) -> tuple[dict[str, torch.Tensor], int]:
    """Keep the ``ceil(fraction * d)`` largest-magnitude entries of the whole update (d entries in all).
    Returns the sparse update (dense tensors with zeros) and its size in bytes (value + int32 index)."""
    flat = torch.cat([v.flatten() for v in update.values()])
    k = max(1, math.ceil(fraction * flat.numel()))
    keep = torch.zeros_like(flat)
    idx = flat.abs().topk(k).indices
    keep[idx] = flat[idx]
    out, start = {}, 0
    for name, v in update.items():
        out[name] = keep[start:start + v.numel()].view_as(v)
        start += v.numel()
    return out, 8 * k


def quantize8(update: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[dict[str, torch.Tensor], int]:
    """Unbiased 8-bit stochastic rounding of every tensor on its own min-max grid.
    Returns the dequantized update and its size in bytes."""
    out, size = {}, 0
    for name, v in update.items():
        lo, hi = v.min(), v.max()
        scale = (hi - lo) / 255
        if scale == 0:
            out[name] = v.clone()
        else:
            u = torch.rand(v.shape, generator=generator, dtype=v.dtype).to(v.device)
            q = torch.floor((v - lo) / scale + u).clamp(0, 255)
            out[name] = lo + scale * q
        size += v.numel() + 8
    return out, size


class ErrorFeedback:
    """Per-client residuals for top-k (kept only for clients that have sent; part of the checkpoint)."""

    def __init__(self) -> None:
        self.residual: dict[int, dict[str, torch.Tensor]] = {}

    def compress(self, client: int, update: dict[str, torch.Tensor], fraction: float
                 ) -> tuple[dict[str, torch.Tensor], int]:
        e = self.residual.get(client)
        a = {n: v + e[n] for n, v in update.items()} if e is not None else update
        sent, size = topk(a, fraction)
        self.residual[client] = {n: a[n] - sent[n] for n in a}
        return sent, size

    def state_dict(self) -> dict[int, dict[str, torch.Tensor]]:
        return self.residual

    def load_state_dict(self, state: dict[int, dict[str, torch.Tensor]]) -> None:
        self.residual = {int(k): {n: v.clone() for n, v in d.items()} for k, d in state.items()}
