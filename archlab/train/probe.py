"""The evaluation protocol of self-supervised representations: frozen features -> linear probe and k-NN.

Every method is measured the same way, so their numbers compare (and compare with a random-init
encoder and a supervised model):

- **features**: the frozen encoder's output ``h = f(x)`` (or the projection ``g(f(x))``), in eval mode;
- **linear probe**: multinomial logistic regression on standardised features (mean and std of the
  training split), trained full-batch with L-BFGS to convergence for each L2 strength in
  :data:`WEIGHT_DECAYS`; the strength with the best validation accuracy is kept and scored on test;
- **k-NN** (Wu et al. 2018, Sec. 3.4): cosine similarity to every training feature; the ``k`` nearest
  vote for their class with weight ``exp(s / T)``; the class with the most weight wins;
- **embedding plot**: the first two principal components of the standardised test features, coloured by class.

``archlab probe RUN_DIR [--method linear|knn|both] [--data NAME] [--features encoder|projection]
[--random-init]`` applies it to the saved model of any run (an SSL method's encoder, or a supervised
classifier's logits).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArchlabError

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""L2 strengths (on the mean loss) the linear probe chooses from on the validation split."""

FEATURES = ("encoder", "projection")


@torch.no_grad()
def extract(model: nn.Module, x: Tensor, where: str = "encoder", batch_size: int = 1000,
            device: torch.device | str = "cpu") -> Tensor:
    """Frozen features of ``x`` in eval mode, ``[N, D]`` float32 on the CPU. ``where``: the encoder's
    output (``features``), the projector's (``projection``); a model without them gives its output."""
    model.eval()
    fn = getattr(model, "features" if where == "encoder" else "projection", model)
    out = [fn(x[i:i + batch_size].to(device)).float().flatten(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def knn_predict(bank: Tensor, bank_y: Tensor, query: Tensor, k: int, temperature: float,
                num_classes: int, chunk: int = 1024) -> Tensor:
    """Class of each query row by temperature-weighted voting of its ``k`` nearest (cosine) bank rows.

    Shapes:
        bank ``[M, D]``, bank_y ``[M]``, query ``[N, D]`` -> predictions ``[N]``
    """
    k = min(k, len(bank))
    bank = F.normalize(bank, dim=1)
    preds = []
    for i in range(0, len(query), chunk):
        sim = F.normalize(query[i:i + chunk], dim=1) @ bank.T                  # [n, M]
        top, idx = sim.topk(k, dim=1)                                         # [n, k]
        votes = torch.zeros(len(top), num_classes, dtype=top.dtype)
        votes.scatter_add_(1, bank_y[idx], (top / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(bank: Tensor, bank_y: Tensor, query: Tensor, query_y: Tensor, k: int = 200,
                 temperature: float = 0.1, num_classes: int | None = None) -> float:
    if len(query) == 0:
        return float("nan")
    classes = num_classes or int(max(bank_y.max(), query_y.max())) + 1
    return (knn_predict(bank, bank_y, query, k, temperature, classes) == query_y).float().mean().item()


def _fit_logistic(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int,
                  start: nn.Linear | None = None) -> nn.Linear:
    """Minimise ``CE(W x + b, y) + wd ||W||^2`` full-batch with L-BFGS (strong Wolfe line search), from
    zero weights or from ``start`` (a warm start: the solution for a nearby ``wd``)."""
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():  # convex problem: a fixed start makes the solution reproducible
        head.weight.copy_(start.weight if start is not None else torch.zeros_like(head.weight))
        head.bias.copy_(start.bias if start is not None else torch.zeros_like(head.bias))
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head


def linear_probe(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                 num_classes: int, weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
                 max_iter: int = 100) -> dict[str, float]:
    """``{"val_acc", "test_acc", "weight_decay"}`` of the probe whose L2 strength scores best on ``val``
    (on ``train`` when ``val`` is empty; ties: the stronger regularisation). Strengths are visited
    from strong to weak, each fit warm-started from the previous one."""
    mean, std = train[0].mean(0), train[0].std(0).clamp_min(1e-6)
    norm = [((f - mean) / std, y) for f, y in (train, val, test)]
    choose = norm[1] if len(norm[1][1]) else norm[0]
    best: tuple[float, float, nn.Linear] | None = None
    head = None
    for wd in sorted(weight_decays, reverse=True):
        head = _fit_logistic(*norm[0], num_classes, wd, max_iter, head)
        with torch.no_grad():
            acc = (head(choose[0]).argmax(1) == choose[1]).float().mean().item()
        if best is None or acc > best[0]:
            best = (acc, wd, head)
    assert best is not None
    with torch.no_grad():
        test_acc = (best[2](norm[2][0]).argmax(1) == norm[2][1]).float().mean().item()
    return {"val_acc": best[0] if len(norm[1][1]) else float("nan"), "test_acc": test_acc, "weight_decay": best[1]}


def pca_2d(x: Tensor) -> Tensor:
    """The first two principal components of ``x`` ``[N, D]`` -> ``[N, 2]``."""
    centred = x - x.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def plot_embedding(features: Tensor, labels: Tensor, path: str | os.PathLike, title: str) -> Path:
    """Scatter of the 2-D PCA of the standardised ``features`` (as the linear probe sees them) coloured
    by ``labels`` into ``path`` (PNG)."""
    from ..io import pyplot

    plt = pyplot()
    xy = pca_2d((features - features.mean(0)) / features.std(0).clamp_min(1e-6)).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels.numpy(), cmap="tab10", s=4, alpha=0.7)
    ax.legend(*sc.legend_elements(), title="class", fontsize=7, loc="best", markerscale=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- archlab probe


def add_parser(sub: Any) -> None:
    s = sub.add_parser("probe", help="linear probe / k-NN accuracy of the frozen features of a run's model")
    s.set_defaults(run=run)
    s.add_argument("run_dir")
    s.add_argument("--method", choices=["linear", "knn", "both"], default="both", help="default: both")
    s.add_argument("--data", help="dataset to probe on (default: the run's own [data])")
    s.add_argument("--features", choices=FEATURES, default="encoder",
                   help="encoder output h (default) or projector output z")
    s.add_argument("-k", type=int, default=None, help="neighbours of the k-NN probe (default: the run's, else 200)")
    s.add_argument("--temperature", type=float, default=None,
                   help="k-NN vote temperature (default: the run's, else 0.1)")
    s.add_argument("--random-init", action="store_true",
                   help="probe a freshly initialised model of the same architecture (the baseline)")
    s.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    s.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])


def _run_tables(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "recipe.toml"
    if not path.is_file():
        raise ArchlabError(f"{run_dir} has no recipe.toml: not a run directory")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ArchlabError(f"{path} is not valid TOML: {exc}") from None


def probe_run(run_dir: str | os.PathLike, method: str = "both", data: str | None = None,
              features: str = "encoder", k: int | None = None, temperature: float | None = None,
              random_init: bool = False, seed: int = 0, device: str = "cpu",
              plot: bool = True) -> dict[str, Any]:
    """Probe the model saved in ``run_dir``; writes ``probe[-random].json`` and an embedding plot there."""
    from ..data import load_dataset
    from ..engine.device import resolve_device
    from ..io import atomic_write_bytes
    from ..registry import CONFIG_FILE, get, load, read_saved

    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise ArchlabError(f"{run} has no final model ({CONFIG_FILE}): not a finished run directory")
    if k is not None and k < 1:
        raise ArchlabError(f"-k must be >= 1, got {k}")
    if temperature is not None and not 0 < temperature <= 100:
        raise ArchlabError(f"--temperature must be in (0, 100], got {temperature}")
    tables = _run_tables(run)
    loop_table = tables.get("loop", {}) if tables.get("train", {}).get("loop") == "ssl" else {}
    k = k or int(loop_table.get("knn_k", 200))
    temperature = temperature or float(loop_table.get("knn_temperature", 0.1))
    dc = tables.get("data", {})
    if data is not None and data != dc.get("name"):
        dataset = load_dataset(data)
    elif "name" in dc:
        dataset = load_dataset(dc["name"], dc.get("options", {}), dc.get("val_fraction", 0.1), dc.get("split_seed", 0))
    else:
        raise ArchlabError(f"{run}/recipe.toml has no [data] table: pass --data NAME")
    dev = resolve_device(device)
    if random_init:
        meta = read_saved(run)
        torch.manual_seed(seed)
        model = get(meta["name"]).cls.create(**meta["config"]).to(dev)
    else:
        model = load(run, map_location=str(dev))
    if features == "projection" and not hasattr(model, "projection"):
        raise ArchlabError(f"--features projection: a {type(model).registry_name!r} model has no projector")
    start = time.perf_counter()
    try:
        feats = {s: extract(model, getattr(dataset, s).x, features, device=dev) for s in ("train", "val", "test")}
    except (RuntimeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArchlabError(f"the model of {run} does not fit dataset {dataset.name!r}: {msg[:200]}") from None
    ys = {s: getattr(dataset, s).y for s in ("train", "val", "test")}
    result: dict[str, Any] = {"run": str(run), "data": dataset.name, "features": features,
                              "random_init": random_init, "feature_dim": feats["train"].shape[1]}
    if method in ("knn", "both"):
        for s in ("val", "test"):
            result[f"{s}_knn_acc"] = knn_accuracy(feats["train"], ys["train"], feats[s], ys[s], k, temperature,
                                                  dataset.num_classes)
        result.update(knn_k=k, knn_temperature=temperature)
    if method in ("linear", "both"):
        lin = linear_probe((feats["train"], ys["train"]), (feats["val"], ys["val"]), (feats["test"], ys["test"]),
                           dataset.num_classes)
        result.update(val_linear_acc=lin["val_acc"], test_linear_acc=lin["test_acc"],
                      linear_weight_decay=lin["weight_decay"])
    result["probe_s"] = round(time.perf_counter() - start, 2)
    stem = "probe" + ("-random" if random_init else "") + ("" if features == "encoder" else f"-{features}")
    if plot:
        title = f"{run.name}: {features} features{' (random init)' if random_init else ''}, PCA of test set"
        result["plot"] = str(plot_embedding(feats["test"], ys["test"], run / "plots" / f"embedding-{stem}.png", title))
    atomic_write_bytes(run / f"{stem}.json", (json.dumps(result, indent=2) + "\n").encode())
    return result


def run(args: argparse.Namespace) -> int:
    result = probe_run(args.run_dir, args.method, args.data, args.features, args.k, args.temperature,
                       args.random_init, args.seed, args.device)
    print(json.dumps({key: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                      for key, v in result.items()}, indent=2))
    return 0


def plot_methods(rows: list[dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Probe accuracy against training wall time, one point per run: ``rows`` of ``{"label", "wall_s",
    "linear", "knn"}`` (accuracies in [0, 1]; a row with ``wall_s = 0`` -- a baseline -- is drawn as a
    horizontal line)."""
    from ..io import pyplot

    plt = pyplot()
    runs = [r for r in rows if r["wall_s"] > 0]
    fig, ax = plt.subplots(figsize=(9.5, max(4.2, 1.2 + 0.2 * len(runs))))
    palette = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for i, row in enumerate(runs):  # one colour (and legend entry) per run: o = linear probe, x = k-NN
        c = palette(i % palette.N)
        ax.scatter([row["wall_s"]], [100 * row["linear"]], color=c, marker="o", label=row["label"])
        ax.scatter([row["wall_s"]], [100 * row["knn"]], color=c, marker="x")
    ax.scatter([], [], color="black", marker="o", label="(o: linear probe)")
    ax.scatter([], [], color="black", marker="x", label="(x: k-NN)")
    for row in (r for r in rows if r["wall_s"] <= 0):
        ax.axhline(100 * row["linear"], color="grey", linestyle="--", linewidth=1)
        ax.text(ax.get_xlim()[0], 100 * row["linear"], f" {row['label']}", va="bottom", fontsize=7, color="grey")
    ax.set_xlabel("pretraining wall time per run (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no point hidden under it
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
