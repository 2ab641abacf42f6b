"""Writing files so that a crash never leaves half a file under the real name; matplotlib without a screen.

Every file archlab writes (checkpoints, final weights, ``config.json``, ``summary.json``, plots'
data, downloads) goes through :func:`atomic_write_bytes`: a temp file in the same folder, fsync,
rename, fsync of the folder. The temp file is created with mode 0600 by :func:`tempfile.mkstemp`;
the final file gets the permissions an ordinary ``open()`` would give it (0666 minus the umask), so
colleagues can read a shared run directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save as _st_save


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 minus the process umask (temp files start at 0600)."""
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename, fsync dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                        metadata: dict | None = None) -> None:
    """A safetensors file written atomically (final model weights, checkpoints)."""
    # safetensors refuses tensors that share storage (tied weights, views): give the later ones a copy.
    seen: set[int] = set()
    tensors = dict(tensors)
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[key] = t.clone()
        elif ptr:
            seen.add(ptr)
    atomic_write_bytes(path, _st_save(tensors, metadata=metadata))


def pyplot():  # noqa: ANN201 -- the matplotlib.pyplot module
    """``matplotlib.pyplot`` on the Agg backend (files only, no screen), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
