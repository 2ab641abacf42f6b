"""Snapshot ensembles (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free"): one training
run whose learning rate follows M cosine cycles, a snapshot of the weights saved at the end of each
cycle (the lr minimum), the snapshots' class probabilities averaged::

    lr(t) = lr0 / 2 * (cos(pi * mod(t, T/M) / (T/M)) + 1)          (Huang et al. 2017, eq. 2)
    p(y | x) = 1/M sum_m softmax(f_{snapshot m}(x))_y

Built on the engine, not inside it: cycle m is an ordinary run ``OUT/cycle-m`` of ``T/M`` steps with
the recipe's optimizer on ``optim.schedule = "cosine"`` (from lr0 down to 0, no warm-up), started by
``train.init_from`` from the weights of cycle m - 1 (cycle 0 from the recipe's own initialization).
Each cycle's final weights are its snapshot. Difference from the paper: the optimizer state (SGD
momentum buffer, Adam moments) starts afresh at each restart; the weights, which carry the
ensemble's diversity, continue. The ensemble's scores come from :func:`archlab.toolbox.ensemble.ensemble`
(optionally over only the last ``use_last`` snapshots, as the paper's Table 4 varies).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ArchlabError
from .ensemble import ensemble

MAX_CYCLES = 1000


def snapshot_ensemble(recipe_path: str | os.PathLike, cycles: int = 5, steps_per_cycle: int = 1000,
                      out: str | os.PathLike | None = None, seed: int = 0, fixed: list[str] | None = None,
                      split: str = "test", use_last: int = 0, log: Any = print) -> dict[str, Any]:
    """Train ``cycles`` cosine cycles of ``steps_per_cycle`` steps, a snapshot each; return the scores of
    the ensemble of the last ``use_last`` snapshots (0: all of them)."""
    from .. import recipe as recipe_mod
    from ..runner import train

    if not 2 <= cycles <= MAX_CYCLES:
        raise ArchlabError(f"cycles must be in [2, {MAX_CYCLES}], got {cycles}")
    if steps_per_cycle < 1:
        raise ArchlabError(f"steps_per_cycle must be >= 1, got {steps_per_cycle}")
    if not 0 <= use_last <= cycles or use_last == 1:
        raise ArchlabError(f"use_last must be 0 (all) or in [2, {cycles}], got {use_last}")
    out_dir = Path(out) if out is not None else Path("runs") / "snapshot" / Path(recipe_path).stem
    cycle_keys = [f"train.steps={steps_per_cycle}", "train.epochs=0", 'optim.schedule="cosine"',
                  "optim.warmup_steps=0", "optim.min_lr_ratio=0.0"]
    dirs: list[Path] = []
    for m in range(cycles):
        keys = list(fixed or []) + cycle_keys
        if dirs:
            keys.append(f'train.init_from="{dirs[-1].resolve()}"')
        recipe = recipe_mod.load(recipe_path, keys)
        if recipe.data is None or recipe.loop_class.data_kind != "arrays":
            raise ArchlabError("snapshot ensembles combine classifiers of array datasets; this recipe trains on none")
        run_dir = out_dir / f"cycle-{m}"
        # every cycle draws its own batch order (seed + m); the weights carry over through init_from
        train(recipe, out=run_dir, seed=seed + m, progress=False, log=lambda msg: None)
        dirs.append(run_dir)
        log(f"snapshot: cycle {m} done ({run_dir})")
    result = ensemble(dirs[-use_last:] if use_last else dirs, split)
    result.update(method="snapshot ensemble", cycles=cycles, steps_per_cycle=steps_per_cycle, seed=seed)
    return result
