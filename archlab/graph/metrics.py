"""Ranking metrics for link prediction, in torch: ROC AUC and average precision.

Both agree with ``sklearn.metrics.roc_auc_score`` / ``average_precision_score`` including ties
(tested):

* ROC AUC is the probability that a random positive scores above a random negative, a tie counting
  one half (the Mann-Whitney U statistic, which equals the trapezoidal area under the ROC curve):

      AUC = (sum of the positives' average ranks - P (P + 1) / 2) / (P N)

* AP is the step-wise area under the precision-recall curve, one step per *distinct* score (tied
  scores enter together, as sklearn's thresholds do), no interpolation:

      AP = sum_k (R_k - R_{k-1}) P_k
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    scores, labels = scores.detach().reshape(-1).double(), labels.detach().reshape(-1).bool()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.numel()} vs {labels.numel()}")
    if not bool(labels.any()) or bool(labels.all()):
        raise ValueError("need both positive and negative labels")
    return scores, labels


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve; ties between a positive and a negative count 1/2.

    Shapes:
        scores: (M,) float, higher = more likely positive; labels: (M,) bool or {0, 1} -> float
    """
    scores, labels = _check(scores, labels)
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: its run of ranks ends at the cumulative count.
    ends = counts.cumsum(0).double()
    avg_rank = ends - (counts.double() - 1) / 2
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    rank_sum = avg_rank[inverse][labels].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def average_precision(scores: Tensor, labels: Tensor) -> float:
    """Average precision: sum over distinct thresholds of (recall gain) x precision.

    Shapes:
        scores: (M,) float, higher = more likely positive; labels: (M,) bool or {0, 1} -> float
    """
    scores, labels = _check(scores, labels)
    values, inverse = torch.unique(scores, return_inverse=True)  # ascending
    pos_per_value = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, labels.double())
    all_per_value = torch.bincount(inverse, minlength=len(values)).double()
    # Thresholds from the highest score down: everything at or above a value is predicted positive.
    tp = pos_per_value.flip(0).cumsum(0)
    predicted = all_per_value.flip(0).cumsum(0)
    precision = tp / predicted
    recall_gain = pos_per_value.flip(0) / tp[-1]
    return (recall_gain * precision).sum().item()


__all__ = ["average_precision", "roc_auc"]
