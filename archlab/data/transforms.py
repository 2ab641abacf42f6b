"""Batch-level data augmentation, specified by short strings (so recipes can list them).

``make_transform(["crop:4", "hflip"])`` returns ``t(x, generator) -> x'`` that works on a whole batch
on whatever device ``x`` lives on. Specs:

``shift:N``
    Shift each example by a random whole number of steps in ``[-N, N]``, filling with zeros. Signals
    ``(B, L)`` or ``(B, C, L)`` shift along ``L``; images ``(B, C, H, W)`` shift along ``H`` and ``W``
    independently.
``crop:N``
    Images only: pad by ``N`` zeros on every side, then crop a random window of the original size.
    Cropping the padded image at offset ``(i, j)`` in ``[0, 2N]`` is exactly a zero-filled shift by
    ``(N - i, N - j)``, so this is computed as a shift (no padded copy is made).
``hflip``
    Flip each example along its last (width / time) axis with probability 1/2.
``normalize:MEAN:STD``
    ``(x - MEAN) / STD``.

Randomness comes only from the ``torch.Generator`` passed in, which must be a CPU generator: random
numbers are drawn on the CPU, one tensor per step for the whole batch, then moved to ``x``'s device.
So a run gives the same augmentations on any device, and resuming with the saved generator state
continues the same stream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ArchlabError

ALLOWED = "shift:N, crop:N (N >= 0 a whole number), hflip, normalize:MEAN:STD (STD > 0)"

Step = Callable[[Tensor, torch.Generator], Tensor]


def shift_along(x: Tensor, dim: int, offsets: Tensor) -> Tensor:
    """Shift every example of ``x`` along ``dim`` by its own offset, filling with zeros.

    ``x``: (B, ...); ``offsets``: (B,) integers on ``x``'s device. ``out[b, ..., i, ...] =
    x[b, ..., i - offsets[b], ...]`` where that index exists, else 0 (positive offsets move content
    towards higher indices). One ``gather`` for the whole batch.
    """
    length = x.shape[dim]
    view = [1] * x.dim()
    view[dim] = length
    batch_view = [len(x)] + [1] * (x.dim() - 1)
    source = torch.arange(length, device=x.device).view(view) - offsets.view(batch_view)
    inside = (source >= 0) & (source < length)
    gathered = x.gather(dim, source.clamp(0, length - 1).expand(x.shape))
    return torch.where(inside.expand(x.shape), gathered, torch.zeros((), dtype=x.dtype, device=x.device))


def _random_offsets(x: Tensor, n: int, columns: int, generator: torch.Generator) -> Tensor:
    """(B, columns) integers uniform in [-n, n], drawn on the CPU, on ``x``'s device."""
    return torch.randint(-n, n + 1, (len(x), columns), generator=generator).to(x.device)


def _shift(n: int) -> Step:
    def shift(x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() == 4:  # images: independent vertical and horizontal shifts
            offsets = _random_offsets(x, n, 2, generator)
            return shift_along(shift_along(x, 2, offsets[:, 0]), 3, offsets[:, 1])
        if x.dim() in (2, 3):  # signals (B, L) or (B, C, L)
            return shift_along(x, x.dim() - 1, _random_offsets(x, n, 1, generator)[:, 0])
        raise ArchlabError(f"transform shift:{n}: expects (B, L), (B, C, L) or (B, C, H, W), got {tuple(x.shape)}")

    return shift


def _crop(n: int) -> Step:
    shift = _shift(n)

    def crop(x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() != 4:
            raise ArchlabError(f"transform crop:{n}: expects images (B, C, H, W), got {tuple(x.shape)}")
        return shift(x, generator)

    return crop


def _hflip(x: Tensor, generator: torch.Generator) -> Tensor:
    if x.dim() < 2:
        raise ArchlabError(f"transform hflip: expects a batch (B, ...), got {tuple(x.shape)}")
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip.view([len(x)] + [1] * (x.dim() - 1)), x.flip(-1), x)


def _normalize(mean: float, std: float) -> Step:
    def normalize(x: Tensor, generator: torch.Generator) -> Tensor:
        return (x - mean) / std

    return normalize


def _bad(spec: str, why: str = "unknown transform") -> ArchlabError:
    return ArchlabError(f"{why} {spec!r}; allowed: {ALLOWED}")


def _whole_number(spec: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()):  # rejects signs, decimals and empty strings
        raise _bad(spec, "bad argument in transform")
    return int(text)


def _parse(spec: str) -> Step:
    if not isinstance(spec, str):
        raise _bad(str(spec))
    name, *args = spec.strip().split(":")
    if name in ("shift", "crop") and len(args) == 1:
        n = _whole_number(spec, args[0])
        return _shift(n) if name == "shift" else _crop(n)
    if name == "hflip" and not args:
        return _hflip
    if name == "normalize" and len(args) == 2:
        try:
            mean, std = float(args[0]), float(args[1])
        except ValueError:
            raise _bad(spec, "bad argument in transform") from None
        if not std > 0:
            raise _bad(spec, "bad argument in transform")
        return _normalize(mean, std)
    raise _bad(spec)


class Transform:
    """A parsed list of specs, applied in order: ``t(x, generator) -> x`` (same shape)."""

    def __init__(self, specs: list[str] | tuple[str, ...]) -> None:
        if isinstance(specs, str):  # a lone string would otherwise be split into characters
            specs = [specs]
        self.specs = list(specs)
        self._steps = [_parse(s) for s in self.specs]
        self.max_offset = max((int(s.split(":")[1]) for s in self.specs if s.strip().split(":")[0]
                               in ("shift", "crop")), default=0)
        """The largest shift or crop padding: it must be smaller than the examples it moves."""

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for step in self._steps:
            x = step(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Transform({self.specs!r})"


def make_transform(specs: list[str] | tuple[str, ...]) -> Callable[[Tensor, torch.Generator], Tensor]:
    """Parse ``specs`` (see the module docstring) into one batch transform; bad specs raise ArchlabError.

    An empty list gives the identity.
    """
    return Transform(specs)
