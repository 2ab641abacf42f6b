"""Pictures of a tuning study: optimization history, parameter importances, Pareto front (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..io import pyplot as _pyplot


def plot_study(study: Any, space: Any, out: Path) -> list[Path]:
    """``history.png`` (each trial's value and the best so far, per objective), ``importance.png``
    (Optuna's parameter importances, first objective) and, with two objectives, ``pareto.png``."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return []
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    metrics, directions = space.metrics, space.directions

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for i, (metric, direction) in enumerate(zip(metrics, directions, strict=True)):
        ax = axes[0][i]
        xs = [t.number for t in complete]
        ys = [t.values[i] for t in complete]
        better = max if direction == "maximize" else min
        best, running = [], None
        for y in ys:
            running = y if running is None else better(running, y)
            best.append(running)
        ax.scatter(xs, ys, s=16, label="trial")
        ax.step(xs, best, where="post", color="C3", label=f"best so far ({direction})")
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"optimization history: {study.study_name} ({len(complete)} complete trials)")
    fig.tight_layout()
    written.append(_save(fig, out / "history.png", plt))

    importances = _importances(study, directions[0])
    if importances:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(importances)))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel(f"importance for {metrics[0]} (Optuna, normalized)")
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        written.append(_save(fig, out / "importance.png", plt))

    if len(metrics) == 2:
        front = {t.number for t in study.best_trials}
        fig, ax = plt.subplots(figsize=(6, 4))
        rest = [t for t in complete if t.number not in front]
        ax.scatter([t.values[0] for t in rest], [t.values[1] for t in rest], s=16, c="0.6", label="trial")
        best = sorted((t for t in complete if t.number in front), key=lambda t: t.values[0])
        ax.plot([t.values[0] for t in best], [t.values[1] for t in best], "o-", color="C3", label="Pareto front")
        ax.set_xlabel(f"{metrics[0]} ({directions[0]})")
        ax.set_ylabel(f"{metrics[1]} ({directions[1]})")
        if metrics[1] == "num_params":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, out / "pareto.png", plt))
    return written


def _importances(study: Any, direction: str) -> dict[str, float]:
    """Importances for the first objective: fANOVA (Hutter et al. 2014; needs scikit-learn) or else
    PED-ANOVA (Watanabe et al. 2023); {} with fewer than two complete trials or nothing varied."""
    import importlib.util

    import optuna

    if importlib.util.find_spec("sklearn") is not None:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    else:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    sign = -1.0 if direction == "maximize" else 1.0  # PED-ANOVA ranks what makes the target low

    def target(t: Any) -> float:
        return sign * t.values[0]

    try:
        values = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    except (RuntimeError, ValueError):
        return {}
    return {k: v for k, v in values.items() if math.isfinite(v)}


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
