"""Random views for self-supervised learning: seeded batch augmentations of images and 1-D signals.

Contrastive and distillation methods (SimCLR, MoCo, BYOL, ...) learn by making two random views of one
example agree; *which* invariances the encoder learns is decided here. ``make_views(["shift:10",
"noise:0.05"])`` returns ``t(x, generator) -> x'`` on a whole batch; every example gets its own random
parameters. Specs (applied in the order listed):

1-D signals ``(B, L)`` or ``(B, C, L)``:

``shift:N``
    Translate by a whole number of steps in ``[-N, N]``, zero-filled (the MNIST-1D SSL notebook's
    augmentation).
``roll:N``
    Circular shift by a whole number of steps in ``[-N, N]`` (what leaves the end comes back at the
    start; MNIST-1D's own translation is circular).
``scale:S``
    Multiply the amplitude by a factor uniform in ``[1 - S, 1 + S]``.
``stretch:S``
    Resample the time axis by a factor uniform in ``[1 - S, 1 + S]`` about the centre (linear
    interpolation, zero outside).

Images ``(B, C, H, W)``:

``resized_crop:MIN``
    Random resized crop (Szegedy et al. 2015; SimCLR's main augmentation): a window of area fraction
    uniform in ``[MIN, 1]`` and aspect ratio log-uniform in ``[3/4, 4/3]``, at a uniform position inside
    the image, resized back to ``H x W`` (bilinear).
``translate:N``
    Translate by whole pixels, independently in ``[-N, N]`` vertically and horizontally, zero-filled.
``rotate:DEG``
    Rotate about the centre by an angle uniform in ``[-DEG, DEG]`` degrees (bilinear, zero outside).
``elastic:ALPHA:SIGMA``
    Elastic distortion (Simard et al. 2003): a per-pixel displacement field, uniform in [-1, 1],
    smoothed by a Gaussian of std ``SIGMA`` pixels and scaled by ``ALPHA`` pixels.

Both:

``noise:STD``
    Add Gaussian noise of standard deviation ``STD``.
``prob:P:SPEC``
    Apply ``SPEC`` (any of the above, ``:``-separated) to each example with probability ``P``.

Randomness comes only from the CPU ``torch.Generator`` passed in (numbers are drawn on the CPU, one
tensor per spec for the whole batch, then moved to ``x``'s device), so a seed fixes the views on any
device and a checkpointed generator state resumes the same stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ArchlabError
from .transforms import shift_along

ALLOWED = ("shift:N, roll:N, scale:S, stretch:S (signals); resized_crop:MIN, translate:N, rotate:DEG, "
           "elastic:ALPHA:SIGMA (images); noise:STD; prob:P:SPEC")

View = Callable[[Tensor, torch.Generator], Tensor]


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator)).to(device)


def _need(x: Tensor, dims: tuple[int, ...], spec: str) -> None:
    if x.dim() not in dims:
        kind = "images (B, C, H, W)" if dims == (4,) else "signals (B, L) or (B, C, L)"
        raise ArchlabError(f"augmentation {spec!r} expects {kind}, got a batch of shape {tuple(x.shape)}")


def _warp(x: Tensor, theta: Tensor, padding: str = "zeros") -> Tensor:
    """Sample ``x`` (B, C, H, W) at ``theta @ [u, v, 1]`` for output pixel centres ``(u, v)`` in [-1, 1]
    (the image spans [-1, 1] edge to edge); outside it: zeros, or the nearest border pixel."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


# ------------------------------------------------------------------------------------------ signals


def shift(n: int) -> View:
    def view(x: Tensor, g: torch.Generator) -> Tensor:
        _need(x, (2, 3), f"shift:{n}")
        offsets = torch.randint(-n, n + 1, (len(x),), generator=g).to(x.device)
        return shift_along(x, x.dim() - 1, offsets)

    return view


def roll(n: int) -> View:
    def view(x: Tensor, g: torch.Generator) -> Tensor:
        _need(x, (2, 3), f"roll:{n}")
        offsets = torch.randint(-n, n + 1, (len(x),), generator=g).to(x.device)
        length = x.shape[-1]
        source = (torch.arange(length, device=x.device) - offsets.view(-1, 1)) % length     # [B, L]
        return x.gather(-1, source.view([len(x)] + [1] * (x.dim() - 2) + [length]).expand(x.shape))

    return view


def scale(s: float) -> View:
    def view(x: Tensor, g: torch.Generator) -> Tensor:
        factor = _uniform(len(x), 1 - s, 1 + s, g, x.device).to(x.dtype)
        return x * factor.view([len(x)] + [1] * (x.dim() - 1))

    return view


def stretch(s: float) -> View:
    """Resample: ``out[t] = x[c + (t - c) / f]`` with ``c`` the centre and ``f`` the stretch factor."""

    def view(x: Tensor, g: torch.Generator) -> Tensor:
        _need(x, (2, 3), f"stretch:{s}")
        signal = x.unsqueeze(1) if x.dim() == 2 else x                  # (B, C, L)
        factor = _uniform(len(x), 1 - s, 1 + s, g, x.device)
        # A 1-D resample is a 2-D warp of a height-1 image that leaves the vertical axis alone.
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0] = 1 / factor
        theta[:, 1, 1] = 1.0
        out = _warp(signal.unsqueeze(2), theta).squeeze(2)
        return out.squeeze(1) if x.dim() == 2 else out

    return view


# ------------------------------------------------------------------------------------------- images


def resized_crop(min_area: float) -> View:
    """Window of area ``a * H W`` and aspect ``r = w / h``: ``w = sqrt(a r)``, ``h = sqrt(a / r)`` (as
    fractions of the side), clipped to 1, centred uniformly where it fits; ``theta`` maps the output
    grid onto that window."""

    def view(x: Tensor, g: torch.Generator) -> Tensor:
        _need(x, (4,), f"resized_crop:{min_area}")
        b = len(x)
        area = _uniform(b, min_area, 1.0, g, x.device)
        log_ratio = _uniform(b, math.log(3 / 4), math.log(4 / 3), g, x.device)
        w = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)
        h = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
        cx = (1 - w) * _uniform(b, -1.0, 1.0, g, x.device)   # centre in [-(1 - w), 1 - w]: inside the image
        cy = (1 - h) * _uniform(b, -1.0, 1.0, g, x.device)
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = w, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        # The window is inside the image, but its outer sample points can fall between the last pixel
        # centre and the edge: interpolate there against the border pixel, not against zeros.
        return _warp(x, theta, padding="border")

    return view


def translate(n: int) -> View:
    def view(x: Tensor, g: torch.Generator) -> Tensor:
        _need(x, (4,), f"translate:{n}")
        offsets = torch.randint(-n, n + 1, (len(x), 2), generator=g).to(x.device)
        return shift_along(shift_along(x, 2, offsets[:, 0]), 3, offsets[:, 1])

    return view


def rotate(degrees: float) -> View:
    def view(x: Tensor, g: torch.Generator) -> Tensor:
        _need(x, (4,), f"rotate:{degrees}")
        angle = _uniform(len(x), -degrees, degrees, g, x.device) * math.pi / 180
        cos, sin = angle.cos(), angle.sin()
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
        return _warp(x, theta)

    return view


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    return k / k.sum()


def elastic(alpha: float, sigma: float) -> View:
    kernel = _gaussian_kernel(sigma)

    def view(x: Tensor, g: torch.Generator) -> Tensor:
        _need(x, (4,), f"elastic:{alpha}:{sigma}")
        b, _, h, w = x.shape
        field = (torch.rand(b, 2, h, w, generator=g) * 2 - 1).to(x.device)   # (B, 2, H, W): dx, dy
        k = kernel.to(x.device)
        pad = len(k) // 2
        # Separable Gaussian smoothing of both displacement channels (zero padding at the border).
        field = F.conv2d(F.pad(field, (pad, pad, 0, 0)), k.view(1, 1, 1, -1).expand(2, 1, 1, -1), groups=2)
        field = F.conv2d(F.pad(field, (0, 0, pad, pad)), k.view(1, 1, -1, 1).expand(2, 1, -1, 1), groups=2)
        # Pixels -> normalised grid units (a side of S pixels spans 2).
        shift_xy = alpha * field.permute(0, 2, 3, 1) * torch.tensor([2 / w, 2 / h], device=x.device)
        ident = torch.eye(2, 3, device=x.device).expand(b, 2, 3)
        grid = F.affine_grid(ident, list(x.shape), align_corners=False) + shift_xy
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)

    return view


# --------------------------------------------------------------------------------------------- both


def noise(std: float) -> View:
    def view(x: Tensor, g: torch.Generator) -> Tensor:
        return x + std * torch.randn(x.shape, generator=g).to(device=x.device, dtype=x.dtype)

    return view


def with_probability(p: float, inner: View) -> View:
    def view(x: Tensor, g: torch.Generator) -> Tensor:
        apply = (torch.rand(len(x), generator=g) < p).to(x.device)
        return torch.where(apply.view([len(x)] + [1] * (x.dim() - 1)), inner(x, g), x)

    return view


# ------------------------------------------------------------------------------------------ parsing


def _number(spec: str, text: str, integer: bool = False, low: float = 0.0, high: float = math.inf) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise ArchlabError(f"bad number {text!r} in augmentation {spec!r}; allowed: {ALLOWED}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ArchlabError(f"augmentation {spec!r}: {text} is outside [{low}, {high}]")
    return value


def _parse(spec: str) -> View:
    if not isinstance(spec, str) or not spec.strip():
        raise ArchlabError(f"unknown augmentation {spec!r}; allowed: {ALLOWED}")
    name, *args = spec.strip().split(":")
    if name == "prob" and len(args) >= 2:
        return with_probability(_number(spec, args[0], high=1.0), _parse(":".join(args[1:])))
    one = len(args) == 1
    if name == "shift" and one:
        return shift(int(_number(spec, args[0], integer=True, high=10**4)))
    if name == "roll" and one:
        return roll(int(_number(spec, args[0], integer=True, high=10**4)))
    if name == "translate" and one:
        return translate(int(_number(spec, args[0], integer=True, high=10**4)))
    if name == "scale" and one:
        return scale(_number(spec, args[0], high=0.99))
    if name == "stretch" and one:
        return stretch(_number(spec, args[0], high=0.9))
    if name == "resized_crop" and one:
        return resized_crop(_number(spec, args[0], low=0.01, high=1.0))
    if name == "rotate" and one:
        return rotate(_number(spec, args[0], high=180.0))
    if name == "noise" and one:
        return noise(_number(spec, args[0], high=1e3))
    if name == "elastic" and len(args) == 2:
        return elastic(_number(spec, args[0], high=1e3), _number(spec, args[1], low=0.1, high=100.0))
    raise ArchlabError(f"unknown augmentation {spec!r}; allowed: {ALLOWED}")


class Views:
    """A parsed list of augmentation specs applied in order: ``t(x, generator) -> x`` (same shape)."""

    def __init__(self, specs: list[str] | tuple[str, ...]) -> None:
        if isinstance(specs, str):  # a lone string would otherwise be split into characters
            specs = [specs]
        self.specs = list(specs)
        self._steps = [_parse(s) for s in self.specs]

    def max_shift(self) -> int:
        """The largest ``shift``/``translate``: it must be smaller than the examples it moves."""
        return max((int(s.split(":")[-1]) for s in self.specs if s.split(":")[-2:][0] in ("shift", "translate")),
                   default=0)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for step in self._steps:
            x = step(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Views({self.specs!r})"


def make_views(specs: list[str] | tuple[str, ...]) -> Views:
    """Parse ``specs`` (see the module docstring); bad specs raise a one-line ArchlabError."""
    return Views(specs)
