"""Generalized zero-shot evaluation from a score matrix, and ESZSL fitted over a grid with its regularisers chosen
on held-out *seen* classes.

Scores. Any zero-shot model gives an (n, Z) matrix of compatibilities between n examples and Z described classes.
With seen classes S and unseen classes U (Xian, Lampert, Schiele & Akata 2018, "Zero-Shot Learning -- A
Comprehensive Evaluation of the Good, the Bad and the Ugly", TPAMI, Sec. 4.2):

    unseen_acc = per-class accuracy on unseen examples, candidates U only                 (conventional ZSL)
    gzsl_seen  = per-class accuracy on seen examples,   candidates S + U
    gzsl_unseen= per-class accuracy on unseen examples, candidates S + U
    gzsl_h     = 2 gzsl_seen gzsl_unseen / (gzsl_seen + gzsl_unseen)                        (harmonic mean H)

Per-class accuracy = mean over classes of the fraction of that class's examples predicted right.

Calibrated stacking (Chao, Changpinyo, Gong & Sha 2016, "An Empirical Study and Analysis of Generalized Zero-Shot
Learning for Object Recognition in the Wild", ECCV, Eq. 6): predict argmax_z [F(x, z) - delta 1(z in S)]; a
larger delta moves predictions from seen to unseen classes. Sweeping delta over the real line traces the
seen-unseen accuracy curve; its area is AUSUC (their Sec. 4.2), a calibration-free summary (ESZSL and a
compatibility net may score on different scales, so one fixed delta would not compare them fairly).

ESZSL over a grid. The closed form of :class:`archlab.meta.zeroshot.ESZSL`,
V = (X X^T + gamma I)^-1 X Y S^T (S S^T + lambda I)^-1, costs a d x d solve per (gamma, lambda). With the
eigendecompositions X X^T = U diag(e) U^T and S S^T = Q diag(f) Q^T it is

    V = U [ (U^T X Y S^T Q) / ((e + gamma) (f + lambda)^T) ] Q^T           (elementwise division)

so a whole grid costs two eigendecompositions (:class:`EszslPath`; tested equal to ``ESZSL.fit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .zeroshot import ESZSL, signed_targets


def per_class_accuracy(pred: torch.Tensor, truth: torch.Tensor, classes: Sequence[int]) -> float:
    """Mean over ``classes`` of the fraction of each class's examples with ``pred == truth`` (absent: skipped)."""
    accs = [(pred[truth == c] == c).double().mean() for c in classes if bool((truth == c).any())]
    return float(torch.stack(accs).mean()) if accs else 0.0


def positions(y: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Each label's index in ``classes`` (every label must be one of them): class ids -> ESZSL's column indices."""
    return (y[:, None] == torch.tensor(list(classes))[None, :]).long().argmax(1)


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def gzsl_metrics(scores: torch.Tensor, y: torch.Tensor, seen: Sequence[int], unseen: Sequence[int],
                 delta: float = 0.0) -> dict[str, float]:
    """``unseen_acc``, ``gzsl_seen``, ``gzsl_unseen``, ``gzsl_h`` of ``scores`` (n, Z) against labels ``y`` (n,),
    seen classes penalised by ``delta`` in the generalized setting (calibrated stacking; 0: plain argmax)."""
    seen_t, unseen_t = torch.tensor(list(seen)), torch.tensor(list(unseen))
    mask_u = torch.isin(y, unseen_t)
    pred_u = unseen_t[scores[mask_u][:, unseen_t].argmax(1)]
    penalised = scores.clone()
    penalised[:, seen_t] -= delta
    candidates = torch.cat([seen_t, unseen_t])
    pred_all = candidates[penalised[:, candidates].argmax(1)]
    s, u = per_class_accuracy(pred_all, y, seen), per_class_accuracy(pred_all, y, unseen)
    return {"unseen_acc": per_class_accuracy(pred_u, y[mask_u], unseen), "gzsl_seen": s, "gzsl_unseen": u,
            "gzsl_h": harmonic_mean(s, u)}


def seen_unseen_curve(scores: torch.Tensor, y: torch.Tensor, seen: Sequence[int],
                      unseen: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The calibrated-stacking curve: (deltas, gzsl_seen, gzsl_unseen) at every delta where a prediction changes,
    plus both ends (delta = -inf: every prediction seen; +inf: every prediction unseen), deltas ascending.

    Example i is predicted as its best unseen class when delta > g_i = max_S F - max_U F, else as its best seen
    class; sorting the g_i gives the whole curve with two cumulative sums."""
    seen_t, unseen_t = torch.tensor(list(seen)), torch.tensor(list(unseen))
    scores = scores.double()
    best_s, arg_s = scores[:, seen_t].max(1)
    best_u, arg_u = scores[:, unseen_t].max(1)
    right_s = (seen_t[arg_s] == y) & torch.isin(y, seen_t)       # right while predicted seen
    right_u = (unseen_t[arg_u] == y) & torch.isin(y, unseen_t)   # right once switched to unseen
    counts = torch.bincount(y, minlength=int(max(max(seen), max(unseen), int(y.max()))) + 1).double()
    present_s = sum(1 for c in seen if counts[c] > 0)
    present_u = sum(1 for c in unseen if counts[c] > 0)
    w = 1.0 / counts[y]                                          # each class weighs 1 in its per-class mean
    ws = torch.where(right_s, w, 0.0) / max(present_s, 1)
    wu = torch.where(right_u, w, 0.0) / max(present_u, 1)
    gap = best_s - best_u
    order = torch.argsort(gap)
    gap, ws, wu = gap[order], ws[order], wu[order]
    # after passing the k-th smallest gap, examples 0..k are predicted unseen
    last_of_tie = torch.ones_like(gap, dtype=torch.bool)
    last_of_tie[:-1] = gap[1:] != gap[:-1]
    acc_s = float(ws.sum()) - torch.cumsum(ws, 0)[last_of_tie]
    acc_u = torch.cumsum(wu, 0)[last_of_tie]
    deltas = torch.cat([torch.tensor([-torch.inf], dtype=gap.dtype), gap[last_of_tie]])
    zero = torch.zeros(1, dtype=torch.float64)
    return deltas, torch.cat([ws.sum().reshape(1), acc_s]), torch.cat([zero, acc_u])


def ausuc(scores: torch.Tensor, y: torch.Tensor, seen: Sequence[int], unseen: Sequence[int]) -> float:
    """Area under the seen-unseen accuracy curve (Chao et al. 2016, Sec. 4.2): integral of gzsl_unseen over
    gzsl_seen along the calibrated-stacking sweep (trapezoids; 1 for a perfect model)."""
    _, acc_s, acc_u = seen_unseen_curve(scores, y, seen, unseen)
    return float(torch.trapezoid(acc_u.flip(0), acc_s.flip(0)))


class EszslPath:
    """ESZSL's closed form for many (gamma, lambda) on the same data: ``x`` (m, d), ``y`` (m,) indices into the
    columns of ``attributes`` (a, z) -- pass only the training classes' descriptions."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, attributes: torch.Tensor) -> None:
        X, S = x.double().T, attributes.double()                                    # (d, m), (a, z)
        Y = signed_targets(y, S.shape[1])
        self.e, self.U = torch.linalg.eigh(X @ X.T)
        self.f, self.Q = torch.linalg.eigh(S @ S.T)
        self.B = self.U.T @ (X @ Y @ S.T) @ self.Q                                   # (d, a)

    def fit(self, gamma: float, lam: float) -> ESZSL:
        model = ESZSL(gamma=gamma, lam=lam)
        scale = (self.e.clamp(min=0) + gamma)[:, None] * (self.f.clamp(min=0) + lam)[None, :]
        model.V = self.U @ (self.B / scale) @ self.Q.T
        return model


@dataclass
class EszslChoice:
    """The selected regularisers, the stacking penalty, and the validation scores they were chosen on."""

    gamma: float
    lam: float
    delta: float
    val: dict[str, float]


def choose_eszsl(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                 attributes: torch.Tensor, seen: Sequence[int], val_classes: Sequence[int],
                 gammas: Sequence[float], lams: Sequence[float]) -> EszslChoice:
    """Pick gamma, lambda (and a calibrated-stacking delta) on held-out seen classes: fit ESZSL on the training
    examples of ``seen`` minus ``val_classes``, score the validation examples (seen classes only) with
    ``val_classes`` playing the unseen classes, keep the best (H, unseen accuracy); then, for that pair, the
    delta of highest validation H along the stacking curve. No example of a truly unseen class is read."""
    fit_classes = [c for c in seen if c not in val_classes]
    keep = torch.isin(y_train, torch.tensor(fit_classes))
    path = EszslPath(x_train[keep], positions(y_train[keep], fit_classes), attributes[:, fit_classes])
    best: tuple[tuple[float, float], float, float, dict[str, float]] | None = None
    for g in gammas:
        for lam in lams:
            scores = path.fit(g, lam).scores(x_val, attributes)
            m = gzsl_metrics(scores, y_val, fit_classes, val_classes)
            key = (m["gzsl_h"], m["unseen_acc"])
            if best is None or key > best[0]:
                best = (key, g, lam, m)
    assert best is not None
    _, g, lam, m = best
    scores = path.fit(g, lam).scores(x_val, attributes)
    deltas, acc_s, acc_u = seen_unseen_curve(scores, y_val, fit_classes, val_classes)
    h = 2 * acc_s * acc_u / (acc_s + acc_u).clamp(min=1e-12)
    i = int(h.argmax())
    # the curve changes just after each gap: a delta a little above it (midway to the next) realises point i
    if i == 0:
        delta = float(deltas[1]) - 1.0 if len(deltas) > 1 else 0.0
    elif i + 1 < len(deltas):
        delta = float(deltas[i] + deltas[i + 1]) / 2
    else:
        delta = float(deltas[i]) + 1.0
    return EszslChoice(g, lam, delta, {**m, "gzsl_h_cs": float(h[i])})
