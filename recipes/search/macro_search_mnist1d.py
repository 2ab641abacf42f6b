"""Random search vs regularized evolution over the macro space (archlab/search/macro.py) on MNIST-1D.

Every query trains the chain a strategy asks for with recipes/search/macro_mnist1d.toml (300 Adam steps,
the chain set through ``model.layers``) and tells the strategy its best validation accuracy; the test
accuracy is read only for the report. Per strategy and seed: the incumbent (best validation so far) after
each query. Evolution: P = 10, S = 3 (a smaller population than on NAS-Bench-Graph for the smaller budget).
The training seed of every query is the search seed, so two strategies asking for the same chain get the
same score. Writes OUT/macro_search.json.

    OMP_NUM_THREADS=1 python recipes/search/macro_search_mnist1d.py --out runs/macro_search --queries 40 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from archlab import recipe as recipes
from archlab import runner
from archlab.search.evolution import EvolutionConfig, RegularizedEvolution
from archlab.search.macro import MacroSpace
from archlab.search.random_search import RandomSearch

RECIPE = Path(__file__).resolve().parent / "macro_mnist1d.toml"
SPACE = MacroSpace(num_layers=4, widths=(8, 16, 32, 64), kernels=(3, 5, 7), stem_channels=16)


def query(layers: list[str], seed: int, cache: dict) -> dict:
    key = (tuple(layers), seed)
    if key not in cache:
        rec = recipes.load(RECIPE, [f"model.layers={json.dumps(layers)}"])
        with tempfile.TemporaryDirectory() as tmp:
            s = runner.train(rec, out=Path(tmp) / "run", seed=seed, progress=False, log=lambda *a, **k: None)
        cache[key] = {"val": s["metrics"]["best_val_acc"], "test": s["metrics"]["test_acc"], "params": s["num_params"]}
    return cache[key]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/macro_search")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"queries": args.queries, "space": str(SPACE), "runs": {}}
    cache: dict = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for name, strategy in (("random", RandomSearch(SPACE, seed)),
                               ("evolution", RegularizedEvolution(SPACE, seed, EvolutionConfig(10, 3)))):
            best, curve = None, []
            for _ in range(args.queries):
                g = strategy.ask()
                layers = SPACE.decode(g)
                r = query(layers, seed, cache)
                strategy.tell(g, r["val"])
                if best is None or r["val"] > best["val"]:
                    best = dict(r, layers=layers)
                curve.append(best["val"])
            result["runs"][f"{name}/{seed}"] = {"best": best, "incumbent_val": curve}
            print(f"seed {seed} {name:9s} best val {best['val']:.4f} test {best['test']:.4f} "
                  f"params {best['params']:,} {best['layers']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        result["wall_s"] = time.perf_counter() - t0
        (out / "macro_search.json").write_text(json.dumps(result, indent=1))
    for name in ("random", "evolution"):
        runs = [result["runs"][f"{name}/{s}"]["best"] for s in args.seeds]
        result[name] = {k: statistics.fmean(r[k] for r in runs) for k in ("val", "test", "params")}
        print(f"{name:9s} mean over seeds: best val {result[name]['val']:.4f}, its test {result[name]['test']:.4f}")
    result["wall_s"] = time.perf_counter() - t0
    (out / "macro_search.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
