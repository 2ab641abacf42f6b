"""Bagging (bootstrap aggregating; Breiman 1996): M members, each trained on its own bootstrap
resample of the training split, combined by averaging their class probabilities::

    I_m ~ Uniform{0..N-1}^N   (with replacement; seeded by (seed, m))
    f_m = train(recipe, data = (x[I_m], y[I_m]), val, test)        seed of the run: recipe.seed + m
    p(y | x) = 1/M sum_m softmax(f_m(x))_y

A bootstrap sample holds on average 1 - (1 - 1/N)^N ~ 63.2% of the distinct examples. Each member is
an ordinary run directory ``OUT/member-m``; the scores (accuracy, NLL, ECE of every member and of the
ensemble, on the common val or test split) come from :func:`archlab.toolbox.ensemble.ensemble`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset, Split
from ..errors import ArchlabError
from .ensemble import ensemble

MAX_MEMBERS = 1000


def bootstrap_indices(n: int, seed: int, member: int) -> torch.Tensor:
    """N indices drawn uniformly with replacement from 0..n-1, determined by (seed, member)."""
    gen = torch.Generator().manual_seed(seed * MAX_MEMBERS + member)
    return torch.randint(n, (n,), generator=gen)


def bootstrap_dataset(data: Dataset, seed: int, member: int) -> Dataset:
    """``data`` with its training split replaced by bootstrap resample ``member`` (val and test unchanged)."""
    idx = bootstrap_indices(len(data.train), seed, member)
    return Dataset(name=data.name, train=Split(data.train.x[idx], data.train.y[idx]), val=data.val,
                   test=data.test, num_classes=data.num_classes, input_shape=data.input_shape)


def bagging(recipe_path: str | os.PathLike, members: int = 5, out: str | os.PathLike | None = None,
            seed: int = 0, fixed: list[str] | None = None, split: str = "test",
            bootstrap: bool = True, log: Any = print) -> dict[str, Any]:
    """Train ``members`` runs of a recipe on bootstrap resamples; return the ensemble's scores.

    ``seed`` seeds the resamples and (as ``seed + m``) each member's run. ``bootstrap=False`` trains every
    member on the full training split (a deep ensemble: members differ only in their seed)."""
    from .. import recipe as recipe_mod
    from ..runner import train

    if not 2 <= members <= MAX_MEMBERS:
        raise ArchlabError(f"members must be in [2, {MAX_MEMBERS}], got {members}")
    recipe = recipe_mod.load(recipe_path, fixed or [])
    if recipe.data is None or recipe.loop_class.data_kind != "arrays":
        raise ArchlabError("bagging resamples an array dataset; this recipe trains on none")
    data = recipe.loop_class.load_data(recipe)
    out_dir = Path(out) if out is not None else Path("runs") / "bagging" / recipe.name
    dirs = []
    for m in range(members):
        member_data = bootstrap_dataset(data, seed, m) if bootstrap else data
        run_dir = out_dir / f"member-{m}"
        train(recipe_mod.load(recipe_path, fixed or []), out=run_dir, seed=seed + m, data=member_data,
              progress=False, log=lambda msg: None)
        dirs.append(run_dir)
        log(f"{'bagging' if bootstrap else 'deep ensemble'}: member {m} trained ({run_dir})")
    result = ensemble(dirs, split)
    result["method"] = "bagging" if bootstrap else "deep ensemble"
    result["seed"] = seed
    return result
