"""Applying gates to a state tensor of shape (B, 2, ..., 2) without building 2^n x 2^n matrices.

See :mod:`archlab.quantum.circuit` ("Gates") for the idea; :class:`~archlab.quantum.circuit.Circuit`, the adjoint
method and the density-matrix simulator all apply gates through these two functions.
"""

from __future__ import annotations

import torch


def apply_matrix(psi: torch.Tensor, u: torch.Tensor, wires: tuple[int, ...]) -> torch.Tensor:
    """Apply a (2^k, 2^k) or (B, 2^k, 2^k) matrix ``u`` to ``wires`` of a (B, 2, ..., 2) state.

    One and two wires (almost every gate) contract on a view of the state, without moving axes (one wire:
    four elementwise products); more wires move the touched axes last and do one batched matrix product."""
    n, k = psi.dim() - 1, len(wires)
    b = psi.shape[0]
    if k == 1:  # view as (B, 2^w, 2, rest): psi'[., a, i, r] = sum_j U[i, j] psi[., a, j, r], elementwise
        w = wires[0]
        view = psi.reshape(b, 2**w, 2, 2 ** (n - w - 1))
        x0, x1 = view.unbind(2)  # unbind, not indexing: its backward is one stack, not zeros + copies
        u00, u01, u10, u11 = u.reshape(-1, 4, 1, 1).unbind(1)  # (B or 1, 1, 1) broadcasts over (a, rest)
        out = torch.stack([u00 * x0 + u01 * x1, u10 * x0 + u11 * x1], dim=2)
        return out.reshape((-1,) + psi.shape[1:])
    if k == 2:  # view as (B, a, 2, m, 2, r) with the lower wire first; U as (2, 2, 2, 2) = [i1, i2, j1, j2]
        w1, w2 = wires
        lo, hi = min(wires), max(wires)
        view = psi.reshape(b, 2**lo, 2, 2 ** (hi - lo - 1), 2, 2 ** (n - hi - 1))
        u4 = u.reshape(u.shape[:-2] + (2, 2, 2, 2))
        if w1 > w2:  # the matrix's first wire is the higher axis: swap its row and column bit orders
            u4 = u4.transpose(-4, -3).transpose(-2, -1)
        eq = "ijkl,xakmlr->xaimjr" if u.dim() == 2 else "xijkl,xakmlr->xaimjr"
        return torch.einsum(eq, u4, view).reshape((-1,) + psi.shape[1:])
    axes = [w + 1 for w in wires]
    last = list(range(n + 1 - k, n + 1))
    moved = torch.movedim(psi, axes, last)
    shape = moved.shape
    flat = moved.reshape(shape[0], -1, 2**k)
    out = flat @ u.transpose(-1, -2)  # (B, R, 2^k) @ (B or 1, 2^k, 2^k): row r -> U row r
    return torch.movedim(out.reshape((out.shape[0],) + shape[1:]), last, axes)


def apply_controlled(psi: torch.Tensor, u: torch.Tensor | None, control: int, target: int) -> torch.Tensor:
    """A controlled single-qubit gate: ``u`` (2, 2) or (B, 2, 2) acts on ``target`` only in the half of
    the state where ``control`` is 1; the other half is untouched (half the work of the 4 x 4 matrix).
    ``u = None`` is X (CNOT): the half is flipped along the target axis."""
    off, on = psi.unbind(control + 1)
    t = target - (target > control)
    on = on.flip(t + 1) if u is None else apply_matrix(on, u, (t,))
    return torch.stack([off.expand_as(on), on], dim=control + 1)
