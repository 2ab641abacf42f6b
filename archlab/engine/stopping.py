"""Early stopping on a validation metric."""

from __future__ import annotations

import math


class EarlyStopping:
    """Tracks the best value of a metric; ``should_stop`` after ``patience`` evaluations without improvement."""

    def __init__(self, patience: int, mode: str = "max", min_delta: float = 0.0) -> None:
        self.patience = patience
        self.mode = mode
        self.min_delta = min_delta
        self.best = -math.inf if mode == "max" else math.inf
        self.bad_evals = 0

    def update(self, value: float) -> bool:
        """Record a new value; return True when it is the best so far."""
        better = value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        if better:
            self.best = value
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.bad_evals = state["bad_evals"]
