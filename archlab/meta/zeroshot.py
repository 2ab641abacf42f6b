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


def signed_targets(y: torch.Tensor, z: int) -> torch.Tensor:
    """ESZSL's target matrix Y (m, z): +1 at each example's class index ``y`` (m,), -1 elsewhere (float64)."""
    Y = -torch.ones(len(y), z, dtype=torch.float64)
    Y[torch.arange(len(y)), y] = 1.0
    return Y


@dataclass
class ESZSL:
    """ESZSL with regularisers ``gamma`` (on V S) and ``lam`` (on X^T V)."""

    gamma: float = 1.0
    lam: float = 1.0

    def fit(self, x: torch.Tensor, y: torch.Tensor, attributes: torch.Tensor) -> ESZSL:
        """``x`` (m, d) features, ``y`` (m,) indices into the columns of ``attributes`` (a, z)."""
        X = x.double().T                                           # (d, m)
        S = attributes.double()                                    # (a, z)
        Y = signed_targets(y, S.shape[1])
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
        Y = signed_targets(y, S.shape[1])
        return ((X.T @ V @ S - Y).pow(2).sum() + self.gamma * (V @ S).pow(2).sum()
                + self.lam * (X.T @ V).pow(2).sum() + self.gamma * self.lam * V.pow(2).sum())

