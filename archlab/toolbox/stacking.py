"""Stacking (stacked generalization; Wolpert 1992) with a held-out meta-learner: the members (trained
runs) are fixed; a multinomial logistic regression learns how to combine their class probabilities,
fitted only on data the members did not train on -- the validation split -- and scored on the test
split::

    z(x) = [softmax(f_1(x)), ..., softmax(f_M(x))]                   (M K features)
    p(y | x) = softmax(W z(x) + b)_y
    W, b = argmin  sum_{(x, y) in val} -log p(y | x) + 1/(2C) ||W||^2     (b not penalized)

The objective is convex; it is minimized with L-BFGS in float64 (the same objective as
scikit-learn's LogisticRegression(C=C), which the tests use as an oracle).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArchlabError
from .ensemble import run_log_probabilities, scores


def fit_logistic(z: torch.Tensor, y: torch.Tensor, num_classes: int, c: float = 1.0,
                 max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial L2-regularized logistic regression on features z (N, D), labels y (N,):
    (W (K, D), b (K,)) minimizing ``sum_i CE_i + ||W||^2 / (2 C)``."""
    if not 0 < c < float("inf"):
        raise ArchlabError(f"C must be a positive finite number, got {c}")
    z = z.double()
    w = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y, reduction="sum") + (w * w).sum() / (2 * c)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def meta_log_probs(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Log class probabilities (N, K) of the meta-learner on features z (N, D)."""
    return F.log_softmax(z.double() @ w.T + b, -1).float()


def stacking(run_dirs: list[str | os.PathLike], c: float = 1.0) -> dict[str, Any]:
    """Fit the meta-learner on the members' validation probabilities; score it (and the members, and
    their plain average) on the test split."""
    if len(run_dirs) < 2:
        raise ArchlabError("stacking needs at least two run directories")
    val, test, y_val, y_test = [], [], None, None
    for d in map(Path, run_dirs):
        lv, yv, _ = run_log_probabilities(d, "val")
        lt, yt, _ = run_log_probabilities(d, "test")
        if y_val is not None and (not torch.equal(yv, y_val) or not torch.equal(yt, y_test)):
            raise ArchlabError(f"{d} has other val/test splits than {run_dirs[0]}: members must share them")
        y_val, y_test = yv, yt
        val.append(lv)
        test.append(lt)
    k = val[0].shape[1]
    w, b = fit_logistic(torch.cat([v.exp() for v in val], 1), y_val, k, c)
    stacked = meta_log_probs(torch.cat([t.exp() for t in test], 1), w, b)
    average = torch.logsumexp(torch.stack(test), 0) - math.log(len(test))
    members = [{"run_dir": str(d), **scores(t, y_test)} for d, t in zip(run_dirs, test, strict=True)]
    return {"method": "stacking", "split": "test", "meta_fit_on": "val", "meta_examples": len(y_val), "C": c,
            "members": members, "ensemble": scores(stacked, y_test), "average": scores(average, y_test),
            "best_member_acc": max(m["acc"] for m in members)}
