"""``archlab explain`` on a graph-classification run (``train.loop = "graph"``: GIN, MPNN on TU datasets).

``--index I`` (repeatable; default 0-3): one panel per graph of the split -- the whole graph laid out by a
spring layout, every node coloured by its attribution (``--method``: integrated_gradients (default),
saliency, input_x_gradient or smoothgrad over the node features, summed per node; red for the explained
class, blue against) and the explanatory subgraph: the ``--top-k`` edges whose removal lowers the
log-odds of the explained class most (edge occlusion, :mod:`archlab.explain.graph_occlusion`), drawn
thick and dark red with the drop written on them; the other edges thin and grey. The title holds the
true and predicted class. Node labels are the index of the largest node feature (the atom type for
one-hot molecule features).

``--faithfulness N``: fidelity+ and fidelity- of the top-k edges of the first N graphs of the split, with
edges ranked by occlusion, by the attribution of their two end nodes (``a_u + a_v``), and at random:
``OUT.json`` and ``OUT.md``.

The split is the run's own: the held-out fold (``loop.folds``, fold ``seed % folds`` unless
``loop.fold``) or the stratified ``loop.test_fraction`` for ``--split test``; the other graphs for
``train`` / ``val``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArchlabError
from . import attribute
from .graph_occlusion import GraphClassifier, edge_occlusion, graph_fidelity, spring_layout, undirected_pairs

NODE_METHODS = ("integrated_gradients", "saliency", "input_x_gradient", "smoothgrad")


def split_indices(run_dir: str, n_labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of the graphs of ``split`` exactly as the graph loop dealt them for this run."""
    from .. import recipe as recipe_mod
    from ..data.registry import stratified_indices
    from ..runner import RECIPE
    from ..train.graph_level import stratified_folds

    recipe = recipe_mod.load(Path(run_dir) / RECIPE)
    summary = Path(run_dir) / "summary.json"
    seed = json.loads(summary.read_text()).get("seed", recipe.seed) if summary.is_file() else recipe.seed
    lc, dc = recipe.loop, recipe.data
    if lc.folds:
        fold = lc.fold if lc.fold >= 0 else seed % lc.folds
        assignment = stratified_folds(n_labels, lc.folds, dc.split_seed)
        test, rest = np.flatnonzero(assignment == fold), np.flatnonzero(assignment != fold)
    else:
        rest, test = stratified_indices(n_labels, lc.test_fraction, dc.split_seed)
    return test if split == "test" else rest


def node_attributions(model: torch.nn.Module, g: Any, target: int, method: str, args: argparse.Namespace,
                      edge_attr: torch.Tensor | None = None) -> torch.Tensor:
    """Per-node attributions ``[N]`` of one graph ``g`` for class ``target``."""
    wrapped = GraphClassifier(model, g.edge_index, edge_attr).eval()
    gen = torch.Generator().manual_seed(args.seed)
    opts = {"integrated_gradients": {"baselines": 0.0, "n_steps": args.steps},
            "smoothgrad": {"stdevs": 0.15, "n_samples": 16, "generator": gen}}.get(method, {})
    return attribute(wrapped, g.x[None].float(), target, method, **opts)[0].sum(-1)


def run_graph_level(model: torch.nn.Module, data: Any, args: argparse.Namespace) -> int:
    names = args.method or ["integrated_gradients"]
    if len(names) != 1 or names[0] not in NODE_METHODS:
        raise ArchlabError(f"graph-classification runs take one --method of {', '.join(NODE_METHODS)} "
                           "(node attributions; edges are ranked by occlusion)")
    method = names[0]
    labels = np.array([int(g.y.reshape(-1)[0]) for g in data.graphs])
    idx = split_indices(args.run_dir, labels, args.split)
    if len(idx) == 0:
        raise ArchlabError(f"the {args.split} split of {args.run_dir} is empty")
    graphs = [data.graphs[int(i)] for i in idx]
    wrapped = lambda g: GraphClassifier(model, g.edge_index, _attr(model, g))  # noqa: E731
    if args.faithfulness:
        prefix = Path(args.out).with_suffix("") if args.out else Path(args.run_dir) / "plots" / "graph_fidelity"
        return _fidelity_report(model, graphs[:args.faithfulness], method, args, prefix)
    picks = args.index or list(range(min(4, len(graphs))))
    if min(picks) < 0 or max(picks) >= len(graphs):
        raise ArchlabError(f"--index must be in [0, {len(graphs) - 1}] (a graph of the {args.split} split)")
    panels = []
    for i in picks:
        g = graphs[i]
        with torch.no_grad():
            probs = wrapped(g)(g.x[None].float()).softmax(-1)[0]
        pred = int(probs.argmax())
        target = int(g.y.reshape(-1)[0]) if args.target == "true" else pred
        pairs, drop = edge_occlusion(model, g.x.float(), g.edge_index, target, _attr(model, g))
        nodes = node_attributions(model, g, target, method, args, _attr(model, g))
        panels.append({"graph": int(idx[i]), "true": int(g.y.reshape(-1)[0]), "pred": pred,
                       "p": float(probs[pred]), "target": target, "pairs": pairs, "drop": drop, "nodes": nodes,
                       "edge_index": g.edge_index, "x": g.x})
        top = drop.argsort(descending=True)[:args.top_k]
        print(f"graph {int(idx[i])}: true {panels[-1]['true']} pred {pred} (p={float(probs[pred]):.2f}); top edges "
              + ", ".join(f"{tuple(pairs[t].tolist())}:{float(drop[t]):+.3f}" for t in top))
    out = Path(args.out) if args.out else Path(args.run_dir) / "plots" / "graph_explain.png"
    draw(panels, method, args.top_k, out, seed=args.seed)
    print(f"wrote {out}")
    return 0


def _attr(model: torch.nn.Module, g: Any) -> torch.Tensor | None:
    return getattr(g, "edge_attr", None)


def draw(panels: list[dict[str, Any]], method: str, k: int, out: Path, seed: int = 0) -> Path:
    """One panel per graph: nodes coloured by attribution, the top-k occlusion edges dark red and thick."""
    from ..io import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9), squeeze=False)
    cmap = plt.get_cmap("bwr")
    for ax, p in zip(axes[0], panels, strict=True):
        n = len(p["x"])
        pos = spring_layout(p["edge_index"], n, seed=seed).numpy()
        pairs, drop = p["pairs"], p["drop"]
        top = set(drop.argsort(descending=True)[:k].tolist())
        peak = float(drop.clamp(min=0).max()) or 1.0
        for j, (u, v) in enumerate(pairs.tolist()):
            if j in top and float(drop[j]) > 0:
                w = float(drop[j]) / peak
                ax.plot(*pos[[u, v]].T, color="darkred", lw=1.5 + 4 * w, zorder=2, solid_capstyle="round")
                ax.annotate(f"{float(drop[j]):.2g}", pos[[u, v]].mean(0), fontsize=5, color="darkred", zorder=5,
                            ha="center", va="center", bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                                                            "alpha": 0.7})
            else:
                ax.plot(*pos[[u, v]].T, color="0.7", lw=0.8, zorder=1)
        a = p["nodes"]
        lim = float(a.abs().max()) or 1.0
        ax.scatter(pos[:, 0], pos[:, 1], s=130, c=[cmap(0.5 + 0.5 * float(v) / lim) for v in a], edgecolors="black",
                   linewidths=0.5, zorder=3)
        kinds = p["x"].float().argmax(-1) if p["x"].shape[1] > 1 else torch.arange(n)
        for v in range(n):
            ax.annotate(str(int(kinds[v])), pos[v], ha="center", va="center", fontsize=6, zorder=4)
        ax.set_title(f"graph {p['graph']}: true {p['true']} / pred {p['pred']} (p={p['p']:.2f})\n"
                     f"explained class {p['target']}", fontsize=8)
        ax.set_xlim(-1.15, 1.15)
        ax.set_ylim(-1.15, 1.15)
        ax.set_aspect("equal")
        ax.axis("off")
    fig.suptitle(f"dark red: top {k} edges by occlusion (drop in the log-odds of the class when removed)\n"
                 f"nodes: {method.replace('_', ' ')} (red for, blue against); node label: argmax feature",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _fidelity_report(model: torch.nn.Module, graphs: list, method: str, args: argparse.Namespace,
                     prefix: Path) -> int:
    gen = torch.Generator().manual_seed(args.seed)
    rankings = ("occlusion", f"{method} (a_u + a_v)", "random")
    rows: dict[str, list[tuple[float, float]]] = {r: [] for r in rankings}
    t0 = time.perf_counter()
    used = 0
    for g in graphs:
        if g.edge_index.shape[1] == 0:
            continue
        used += 1
        x, attr = g.x.float(), _attr(model, g)
        with torch.no_grad():
            target = int(GraphClassifier(model, g.edge_index, attr)(x[None]).argmax(-1))
        pairs, drop = edge_occlusion(model, x, g.edge_index, target, attr)
        nodes = node_attributions(model, g, target, method, args, attr)
        scores = {"occlusion": drop, rankings[1]: nodes[pairs[:, 0]] + nodes[pairs[:, 1]],
                  "random": torch.rand(len(pairs), generator=gen)}
        for name, s in scores.items():
            rows[name].append(graph_fidelity(model, x, g.edge_index, target, s, args.top_k, attr))
    if not used:
        raise ArchlabError("no graph with edges in the chosen split")
    seconds = round(time.perf_counter() - t0, 1)
    summary = {}
    for name, vals in rows.items():
        t = torch.tensor(vals)
        se = (t.std(0) / used**0.5) if used > 1 else torch.zeros(2)
        summary[name] = {"fidelity_plus": float(t[:, 0].mean()), "fidelity_plus_se": float(se[0]),
                         "fidelity_minus": float(t[:, 1].mean()), "fidelity_minus_se": float(se[1])}
        s = summary[name]
        print(f"{name:34s} fidelity+ {s['fidelity_plus']:.3f} ± {s['fidelity_plus_se']:.3f}   "
              f"fidelity- {s['fidelity_minus']:.3f} ± {s['fidelity_minus_se']:.3f}")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    meta = {"graphs": used, "split": args.split, "top_k": args.top_k, "seed": args.seed, "run_dir": str(args.run_dir),
            "seconds": seconds}
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "methods": summary}, indent=1) + "\n")
    lines = [f"| edges ranked by | fidelity+ of top {args.top_k} (higher: necessary) | "
             f"fidelity- of top {args.top_k} (lower: sufficient) |", "|---|---|---|"]
    lines += [f"| {name} | {s['fidelity_plus']:.3f} ± {s['fidelity_plus_se']:.3f} | "
              f"{s['fidelity_minus']:.3f} ± {s['fidelity_minus_se']:.3f} |" for name, s in summary.items()]
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {prefix.with_suffix('.json')}, .md ({seconds} s, {used} graphs)")
    return 0


__all__ = ["draw", "node_attributions", "run_graph_level", "split_indices", "undirected_pairs"]
