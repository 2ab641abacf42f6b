"""Ensembles of trained classifiers and their calibration.

``archlab ensemble RUN_DIR [RUN_DIR ...]`` (command in ``command.py``) averages the class probabilities
of the models of finished runs (a deep ensemble when the runs differ only in their seed; Lakshminarayanan et al.
2017) on one split of their common dataset, and reports every member's and the ensemble's accuracy,
negative log-likelihood and expected calibration error::

    p_ens(y | x) = 1/M sum_m softmax(f_m(x))_y

    ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|       (Guo et al. 2017, eq. 3; B_b: the examples
                                                         whose top probability lies in bin b of 15
                                                         equal-width bins over [0, 1])
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArchlabError

ECE_BINS = 15


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE of predicted class probabilities ``probs`` (N, C) against labels ``y`` (N,)."""
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == y).float()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence 0 cannot occur for a top probability.
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1
    total = torch.zeros(())
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.float().mean() * (correct[mask].mean() - confidence[mask].mean()).abs()
    return float(total)


def scores(log_probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, negative log-likelihood and ECE of log class probabilities (N, C)."""
    return {"acc": float((log_probs.argmax(-1) == y).float().mean()), "nll": float(F.nll_loss(log_probs, y)),
            "ece": expected_calibration_error(log_probs.exp(), y)}


@torch.no_grad()
def run_log_probabilities(run_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """(log class probabilities, labels, dataset identity) of a finished run's model on ``split``."""
    from .. import recipe as recipe_mod
    from ..registry import load

    recipe_file = run_dir / "recipe.toml"
    if not recipe_file.is_file():
        raise ArchlabError(f"{run_dir} is not a run directory (no recipe.toml)")
    recipe = recipe_mod.load(recipe_file)
    if recipe.data is None or recipe.loop_class.data_kind != "arrays":
        raise ArchlabError(f"{run_dir}: archlab ensemble combines classifiers of array datasets")
    model = load(run_dir).eval()
    data = recipe.loop_class.load_data(recipe)
    part = getattr(data, split)
    if len(part) == 0:
        raise ArchlabError(f"{run_dir}: its {split} split is empty")
    bs = recipe.data.eval_batch_size
    log_probs = torch.cat([F.log_softmax(model(part.x[i:i + bs]).float(), -1) for i in range(0, len(part), bs)])
    identity = (recipe.data.name, json.dumps(recipe.data.options, sort_keys=True), recipe.data.val_fraction,
                recipe.data.split_seed)
    return log_probs, part.y, identity


def ensemble(run_dirs: list[str | os.PathLike], split: str = "test") -> dict[str, Any]:
    """Members' and ensemble's accuracy, NLL and ECE on ``split`` (``val`` or ``test``)."""
    if split not in ("val", "test"):
        raise ArchlabError(f"--split must be val or test, got {split!r}")
    if len(run_dirs) < 2:
        raise ArchlabError("an ensemble needs at least two run directories")
    members, all_log_probs, labels, identity = [], [], None, None
    for d in map(Path, run_dirs):
        log_probs, y, ident = run_log_probabilities(d, split)
        if identity is not None and (ident != identity or not torch.equal(y, labels)):
            raise ArchlabError(f"{d} was trained on other data ({ident[0]}, options {ident[1]}, val_fraction "
                               f"{ident[2]}, split_seed {ident[3]}) than {run_dirs[0]}: members must share the "
                               f"{split} split")
        identity, labels = ident, y
        all_log_probs.append(log_probs)
        members.append({"run_dir": str(d), **scores(log_probs, y)})
    # log of the mean probability, computed in log space: log(1/M sum_m p_m) = logsumexp_m(log p_m) - log M
    stacked = torch.stack(all_log_probs)
    mean_log_probs = torch.logsumexp(stacked, dim=0) - math.log(len(stacked))
    best = max(members, key=lambda m: m["acc"])
    return {"split": split, "dataset": identity[0], "members": members, "ensemble": scores(mean_log_probs, labels),
            "best_member": best["run_dir"], "best_member_acc": best["acc"],
            "mean_member_acc": sum(m["acc"] for m in members) / len(members)}
