"""How well progressive search's surrogate ranks each level on NAS-Bench-Graph (a diagnostic for
docs/search.md): for every seed, each ranking the search made -- the candidates of one level and their
predicted scores -- against the table's validation accuracy of the candidates: Spearman correlation and
the share of the true top K among the K picked.

    python recipes/search/progressive_surrogate_nasbench.py --dataset cora --seeds 20 --queries 100 \
        --strategy progressive          # or progressive_mlp
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from archlab.search.nasbench import DATASETS, STRATEGIES, NASBenchGraph, run_search


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="cora", choices=DATASETS)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--strategy", default="progressive", choices=("progressive", "progressive_mlp"))
    args = ap.parse_args()
    bench = NASBenchGraph.load(args.dataset)
    rows: dict[int, list[tuple[int, float, float]]] = {}
    for seed in range(args.seeds):
        search = STRATEGIES[args.strategy](bench, seed)
        run_search(bench, search, args.queries)
        k = search.config.beam
        for cells, predicted in search.rankings:
            truth = np.array([bench.query(search.space.genotype(c)).valid_acc for c in cells])
            picked = set(np.argsort(-predicted, kind="stable")[:k].tolist())
            best = set(np.argsort(-truth, kind="stable")[:k].tolist())
            rho = float(stats.spearmanr(predicted, truth).statistic)
            rows.setdefault(len(cells[0]), []).append((len(cells), rho, len(picked & best) / min(k, len(cells))))
    print(f"{args.strategy} on {args.dataset}, {args.seeds} seeds, {args.queries} queries (level 4 may be ranked "
          "twice: the continuation)")
    for blocks, r in sorted(rows.items()):
        n, rho, top = (np.array(col) for col in zip(*r, strict=True))
        print(f"  {blocks} blocks: {len(r)} rankings of {n.mean():.0f} candidates on average; Spearman "
              f"{rho.mean():.3f} ± {rho.std(ddof=1):.3f}; true top {k} picked {100 * top.mean():.1f}%")


if __name__ == "__main__":
    main()
