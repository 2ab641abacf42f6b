"""Plots written into run directories and reproduction reports (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .engine.metrics import read_metrics
from .io import pyplot as _pyplot


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """``plots/loss.png`` (train loss, val loss) and ``plots/metrics.png`` (val accuracy) of a run."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        return []
    plt = _pyplot()
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []

    def series(split: str, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in records if r["split"] == split and isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    def figure(name: str, ylabel: str, lines: list[tuple[str, str, str]], log_y: bool, marker: str) -> None:
        drawn = [(series(split, key), label) for split, key, label in lines]
        if not any(xs for (xs, _), _ in drawn):
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        for (xs, ys), label in drawn:
            if xs:
                ax.plot(xs, ys, marker=marker, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(run_dir.name)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)

    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
    positive = bool(losses) and min(losses) > 0  # RL losses can be negative: no log axis then
    figure("loss.png", "loss", [("train", "loss", "train loss"), ("val", "val_loss", "val loss")],
           log_y=positive, marker="")
    acc_keys = sorted({k for r in records if r["split"] == "val" for k in r if k.endswith("_acc")})
    figure("metrics.png", "accuracy", [("val", k, k) for k in acc_keys], log_y=False, marker=".")
    return written


def plot_reproduction(rows: list[dict[str, Any]], path: str | os.PathLike,
                      title: str = "archlab reproduce") -> Path:
    """Target vs achieved (mean ± std over seeds) per recipe: green when met, red when missed, grey
    (and no target drawn) when the run used another dataset than the one the target belongs to."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 2.2))
    achieved = {True: ("tab:green", "target met"), False: ("tab:red", "target missed"),
                None: ("tab:gray", "target n/a (other dataset)")}
    labelled: set[str] = set()  # one legend entry per kind of mark

    def label(text: str) -> str | None:
        if text in labelled:
            return None
        labelled.add(text)
        return text

    for i, r in enumerate(rows):
        if r["target_applies"]:
            if r["compare"] == "approx":
                ax.barh(i, 2 * r["tolerance"], left=r["target"] - r["tolerance"], height=0.5, color="lightgray",
                        label=label("target ± tolerance"))
            ax.plot([r["target"]], [i], marker="|", color="black", markersize=18, label=label("published target"))
        color, text = achieved[r["passed"]]
        ax.errorbar([r["mean"]], [i], xerr=[r["std"]], fmt="o", color=color, capsize=4, label=label(text))
    ax.set_yticks(range(len(rows)), [r["recipe"] if r["target_applies"] else f"{r['recipe']}\n(on {r['dataset']})"
                                     for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(rows[0]["metric"] if len({r["metric"] for r in rows}) == 1 else "metric")
    ax.set_title(f"{title}\nachieved (mean ± std over seeds) vs published target", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_tradeoff(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "archlab reproduce") -> Path:
    """A comparison of recipes on one metric: achieved (mean ± std over seeds) against wall time per
    seed, one point per recipe labelled with its parameter count, and each recipe's own target (± its
    tolerance) as a bar of the same colour at the same wall time: recipes need not share a target."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        if r["wall_s_per_seed"] is None or not r["values"]:
            continue
        point = ax.errorbar([r["wall_s_per_seed"]], [r["mean"]], yerr=[r["std"]], fmt="o", capsize=4, markersize=8,
                            label=f"{r['recipe']} ({r['num_params']:,} params)" if r.get("num_params") else r["recipe"])
        if r["target_applies"]:
            tolerance = [r["tolerance"]] if r["compare"] == "approx" else None
            ax.errorbar([r["wall_s_per_seed"]], [r["target"]], yerr=tolerance, fmt="_", markersize=22, mew=2,
                        elinewidth=6, alpha=0.5, color=point.lines[0].get_color())
    ax.plot([], [], "_", color="black", markersize=14, mew=2, alpha=0.5, label="target of each recipe (± tolerance)")
    ax.set_xlabel("wall time per seed (s)")
    ax.set_ylabel(rows[0]["metric"])
    ax.set_title(f"{title}\n{rows[0]['metric']} vs training time", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _smooth(steps: list[int], returns: list[float], window: int) -> tuple[list[int], list[float]]:
    """Mean of the last ``window`` episode returns at each episode's end step."""
    import numpy as np

    r = np.asarray(returns, np.float64)
    c = np.concatenate([[0.0], np.cumsum(r)])
    idx = np.arange(1, len(r) + 1)
    lo = np.maximum(0, idx - window)
    return list(steps), list((c[idx] - c[lo]) / (idx - lo))


def plot_returns(runs: list[list[tuple[int, float, int]]], path: str | os.PathLike, title: str = "",
                 evals: list[tuple[int, float, float]] | None = None, window: int = 20) -> Path | None:
    """Episode return vs environment steps.

    One run: every episode's return (faint) and the mean of the last ``window`` episodes; with
    ``evals``, the periodic deterministic evaluations (mean ± std over episodes). Several runs (seeds):
    each run's ``window``-episode mean, interpolated on a common step grid, drawn as mean ± std over
    the runs."""
    import numpy as np

    runs = [r for r in runs if r]
    if not runs:
        return None
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if len(runs) == 1:
        steps, rets = [s for s, _, _ in runs[0]], [r for _, r, _ in runs[0]]
        ax.plot(steps, rets, ".", color="tab:blue", alpha=0.25, markersize=3, label="episode return")
        xs, ys = _smooth(steps, rets, window)
        ax.plot(xs, ys, color="tab:blue", label=f"mean of last {window} episodes")
    else:
        end = min(r[-1][0] for r in runs)
        grid = np.linspace(max(r[0][0] for r in runs), end, 200)
        curves = []
        for r in runs:
            xs, ys = _smooth([s for s, _, _ in r], [v for _, v, _ in r], window)
            curves.append(np.interp(grid, xs, ys))
        c = np.stack(curves)
        mean, std = c.mean(0), c.std(0)
        ax.plot(grid, mean, color="tab:blue", label=f"mean over {len(runs)} seeds ({window}-episode average)")
        ax.fill_between(grid, mean - std, mean + std, color="tab:blue", alpha=0.25, label="± std over seeds")
    if evals:
        ax.errorbar([e[0] for e in evals], [e[1] for e in evals], yerr=[e[2] for e in evals], fmt="o",
                    color="tab:orange", capsize=3, markersize=4, label="deterministic evaluation")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
