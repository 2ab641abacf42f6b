"""archlab cv (archlab/search/cv.py): folds are the stratified splits, each an ordinary run; mean ± std."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import numpy as np
import pytest

from archlab.cli import main
from archlab.data import load_dataset
from archlab.data.splits import stratified_kfold
from archlab.runner import read_summary
from archlab.search.cv import cross_validate

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = """
name = "tiny"
[model]
name = "mlp"
in_features = 64
hidden = [16]
[data]
name = "digits"
batch_size = 32
[optim]
name = "adam"
lr = 3e-3
[train]
steps = 30
log_every = 10
checkpoint_minutes = 0
"""


def test_cv_runs_each_fold_on_the_other_folds_and_reports_mean_and_std(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    result = cross_validate(recipe, folds=3, split_seed=5, out=tmp_path / "cv", log=lambda m: None)
    train = load_dataset("digits", {}, val_fraction=0.0).train
    expected = stratified_kfold(train.y.numpy(), 3, True, 5)
    for f, (tr, te) in enumerate(expected):
        fold = result["folds"][f]
        assert (fold["train"], fold["held_out"]) == (len(tr), len(te))
        summary = read_summary(tmp_path / "cv" / f"fold-{f}")
        assert summary["metrics"]["val_acc"] == fold["val_acc"] and fold["val_acc"] > 0.2
    assert sum(r["held_out"] for r in result["folds"]) == len(train)
    accs = [r["val_acc"] for r in result["folds"]]
    assert result["mean"]["val_acc"] == pytest.approx(statistics.fmean(accs))
    assert result["std"]["val_acc"] == pytest.approx(float(np.std(accs, ddof=1)))
    rows = list(csv.DictReader((tmp_path / "cv" / "cv.csv").open()))
    assert [int(r["fold"]) for r in rows] == [0, 1, 2]


def test_cv_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    assert main(["cv", str(recipe), "--folds", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--folds must be in [2, 100]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
