"""Cross-validation splits (archlab/data/splits.py) equal scikit-learn's splitters index for index."""

from __future__ import annotations

import numpy as np
import pytest

from archlab.data.splits import group_kfold, kfold, stratified_kfold, time_series_split
from archlab.errors import ArchlabError

ms = pytest.importorskip("sklearn.model_selection")


def same(ours: list, theirs: object) -> None:
    theirs = list(theirs)
    assert len(ours) == len(theirs)
    for (a_train, a_test), (b_train, b_test) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a_train, b_train)
        np.testing.assert_array_equal(a_test, b_test)


@pytest.mark.parametrize(("n", "k"), [(10, 2), (17, 5), (100, 7), (5, 5)])
@pytest.mark.parametrize("seed", [None, 0, 3])
def test_kfold_equals_sklearn(n: int, k: int, seed: int | None) -> None:
    shuffle = seed is not None
    same(kfold(n, k, shuffle, seed), ms.KFold(k, shuffle=shuffle, random_state=seed).split(np.zeros(n)))


@pytest.mark.parametrize("seed", [None, 0, 11])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_stratified_kfold_equals_sklearn(seed: int | None, k: int) -> None:
    rng = np.random.default_rng(1)
    for y in (rng.integers(0, 4, 60), np.array(["b"] * 7 + ["a"] * 13 + ["c"] * 5)[rng.permutation(25)]):
        shuffle = seed is not None
        ours = stratified_kfold(y, k, shuffle, seed)
        same(ours, ms.StratifiedKFold(k, shuffle=shuffle, random_state=seed).split(np.zeros(len(y)), y))
        for _, test in ours:  # every class's share is kept to within one example
            for c in np.unique(y):
                assert abs((y[test] == c).sum() - (y == c).sum() / k) < 1


@pytest.mark.parametrize("seed", [None, 4])
@pytest.mark.parametrize("k", [2, 4])
def test_group_kfold_equals_sklearn_and_never_splits_a_group(seed: int | None, k: int) -> None:
    groups = np.random.default_rng(2).integers(0, 9, 70)
    shuffle = seed is not None
    ours = group_kfold(groups, k, shuffle, seed)
    same(ours, ms.GroupKFold(k, shuffle=shuffle, random_state=seed).split(np.zeros(70), groups=groups))
    for train, test in ours:
        assert not set(groups[train]) & set(groups[test])


@pytest.mark.parametrize(("n", "k", "kwargs"), [(20, 3, {}), (23, 4, {"gap": 2}), (30, 5, {"max_train_size": 6}),
                                                 (30, 3, {"test_size": 4, "gap": 1})])
def test_time_series_split_equals_sklearn(n: int, k: int, kwargs: dict) -> None:
    ours = time_series_split(n, k, **kwargs)
    same(ours, ms.TimeSeriesSplit(k, **kwargs).split(np.zeros(n)))
    assert all(train.max() < test.min() for train, test in ours)


def test_bad_fold_counts_are_one_line_errors() -> None:
    with pytest.raises(ArchlabError, match="folds must be an integer >= 2"):
        kfold(10, 1)
    with pytest.raises(ArchlabError, match="5 folds need at least 5 groups, got 3"):
        group_kfold([0, 1, 2, 0], 5)
    with pytest.raises(ArchlabError, match="do not fit"):
        time_series_split(10, 3, test_size=4)
