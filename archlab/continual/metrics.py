"""The accuracy matrix of a task stream and what it summarises (Lopez-Paz & Ranzato 2017, "Gradient
Episodic Memory for Continual Learning", Sec. 4; forgetting: Chaudhry et al. 2018, Sec. 4).

R[i, j] is the test accuracy on task j after training tasks 0..i (T x T); b[j] that of the model
before any training. With T tasks:

    average accuracy  ACC = 1/T sum_j R[T-1, j]
    backward transfer BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])       (< 0: forgetting)
    forgetting        F   = 1/(T-1) sum_{j<T-1} max_{i<T-1} R[i, j] - R[T-1, j]
    forward transfer  FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b[j])
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..io import pyplot


def summarize(R: torch.Tensor, b: torch.Tensor | None = None) -> dict[str, float]:
    """ACC, BWT, forgetting (and FWT given ``b``) of a complete (T, T) accuracy matrix."""
    T = R.shape[0]
    out = {"acc": float(R[-1].mean())}
    if T > 1:
        last = R[-1, :-1]
        out["bwt"] = float((last - R.diagonal()[:-1]).mean())
        out["forgetting"] = float((R[:-1, :-1].max(0).values - last).mean())
        if b is not None:
            out["fwt"] = float((R.diagonal(1) - b[1:]).mean())  # R[j-1, j], j = 1..T-1
    return out


def plot_matrix(R: torch.Tensor, path: Path, title: str) -> None:
    """Heat map of the rows of R trained so far, the accuracies written in the cells."""
    plt = pyplot()
    rows, T = R.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * T, 1.0 + 0.6 * rows))
    image = ax.imshow(R.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(rows):
        for j in range(T):
            ax.text(j, i, f"{100 * float(R[i, j]):.1f}", ha="center", va="center", fontsize=7,
                    color="black" if float(R[i, j]) > 0.6 else "white")
    ax.set_xticks(range(T), [str(j + 1) for j in range(T)])
    ax.set_yticks(range(rows), [str(i + 1) for i in range(rows)])
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(R: torch.Tensor, path: Path, title: str) -> None:
    """Accuracy on each task (one line per task, from the time it is learned) against tasks trained."""
    plt = pyplot()
    rows, T = R.shape
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for j in range(T):
        xs = list(range(j + 1, rows + 1))
        if xs:
            ax.plot(xs, [100 * float(R[i - 1, j]) for i in xs], marker="o", label=f"task {j + 1}")
    ax.plot(range(1, rows + 1), [100 * float(R[i, : i + 1].mean()) for i in range(rows)], "k--", label="mean so far")
    ax.set_xticks(range(1, rows + 1))
    ax.set_xlabel("tasks trained")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
