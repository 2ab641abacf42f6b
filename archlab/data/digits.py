"""Digits: 1,797 8x8 grey-scale handwritten digits, 10 classes, shipped with archlab.

The data is UCI's "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak, 1998) as
embedded in scikit-learn (``sklearn/datasets/data/digits.csv.gz``, BSD-3-Clause), copied to
``archlab/data/files/digits.csv.gz``: one example per line, 64 pixel counts in 0..16 (row-major),
then the label. scikit-learn is not needed at run time.

Tensors: ``x`` float32 (N, 1, 8, 8) = pixel / 16, in [0, 1]; ``y`` int64 (N,).
Test split: a fixed stratified 20% (359 examples) chosen with seed 0, the same for every run.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .registry import Split, register_dataset, stratified_indices

CSV_PATH = Path(__file__).parent / "files" / "digits.csv.gz"
TEST_FRACTION = 0.2
TEST_SEED = 0


@dataclass(frozen=True)
class DigitsConfig:
    """The ``digits`` dataset has no options."""


@register_dataset("digits", DigitsConfig, num_classes=10)
def load_digits(cfg: DigitsConfig) -> tuple[Split, Split]:
    """1,438 train and 359 test examples (x: (N, 1, 8, 8) in [0, 1], y: (N,))."""
    with gzip.open(CSV_PATH, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = torch.from_numpy(table[:, :-1].reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)
    y = torch.from_numpy(table[:, -1])
    train_idx, test_idx = stratified_indices(table[:, -1], TEST_FRACTION, TEST_SEED)
    train_i, test_i = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Split(x[train_i], y[train_i]), Split(x[test_i], y[test_i])
