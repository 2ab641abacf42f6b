"""Zero-shot classification from class descriptions: ESZSL (Romera-Paredes & Torr 2015, "An
embarrassingly simple approach to zero-shot learning", ICML, Eq. 1-4) with seven-segment attributes.

Each class z has a description s_z (a column of S, attributes x classes). A linear compatibility
x^T V s_z between features x (d,) and descriptions is learned on the seen classes only; unseen classes
are then classified by their descriptions alone:

    min_V ||X^T V S - Y||^2 + gamma ||V S||^2 + lambda ||X^T V||^2 + gamma lambda ||V||^2
    V = (X X^T + gamma I)^-1  X Y S^T  (S S^T + lambda I)^-1                    closed form (their Eq. 4)
    predict(x) = argmax_z  x^T V s_z       over the candidate classes' descriptions

X is (d, m) features of m training examples, Y (m, z) in {-1, +1} (+1 at the true seen class).

The descriptions here are the seven-segment display patterns of the digits (segments a-g, the usual
a = top, b = upper right, c = lower right, d = bottom, e = lower left, f = upper left, g = middle), so
"train on 0-6, classify 7-9" works without any text model. Evaluation follows the generalized
zero-shot protocol of Xian et al. 2018 ("Zero-Shot Learning -- A Comprehensive Evaluation"): unseen
accuracy among the unseen classes only, and the harmonic mean H of seen and unseen accuracy when every
class is a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Segments a-g lit for each digit 0-9 (rows: digits, columns: a b c d e f g).
SEVEN_SEGMENT = torch.tensor([
    [1, 1, 1, 1, 1, 1, 0],  # 0
    [0, 1, 1, 0, 0, 0, 0],  # 1
    [1, 1, 0, 1, 1, 0, 1],  # 2
    [1, 1, 1, 1, 0, 0, 1],  # 3
    [0, 1, 1, 0, 0, 1, 1],  # 4
    [1, 0, 1, 1, 0, 1, 1],  # 5
    [1, 0, 1, 1, 1, 1, 1],  # 6
    [1, 1, 1, 0, 0, 0, 0],  # 7
    [1, 1, 1, 1, 1, 1, 1],  # 8
    [1, 1, 1, 1, 0, 1, 1],  # 9
], dtype=torch.float64)


def seven_segment_attributes(centred: bool = True) -> torch.Tensor:
    """(7, 10) description matrix S: a column per digit, +-1 coded when ``centred`` (else 0/1)."""
    s = SEVEN_SEGMENT.T.clone()
    return 2 * s - 1 if centred else s


@dataclass
class ESZSL:
    """ESZSL with regularisers ``gamma`` (on V S) and ``lam`` (on X^T V)."""

    gamma: float = 1.0
    lam: float = 1.0

    def fit(self, x: torch.Tensor, y: torch.Tensor, attributes: torch.Tensor) -> ESZSL:
        """``x`` (m, d) features, ``y`` (m,) indices into the columns of ``attributes`` (a, z)."""
        X = x.double().T                                           # (d, m)
        S = attributes.double()                                    # (a, z)
        Y = -torch.ones(x.shape[0], S.shape[1], dtype=torch.float64)
        Y[torch.arange(len(y)), y] = 1.0
        d, a = X.shape[0], S.shape[0]
        left = torch.linalg.solve(X @ X.T + self.gamma * torch.eye(d, dtype=X.dtype), X @ Y @ S.T)  # (d, a)
        self.V = torch.linalg.solve(S @ S.T + self.lam * torch.eye(a, dtype=X.dtype), left.T).T  # (d, a)
        return self

    def scores(self, x: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """(n, z) compatibilities x^T V s_z for the classes described by ``attributes`` (a, z)."""
        return x.double() @ self.V @ attributes.double()

    def objective(self, x: torch.Tensor, y: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """The training objective at the fitted V (its gradient vanishes there: tested)."""
        X, S, V = x.double().T, attributes.double(), self.V
        Y = -torch.ones(x.shape[0], S.shape[1], dtype=torch.float64)
        Y[torch.arange(len(y)), y] = 1.0
        return ((X.T @ V @ S - Y).pow(2).sum() + self.gamma * (V @ S).pow(2).sum()
                + self.lam * (X.T @ V).pow(2).sum() + self.gamma * self.lam * V.pow(2).sum())


def zero_shot_scores(model: ESZSL, x: torch.Tensor, y: torch.Tensor, attributes: torch.Tensor,
                     seen: list[int], unseen: list[int]) -> dict[str, float]:
    """``unseen_acc`` (unseen test examples among the unseen classes), and the generalized scores with
    every class a candidate: ``gzsl_seen``, ``gzsl_unseen`` and their harmonic mean ``gzsl_h``; accuracies
    are averaged per class (Xian et al. 2018)."""

    def per_class(pred: torch.Tensor, truth: torch.Tensor, classes: list[int]) -> float:
        return float(torch.stack([(pred[truth == c] == c).double().mean() for c in classes]).mean())

    candidates = torch.tensor(unseen)
    mask_u = torch.isin(y, candidates)
    pred_u = candidates[model.scores(x[mask_u], attributes[:, unseen]).argmax(1)]
    pred_all = model.scores(x, attributes).argmax(1)
    s, u = per_class(pred_all, y, seen), per_class(pred_all, y, unseen)
    return {"unseen_acc": per_class(pred_u, y[mask_u], unseen), "gzsl_seen": s, "gzsl_unseen": u,
            "gzsl_h": 2 * s * u / (s + u) if s + u else 0.0}
