"""Pareto dominance and the 2-D hypervolume, for multi-objective search. All objectives are minimised
(negate an accuracy).

``a`` dominates ``b`` when ``a_k <= b_k`` for every objective ``k`` and ``a_k < b_k`` for at least one. The
Pareto front of a set is its non-dominated members. The hypervolume of a front with respect to a reference
point ``r`` (worse than every point in every objective) is the area it dominates inside the box up to ``r``:

    HV(F) = area( union_{f in F} [f_1, r_1] x [f_2, r_2] )

computed by sorting the front by the first objective and summing rectangles.
"""

from __future__ import annotations

import numpy as np


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask, shape (n,), of the points of ``points`` (shape (n, k)) no other point dominates.
    Duplicates of a non-dominated point are all kept. Two objectives: an O(n log n) sweep (a point
    survives when its second objective is the least among points with its first objective and strictly
    below every point with a smaller first objective); more: pairwise comparison, O(n^2 k) memory."""
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if points.ndim != 2 or n == 0:
        return np.ones(n, dtype=bool)
    if points.shape[1] != 2:
        le = (points[:, None, :] <= points[None, :, :]).all(-1)  # le[i, j]: i <= j everywhere
        lt = (points[:, None, :] < points[None, :, :]).any(-1)
        return ~(le & lt).any(0)  # (le & lt)[i, j]: i dominates j
    order = np.lexsort((points[:, 1], points[:, 0]))
    keep = np.zeros(n, dtype=bool)
    best_before = np.inf  # least second objective among strictly smaller first objectives
    i = 0
    while i < n:
        j = i
        x = points[order[i], 0]
        while j < n and points[order[j], 0] == x:
            j += 1
        group = order[i:j]  # equal first objective, second ascending
        least = points[group[0], 1]
        if least < best_before:
            keep[group[points[group, 1] == least]] = True
            best_before = least
        i = j
    return keep


def hypervolume_2d(points: np.ndarray, reference: np.ndarray) -> float:
    """The area dominated by ``points`` (shape (n, 2), minimised) inside the box up to ``reference``;
    points not strictly better than ``reference`` in both objectives add nothing."""
    points = np.asarray(points, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    points = points[(points < reference).all(1)]
    if len(points) == 0:
        return 0.0
    front = points[non_dominated(points)]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]  # by objective 1, then 2
    area, best_y = 0.0, reference[1]
    for x, y in front:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return float(area)
