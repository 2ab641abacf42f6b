"""archlab cv (archlab/search/cv.py): folds are the stratified splits, each an ordinary run; mean ± std."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import toolbox_tiny_toml

from archlab.cli import main
from archlab.data import load_dataset
from archlab.data.splits import stratified_kfold
from archlab.runner import read_summary
from archlab.search.cv import cross_validate, fold_datasets

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = toolbox_tiny_toml(steps=30, log_every=10)


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


def test_timeseries_folds_train_on_the_past_and_hold_out_the_next_block() -> None:
    train = load_dataset("digits", {}, val_fraction=0.0).train
    datasets = fold_datasets("digits", {}, 4, "timeseries", 0)
    size = len(train) // 5
    for f, data in enumerate(datasets):
        start = len(train) - size * (4 - f)
        assert torch.equal(data.train.x, train.x[:start]) and torch.equal(data.val.x, train.x[start:start + size])


def test_group_folds_never_split_a_group_and_run_from_the_command_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    train = load_dataset("digits", {}, val_fraction=0.0).train
    groups = np.arange(len(train)) % 11
    datasets = fold_datasets("digits", {}, 3, "group", 2, groups)
    held = torch.cat([d.val.x for d in datasets])
    assert len(held) == len(train)
    all_rows = {tuple(r.tolist()): i for i, r in enumerate(train.x.flatten(1))}
    for d in datasets:  # a group's examples are all held out together
        val_groups = {int(groups[all_rows[tuple(r.tolist())]]) for r in d.val.x.flatten(1)}
        train_groups = {int(groups[all_rows[tuple(r.tolist())]]) for r in d.train.x.flatten(1)}
        assert val_groups and not val_groups & train_groups
    recipe, ids = tmp_path / "tiny.toml", tmp_path / "groups.txt"
    recipe.write_text(TINY)
    ids.write_text("\n".join(f"patient{g}" for g in groups) + "\n")
    assert main(["cv", str(recipe), "--folds", "2", "--scheme", "group", "--groups", str(ids),
                 "--out", str(tmp_path / "cv")]) == 0
    result = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert result["scheme"] == "group" and sum(r["held_out"] for r in result["folds"]) == len(train)
    capsys.readouterr()
    for argv, message in [(["--scheme", "group"], "--scheme group needs --groups"),
                          (["--groups", str(ids)], "--groups goes with --scheme group"),
                          (["--scheme", "timeseries", "--plain"], "--plain means --scheme kfold")]:
        assert main(["cv", str(recipe), *argv, "--out", str(tmp_path / "y")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    assert main(["cv", str(recipe), "--scheme", "group", "--groups", str(short), "--out", str(tmp_path / "z")]) == 2
    assert "one id per training example" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
