"""Progress display: a live one-line bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """``update(step, **metrics)`` redraws at most ~10 times a second (TTY) or logs every ``interval_s``."""

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None, enabled: bool = True,
                 interval_s: float = 10.0) -> None:
        self.total = total
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval = 0.1 if self.tty else interval_s
        self.start = time.perf_counter()
        self.first_step: int | None = None
        self.last_draw = 0.0
        self.metrics: dict[str, Any] = {}

    def line(self, step: int) -> str:
        elapsed = time.perf_counter() - self.start
        done = step - (self.first_step or 0)
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else 0.0
        pct = 100.0 * step / max(1, self.total)
        stats = " ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items())
        return (f"{self.desc} {step}/{self.total} ({pct:3.0f}%) {stats} "
                f"[{_fmt_time(elapsed)}<{_fmt_time(eta)}, {rate:.1f} it/s]").strip()

    def update(self, step: int, force: bool = False, **metrics: Any) -> None:
        if self.first_step is None:
            self.first_step = step
        self.metrics.update(metrics)
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last_draw < self.interval:
            return
        self.last_draw = now
        if self.tty:
            self.stream.write("\r\033[K" + self.line(step))
        else:
            self.stream.write(self.line(step) + "\n")
        self.stream.flush()

    def close(self, step: int) -> None:
        if not self.enabled:
            return
        self.update(step, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()
