"""Metrics log: one JSON object per line in ``metrics.jsonl`` (+ optional TensorBoard)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    return v


def require_tensorboard() -> None:
    """Fail with one line when TensorBoard logging is asked for but the package is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        from ..errors import ArchlabError

        raise ArchlabError("train.tensorboard needs the tensorboard package: pip install tensorboard")


class MetricsLogger:
    """Appends ``{"step": ..., "split": ..., name: value}`` records; flushed per record so a crash loses nothing."""

    def __init__(self, path: str | os.PathLike, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))

    def log(self, step: int, split: str, **values: Any) -> None:
        record = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop records newer than the checkpoint so the log matches an uninterrupted run."""
        self._fh.close()
        kept = [ln for ln in read_metrics(self.path) if ln["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (crash mid-write) is ignored."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
