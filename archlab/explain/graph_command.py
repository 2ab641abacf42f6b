"""``archlab explain`` on a node-classification run: GNNExplainer subgraphs and their fidelity.

``--node I`` (repeatable): one panel per test node -- the computation graph's ``--top-k`` edges by
GNNExplainer's mask (width and darkness by mask value), nodes coloured by the model's predicted class,
the explained node drawn large with its true / predicted label. ``--faithfulness N``: fidelity+ and
fidelity- (:func:`archlab.explain.gnn_explainer.fidelity`) of the top-k edges for the first N test
nodes, against the same number of random edges from each node's computation graph: ``OUT.json`` and
``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ArchlabError
from .gnn_explainer import differentiable, fidelity, gnn_explainer


def run_graph(model: torch.nn.Module, data: Any, args: argparse.Namespace) -> int:
    if args.method and args.method not in (["gnn_explainer"], ["all"]):
        raise ArchlabError("node-classification runs are explained with --method gnn_explainer (the default)")
    g = data.graph
    x = g.x.to_dense() if g.x.layout != torch.strided else g.x
    model = differentiable(model).eval()
    test_nodes = g.test_mask.nonzero().flatten()
    if args.faithfulness:
        prefix = Path(args.out).with_suffix("") if args.out else Path(args.run_dir) / "plots" / "gnn_fidelity"
        return _fidelity_report(model, x, g, test_nodes[:args.faithfulness], args, prefix)
    picks = args.node or [0, 1, 2, 3]
    if min(picks) < 0 or max(picks) >= len(test_nodes):
        raise ArchlabError(f"--node must be in [0, {len(test_nodes) - 1}] (a position among the test nodes)")
    explanations = [gnn_explainer(model, x, g.edge_index, int(test_nodes[i]), seed=args.seed) for i in picks]
    with torch.no_grad():
        pred = model(x, g.edge_index).argmax(-1)
    out = Path(args.out) if args.out else Path(args.run_dir) / "plots" / "gnn_explainer.png"
    _draw(explanations, g.edge_index, pred, g.y, args.top_k, out)
    print(f"wrote {out}")
    return 0


def _draw(explanations: list, edge_index: torch.Tensor, pred: torch.Tensor, y: torch.Tensor, k: int,
          out: Path) -> None:
    from ..io import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(explanations), figsize=(3.6 * len(explanations), 3.8), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, ex in zip(axes[0], explanations, strict=True):
        top = ex.edge_mask.argsort(descending=True)[:k]
        top = top[ex.edge_mask[top] > 0]
        edges = edge_index[:, top]
        nodes = [ex.node] + [int(v) for v in torch.unique(edges.flatten()).tolist() if v != ex.node]
        pos = {ex.node: (0.0, 0.0)}
        for i, v in enumerate(nodes[1:]):     # the other nodes on a circle around the explained one
            a = 2 * math.pi * i / max(1, len(nodes) - 1)
            pos[v] = (math.cos(a), math.sin(a))
        for (src, dst), w in zip(edges.T.tolist(), ex.edge_mask[top].tolist(), strict=True):
            (x0, y0), (x1, y1) = pos[src], pos[dst]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "->", "lw": 0.5 + 3 * w, "color": str(0.8 - 0.8 * w)})
        for v in nodes:
            ax.scatter(*pos[v], s=500 if v == ex.node else 160, color=cmap(int(pred[v]) % 10), zorder=3,
                       edgecolors="black")
            ax.annotate(str(v), pos[v], ha="center", va="center", fontsize=6, zorder=4)
        ax.set_title(f"node {ex.node}: true {int(y[ex.node])} / pred {int(pred[ex.node])}\n"
                     f"top {len(top)} edges by GNNExplainer mask", fontsize=8)
        ax.set_xlim(-1.4, 1.4)
        ax.set_ylim(-1.4, 1.4)
        ax.axis("off")
    fig.suptitle("GNNExplainer (Ying et al. 2019); colour = predicted class", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fidelity_report(model: torch.nn.Module, x: torch.Tensor, g: Any, nodes: torch.Tensor,
                     args: argparse.Namespace, prefix: Path) -> int:
    gen = torch.Generator().manual_seed(args.seed)
    rows: dict[str, list[tuple[float, float]]] = {"gnn_explainer": [], "random": []}
    t0 = time.perf_counter()
    for v in nodes.tolist():
        ex = gnn_explainer(model, x, g.edge_index, v, seed=args.seed)
        rows["gnn_explainer"].append(fidelity(model, x, g.edge_index, v, ex.target, ex.edge_mask, args.top_k))
        random_mask = torch.rand(len(ex.edge_mask), generator=gen) * (ex.edge_mask > 0)
        rows["random"].append(fidelity(model, x, g.edge_index, v, ex.target, random_mask, args.top_k))
    seconds = round(time.perf_counter() - t0, 1)
    n = len(nodes)
    summary = {}
    for name, vals in rows.items():
        t = torch.tensor(vals)
        summary[name] = {"fidelity_plus": float(t[:, 0].mean()), "fidelity_plus_se": float(t[:, 0].std() / n**0.5),
                         "fidelity_minus": float(t[:, 1].mean()),
                         "fidelity_minus_se": float(t[:, 1].std() / n**0.5)}
        s = summary[name]
        print(f"{name:14s} fidelity+ {s['fidelity_plus']:.3f} ± {s['fidelity_plus_se']:.3f}   "
              f"fidelity- {s['fidelity_minus']:.3f} ± {s['fidelity_minus_se']:.3f}")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    meta = {"nodes": n, "top_k": args.top_k, "seed": args.seed, "run_dir": str(args.run_dir), "seconds": seconds}
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "methods": summary}, indent=1) + "\n")
    lines = [f"| edges ranked by | fidelity+ of top {args.top_k} (higher: necessary) | "
             f"fidelity- of top {args.top_k} (lower: sufficient) |", "|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['fidelity_plus']:.3f} ± {s['fidelity_plus_se']:.3f} | "
                     f"{s['fidelity_minus']:.3f} ± {s['fidelity_minus_se']:.3f} |")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {prefix.with_suffix('.json')}, .md ({seconds} s)")
    return 0
