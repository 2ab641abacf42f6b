"""Cross-validation splits: k-fold, stratified k-fold, group k-fold and time-series splits.

Each function returns a list of ``(train_indices, test_indices)`` pairs of sorted int64 NumPy arrays,
one per fold, and draws its randomness from ``np.random.RandomState(seed)`` in the same order as
scikit-learn's splitters, so that the folds are index-for-index equal to ``KFold``,
``StratifiedKFold``, ``GroupKFold`` and ``TimeSeriesSplit`` with the same seed (tests/test_splits.py
checks it; scikit-learn is a test-only peer)::

    k-fold        shuffle (optional) 0..n-1; fold f is the f-th contiguous block; the first n % k
                  blocks have n // k + 1 elements, the others n // k
    stratified    deal the label-sorted examples round robin over the folds to fix how many of each
                  class every fold gets; then, per class (in order of first appearance), the class's
                  examples, in index order, receive their fold numbers (shuffled when asked)
    group         no group in two folds: groups by size, largest first, each into the fold that holds
                  the fewest examples so far (shuffle: permute the groups, cut into k nearly equal runs)
    time series   test fold f is the f-th of k blocks of size n // (k + 1) at the end; training is
                  everything before it, minus ``gap`` examples, at most ``max_train_size`` of them
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ArchlabError

Folds = list[tuple[np.ndarray, np.ndarray]]


def _check(n: int, k: int, what: str = "examples") -> None:
    if not isinstance(k, int) or k < 2:
        raise ArchlabError(f"folds must be an integer >= 2, got {k!r}")
    if k > n:
        raise ArchlabError(f"{k} folds need at least {k} {what}, got {n}")


def _from_test_folds(test_of: np.ndarray, k: int) -> Folds:
    """Example i is in the test set of fold ``test_of[i]`` and in the training set of every other."""
    everything = np.arange(len(test_of))
    return [(everything[test_of != f], everything[test_of == f]) for f in range(k)]


def kfold(n: int, k: int, shuffle: bool = False, seed: int | None = None) -> Folds:
    """k contiguous blocks of (shuffled) indices; block sizes differ by at most one."""
    _check(n, k)
    order = np.arange(n)
    if shuffle:
        np.random.RandomState(seed).shuffle(order)
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    test_of = np.empty(n, dtype=np.int64)
    start = 0
    for f, size in enumerate(sizes):
        test_of[order[start:start + size]] = f
        start += size
    return _from_test_folds(test_of, k)


def stratified_kfold(y: Sequence | np.ndarray, k: int, shuffle: bool = False, seed: int | None = None) -> Folds:
    """Folds that keep every class's share: each fold gets floor or ceil of count / k of each class."""
    y = np.asarray(y)
    _check(len(y), k)
    # Classes numbered by first appearance (0: the label of y[0], ...).
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    rank_of_sorted = np.argsort(np.argsort(first))
    cls = rank_of_sorted[inverse.reshape(-1)]
    n_classes = len(first)
    counts = np.bincount(cls, minlength=n_classes)
    if np.all(counts < k):
        raise ArchlabError(f"{k} folds: every class has fewer than {k} examples")
    # Round robin over the label-sorted examples: how many of class c fold f receives.
    dealt = np.sort(cls)
    per_fold = np.stack([np.bincount(dealt[f::k], minlength=n_classes) for f in range(k)])
    rng = np.random.RandomState(seed) if shuffle else None
    test_of = np.empty(len(y), dtype=np.int64)
    for c in range(n_classes):
        folds_of_class = np.repeat(np.arange(k), per_fold[:, c])
        if rng is not None:
            rng.shuffle(folds_of_class)
        test_of[cls == c] = folds_of_class
    return _from_test_folds(test_of, k)


def group_kfold(groups: Sequence | np.ndarray, k: int, shuffle: bool = False, seed: int | None = None) -> Folds:
    """Folds that never split a group (e.g. all recordings of one patient land in one fold)."""
    groups = np.asarray(groups)
    names, group_of = np.unique(groups, return_inverse=True)
    group_of = group_of.reshape(-1)
    _check(len(names), k, "groups")
    if shuffle:
        runs = np.array_split(np.random.RandomState(seed).permutation(names), k)
        fold_of_name = {name: f for f, run in enumerate(runs) for name in run.tolist()}
        fold_of_group = np.array([fold_of_name[name] for name in names.tolist()])
    else:
        sizes = np.bincount(group_of)
        largest_first = np.argsort(sizes, kind="stable")[::-1]
        load = np.zeros(k)
        fold_of_group = np.zeros(len(names), dtype=np.int64)
        for g in largest_first:
            lightest = int(np.argmin(load))  # the first of equally light folds
            load[lightest] += sizes[g]
            fold_of_group[g] = lightest
    return _from_test_folds(fold_of_group[group_of], k)


def time_series_split(n: int, k: int, test_size: int | None = None, gap: int = 0,
                      max_train_size: int | None = None) -> Folds:
    """Forward-chaining folds for ordered data: train on the past, test on the block that follows."""
    _check(n, k)
    size = test_size if test_size is not None else n // (k + 1)
    if size < 1 or gap < 0 or n - gap - size * k <= 0:
        raise ArchlabError(f"time_series_split: {k} test blocks of {size} after a gap of {gap} do not fit "
                           f"{n} examples")
    folds = []
    for start in range(n - size * k, n, size):
        end = start - gap
        begin = 0 if max_train_size is None else max(0, end - max_train_size)
        folds.append((np.arange(begin, end), np.arange(start, start + size)))
    return folds
