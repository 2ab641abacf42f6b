"""Compressing client updates before they are sent: top-k sparsification with error feedback, and 8-bit
stochastic quantization. The ``*_pack`` functions give what a client sends (over Flower: what the node puts in
its reply), :func:`unpack` the dense update the server rebuilds from it and :func:`packed_bytes` its size, which
the loop counts.

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


def topk_pack(update: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """What top-k sends: the ``ceil(fraction * d)`` largest-magnitude entries of the whole update (d entries
    in all) as ``values`` (float32) and their flat positions ``indices`` (int32)."""
    flat = torch.cat([v.flatten() for v in update.values()])
    k = max(1, math.ceil(fraction * flat.numel()))
    idx = flat.abs().topk(k).indices
    return {"values": flat[idx], "indices": idx.to(torch.int32)}


def quantize8_pack(update: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """What 8-bit quantization sends for every tensor ``name``: ``name.q`` (uint8 levels), ``name.lo`` and
    ``name.scale`` (float32 scalars). A constant tensor has scale 0 and levels 0."""
    out = {}
    for name, v in update.items():
        lo, hi = v.min(), v.max()
        scale = (hi - lo) / 255
        if scale == 0:
            q = torch.zeros_like(v, dtype=torch.uint8)
        else:
            u = torch.rand(v.shape, generator=generator, dtype=v.dtype).to(v.device)
            q = torch.floor((v - lo) / scale + u).clamp(0, 255).to(torch.uint8)
        out.update({f"{name}.q": q, f"{name}.lo": lo, f"{name}.scale": scale})
    return out


def unpack(packed: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense update the server reconstructs from a packed one (top-k or 8-bit); ``like`` gives the names,
    shapes and order of the update's tensors."""
    if "indices" in packed:
        ref = next(iter(like.values()))
        flat = torch.zeros(sum(v.numel() for v in like.values()), dtype=ref.dtype, device=ref.device)
        flat[packed["indices"].long()] = packed["values"].to(flat)
        out, start = {}, 0
        for name, v in like.items():
            out[name] = flat[start:start + v.numel()].view_as(v)
            start += v.numel()
        return out
    return {name: packed[f"{name}.lo"] + packed[f"{name}.scale"] * packed[f"{name}.q"].to(v.dtype)
            for name, v in like.items()}


def packed_bytes(packed: dict[str, torch.Tensor]) -> int:
    """Bytes a packed update takes on the wire: 8 per top-k entry; 1 per entry + 8 per tensor for 8-bit."""
    return sum(v.numel() * v.element_size() for v in packed.values())


def topk(update: dict[str, torch.Tensor], fraction: float) -> tuple[dict[str, torch.Tensor], int]:
    """Top-k sparsification: the sparse update (dense tensors with zeros) and its size in bytes."""
    packed = topk_pack(update, fraction)
    return unpack(packed, update), packed_bytes(packed)


def quantize8(update: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[dict[str, torch.Tensor], int]:
    """Unbiased 8-bit stochastic rounding of every tensor on its own min-max grid.
    Returns the dequantized update and its size in bytes."""
    packed = quantize8_pack(update, generator)
    return unpack(packed, update), packed_bytes(packed)


class ErrorFeedback:
    """Per-client residuals for top-k (kept only for clients that have sent; part of the checkpoint)."""

    def __init__(self) -> None:
        self.residual: dict[int, dict[str, torch.Tensor]] = {}

    def pack(self, client: int, update: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
        """Top-k of ``update`` + the client's residual; what was not sent becomes its new residual."""
        e = self.residual.get(client)
        a = {n: v + e[n] for n, v in update.items()} if e is not None else update
        packed = topk_pack(a, fraction)
        sent = unpack(packed, a)
        self.residual[client] = {n: a[n] - sent[n] for n in a}
        return packed

    def compress(self, client: int, update: dict[str, torch.Tensor], fraction: float
                 ) -> tuple[dict[str, torch.Tensor], int]:
        packed = self.pack(client, update, fraction)
        return unpack(packed, update), packed_bytes(packed)

    def state_dict(self) -> dict[int, dict[str, torch.Tensor]]:
        return self.residual

    def load_state_dict(self, state: dict[int, dict[str, torch.Tensor]]) -> None:
        self.residual = {int(k): {n: v.clone() for n, v in d.items()} for k, d in state.items()}
