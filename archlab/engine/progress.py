"""Progress display: a live one-line bar on a terminal, plain log lines otherwise.

Without a terminal (a log file, a CI job, ``archlab reproduce``'s subprocesses) every line stays in
the output, so lines are rate-limited by time. A forced update (an evaluation's result) prints at
once, but at most once per ``interval_s``: a loop that evaluates every epoch would otherwise print
every epoch. A regular update prints when ``interval_s`` has passed since the last line and since
the last forced update, so frequent evaluations carry the log on their own instead of adding a
second line per interval. The final line of :meth:`Progress.close` always prints, unless it would
repeat the last line.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt(v: Any) -> str:
    """Counts as integers, other numbers with 4 significant digits and never in exponent notation
    from 10,000 up. Counters (episodes, env_steps) can arrive as floats, because the driver turns
    logged values into Python floats, so a whole float prints like an int: ``episodes=223``."""
    if not isinstance(v, float) or not math.isfinite(v):
        return str(v)
    if v.is_integer() or abs(v) >= 1e4:
        return f"{v:.0f}"
    return f"{v:.4g}"


class Progress:
    """``update(step, **metrics)`` redraws at most every 0.1 s (TTY) or prints a line at most every
    ``interval_s`` (otherwise; see the module docstring for forced lines). ``clock`` is for tests."""

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None, enabled: bool = True,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total = total
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval = 0.1 if self.tty else interval_s
        self.clock = clock
        self.start = clock()
        self.first_step: int | None = None
        self.last_draw = -math.inf  # the last line printed
        self.last_forced_draw = -math.inf  # the last line printed by a forced update
        self.last_forced = -math.inf  # the last forced update, printed or not
        self.metrics: dict[str, Any] = {}
        # What the last line showed: close() does not print the same line again.
        self.shown: tuple[int, dict[str, Any]] | None = None

    def line(self, step: int) -> str:
        elapsed = self.clock() - self.start
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
        now = self.clock()
        if force:
            self.last_forced = now
            if now - self.last_forced_draw < self.interval:
                return
            self.last_forced_draw = now
        elif now - self.last_draw < self.interval or now - self.last_forced < self.interval:
            return
        self._draw(step, now)

    def _draw(self, step: int, now: float) -> None:
        self.last_draw = now
        self.shown = (step, dict(self.metrics))
        if self.tty:
            self.stream.write("\r\033[K" + self.line(step))
        else:
            self.stream.write(self.line(step) + "\n")
        self.stream.flush()

    def close(self, step: int) -> None:
        if not self.enabled:
            return
        if self.tty:  # redrawing the bar in place costs nothing and shows the final time
            self._draw(step, self.clock())
            self.stream.write("\n")
            self.stream.flush()
        elif self.shown != (step, self.metrics):
            self._draw(step, self.clock())

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()
