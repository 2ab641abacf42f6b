"""``archlab cv``: k-fold cross-validation of a recipe on an array dataset.

The recipe's training split (all of it: ``data.val_fraction`` is not used) is cut into K folds by
:mod:`archlab.data.splits`, by ``--scheme``: ``stratified`` (default: class proportions kept in every fold),
``kfold`` (plain), ``group`` (a group -- one id per training example, from ``--groups FILE`` (.npy or text, one
per line) -- never straddles two folds) or ``timeseries`` (forward chaining in example order: fold f trains on
the examples before its held-out block); the first three are shuffled by ``--split-seed``. Fold f trains an
ordinary run, ``OUT/fold-f``, on the other K - 1 folds and validates on fold f; the test split is the
dataset's own and the same for every fold::

    for f in 0..K-1:
        data_f = Dataset(train = train[folds != f], val = train[folds == f], test = test)
        summary_f = train(recipe, out = OUT/fold-f, data = data_f)

``OUT/cv.csv`` has one row per fold (held-out ``val_*`` and ``test_*`` metrics of the final weights)
and ``OUT/cv.json`` their mean and sample standard deviation. Validation runs during training on the
held-out fold, so a recipe with early stopping selects on it; without, the fold's numbers are those
of the last weights.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset, Split, load_dataset
from ..data.splits import group_kfold, kfold, stratified_kfold, time_series_split
from ..errors import ArchlabError
from ..io import atomic_write_bytes

MAX_FOLDS = 100
SCHEMES = ("stratified", "kfold", "group", "timeseries")


def read_groups(path: str | os.PathLike) -> np.ndarray:
    """One group id per training example from a .npy file or a text file (one id per line)."""
    path = Path(path)
    if not path.is_file():
        raise ArchlabError(f"--groups: {path} is not a file")
    try:
        groups = np.load(path, allow_pickle=False) if path.suffix == ".npy" else \
            np.array([line.strip() for line in path.read_text().splitlines() if line.strip()])
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ArchlabError(f"--groups: cannot read {path} ({e})") from None
    if groups.ndim != 1:
        raise ArchlabError(f"--groups: {path} must hold one id per example (a 1-d array), got shape {groups.shape}")
    return groups


def fold_datasets(name: str, options: dict[str, Any], folds: int, stratified: bool | str, seed: int,
                  groups: np.ndarray | None = None) -> list[Dataset]:
    """The K datasets of a cross-validation: train on the other folds (``timeseries``: the earlier examples),
    validate on the held-out one. ``stratified`` is a scheme name (True / False: stratified / kfold)."""
    scheme = ("stratified" if stratified else "kfold") if isinstance(stratified, bool) else stratified
    full = load_dataset(name, options, val_fraction=0.0)
    train = full.train
    if scheme == "group":
        if groups is None or len(groups) != len(train):
            raise ArchlabError(f"--scheme group needs --groups with one id per training example ({len(train)}), "
                               f"got {'none' if groups is None else len(groups)}")
        splits = group_kfold(groups, folds, True, seed)
    elif scheme == "timeseries":
        splits = time_series_split(len(train), folds)
    elif scheme == "stratified":
        splits = stratified_kfold(train.y.numpy(), folds, True, seed)
    else:
        splits = kfold(len(train), folds, True, seed)
    return [Dataset(name=name, train=Split(train.x[tr], train.y[tr]), val=Split(train.x[te], train.y[te]),
                    test=full.test, num_classes=full.num_classes, input_shape=full.input_shape)
            for tr, te in splits]


def cross_validate(recipe_path: str | os.PathLike, folds: int = 5, stratified: bool | str = True, split_seed: int = 0,
                   out: str | os.PathLike | None = None, fixed: list[str] | None = None,
                   log: Any = print, groups: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the folds; write cv.csv and cv.json; return ``{"folds": [...], "mean": {...}, "std": {...}}``.

    ``stratified``: True / False (stratified / plain k-fold) or a scheme of :data:`SCHEMES`; ``groups``: the
    file of group ids of the ``group`` scheme."""
    scheme = ("stratified" if stratified else "kfold") if isinstance(stratified, bool) else stratified
    if scheme not in SCHEMES:
        raise ArchlabError(f"--scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if (groups is not None) != (scheme == "group"):
        raise ArchlabError("--groups goes with --scheme group (and --scheme group needs --groups)")
    from .. import recipe as recipe_mod
    from ..runner import train

    if not 2 <= folds <= MAX_FOLDS:
        raise ArchlabError(f"--folds must be in [2, {MAX_FOLDS}], got {folds}")
    if not 0 <= split_seed < 2**32:
        raise ArchlabError(f"--split-seed must be in [0, 2**32), got {split_seed}")
    recipe = recipe_mod.load(recipe_path, fixed or [])
    cls = recipe.loop_class
    if recipe.data is None or cls.data_kind != "arrays":
        raise ArchlabError(f"archlab cv splits an array dataset; loop {recipe.train.loop!r} trains on "
                           f"{cls.data_kind if recipe.data is not None else 'no [data]'} (the graph loop has "
                           f"its own loop.folds)")
    datasets = fold_datasets(recipe.data.name, recipe.data.options, folds, scheme, split_seed,
                             read_groups(groups) if groups is not None else None)
    out_dir = Path(out) if out is not None else Path("runs") / "cv" / recipe.name
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ArchlabError(f"--out {out_dir} exists and is not empty")
    rows = []
    for f, data in enumerate(datasets):
        fold_recipe = recipe_mod.load(recipe_path, fixed or [])
        summary = train(fold_recipe, out=out_dir / f"fold-{f}", data=data, progress=False, log=lambda m: None)
        metrics = {k: v for k, v in summary["metrics"].items() if k.startswith(("val_", "test_"))}
        rows.append({"fold": f, "train": len(data.train), "held_out": len(data.val), **metrics})
        log(f"fold {f}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    keys = [k for k in rows[0] if k not in ("fold", "train", "held_out")]
    mean = {k: statistics.fmean(r[k] for r in rows) for k in keys}
    std = {k: statistics.stdev(r[k] for r in rows) for k in keys}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out_dir / "cv.csv", buf.getvalue().encode())
    result = {"recipe": recipe.name, "folds": rows, "mean": mean, "std": std, "stratified": scheme == "stratified",
              "scheme": scheme, "split_seed": split_seed, "seed": recipe.seed}
    atomic_write_bytes(out_dir / "cv.json", (json.dumps(result, indent=2) + "\n").encode())
    log(f"{recipe.name}, {folds}-fold cross-validation: " + ", ".join(
        f"{k} {mean[k]:.4f} ± {std[k]:.4f}" for k in keys) + f"  ({out_dir / 'cv.csv'})")
    return result


def add_parser(sub: Any) -> None:
    s = sub.add_parser("cv", help="k-fold cross-validation of a recipe (mean ± std over folds, per-fold table)")
    s.set_defaults(run=run)
    s.add_argument("recipe", help="recipe TOML file (array dataset)")
    s.add_argument("--folds", type=int, default=5, help="number of folds K (default 5)")
    s.add_argument("--scheme", choices=SCHEMES, default=None,
                   help="how the folds are cut: stratified by class (default), plain kfold, group (with --groups), "
                        "timeseries (forward chaining in example order)")
    s.add_argument("--plain", action="store_true", help="plain k-fold (same as --scheme kfold)")
    s.add_argument("--groups", help="--scheme group: a .npy or text file with one group id per training example")
    s.add_argument("--split-seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    s.add_argument("--out", help="folder for the fold runs and tables (default runs/cv/<recipe>)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key in every fold (repeatable)")


def run(args: argparse.Namespace) -> int:
    if args.plain and args.scheme not in (None, "kfold"):
        raise ArchlabError(f"--plain means --scheme kfold, not {args.scheme}")
    scheme = args.scheme or ("kfold" if args.plain else "stratified")
    cross_validate(args.recipe, args.folds, scheme, args.split_seed, args.out, args.overrides, groups=args.groups)
    return 0
