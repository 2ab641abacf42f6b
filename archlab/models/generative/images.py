"""Pictures of generative models: image grids and latent interpolation (linear and spherical).

    lerp(a, b; s)  = (1 - s) a + s b
    slerp(a, b; s) = sin((1 - s) w) / sin w * a + sin(s w) / sin w * b,   cos w = a.b / (|a| |b|)
                     (Shoemake 1985; White 2016, "Sampling Generative Networks", for latent spaces:
                     a Gaussian code's norm stays typical along the path)

Images are (N, C, H, W) in [0, 1]; grids are written as PNG (and GIF for interpolation strips) with
matplotlib / Pillow, atomically.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch

from ...errors import ArchlabError
from ...io import atomic_write_bytes, pyplot


def pixel_range(x: torch.Tensor, dataset: str) -> tuple[float, float]:
    """(min, max) of the training images, which the generative loops map to [0, 1] or [-1, 1]; one line if the
    images are constant (nothing to model)."""
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        raise ArchlabError(f"data {dataset!r}: the training images are constant; nothing to model")
    return lo, hi


def lerp(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Linear interpolation: a, b (D,), s (S,) in [0, 1] -> (S, D)."""
    s = s.view(-1, 1).to(a.dtype)
    return (1 - s) * a + s * b


def slerp(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: a, b (D,), s (S,) in [0, 1] -> (S, D); linear when a and b are parallel."""
    s = s.view(-1, 1).to(a.dtype)
    cos = (a @ b / (a.norm() * b.norm()).clamp_min(1e-12)).clamp(-1, 1)
    w = torch.arccos(cos)
    if w.abs() < 1e-6:
        return lerp(a, b, s.view(-1))
    return (torch.sin((1 - s) * w) * a + torch.sin(s * w) * b) / torch.sin(w)


def grid(images: torch.Tensor, nrow: int, pad: int = 1) -> torch.Tensor:
    """Tile (N, C, H, W) images into one (C, rows * (H + pad) + pad, nrow * (W + pad) + pad) picture."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    out = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
    return out


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, title: str = "") -> Path:
    """Write (N, C, H, W) images in [0, 1] as a PNG grid (grey for one channel)."""
    picture = grid(images.detach().float().cpu().clamp(0, 1), nrow)
    plt = pyplot()
    rows = picture.shape[1] / picture.shape[2] * nrow
    fig, ax = plt.subplots(figsize=(nrow * 0.6 + 0.4, rows * 0.6 + (0.6 if title else 0.2)))
    if picture.shape[0] == 1:
        ax.imshow(picture[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(picture.permute(1, 2, 0).numpy())
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_gif(frames: torch.Tensor, path: str | os.PathLike, scale: int = 4, ms: int = 120) -> Path:
    """Write (S, C, H, W) frames in [0, 1] as a looping GIF (there and back), each pixel ``scale`` x ``scale``."""
    from PIL import Image

    frames = frames.detach().float().cpu().clamp(0, 1)
    frames = torch.cat([frames, frames.flip(0)[1:-1]])
    pics = []
    for f in frames:
        arr = (f.mean(0) * 255).round().to(torch.uint8).numpy()
        pics.append(Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST))
    buf = io.BytesIO()
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=ms, loop=0)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
