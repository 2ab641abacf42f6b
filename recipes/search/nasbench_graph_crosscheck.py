"""NAS-Bench-Graph cross-check (issue 21): table architectures retrained on archlab's graph layers.

Which architectures (a rule fixed before any of them was trained): among the Cora table's architectures
whose ops avoid ``arma`` and ``graph`` (no archlab layer; 8,891 of 26,206), the one with the best
validation accuracy, and the ones at the 1.0 / 0.5 / 0.1 quantiles of table test accuracy (best, median,
weak; ``numpy.quantile(..., method="lower")``, the smallest table key on ties). :func:`choose` recomputes
them from the table and the driver refuses to run if they differ from :data:`ARCHS`.

Each (architecture, seed) is one ``archlab train recipes/search/nasbench_graph_cora.toml --set model.link=...
--set model.ops=...`` run (1 thread) in ``OUT/<name>-s<seed>``; an existing completed run is reused.
``OUT/crosscheck.json`` gets table vs archlab test accuracy per architecture and the mean difference.

    OMP_NUM_THREADS=1 ARCHLAB_DATA=/work/shared/datasets python recipes/search/nasbench_graph_crosscheck.py \
        --out runs/nasbench_cross --seeds 0 --extra best_val:1 --jobs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from archlab.search.nasbench import Arch, NASBenchGraph, key_genotype

RECIPE = Path(__file__).resolve().parent / "nasbench_graph_cora.toml"
#: name -> (link, ops), as :func:`choose` selects them
ARCHS = {
    "best_val": ((0, 1, 2, 3), ("fc", "gat", "fc", "gin")),
    "q1.0_best_test": ((0, 0, 1, 3), ("fc", "sage", "gat", "gin")),
    "q0.5_median": ((0, 0, 0, 1), ("gin", "gin", "sage", "sage")),
    "q0.1_weak": ((0, 0, 1, 1), ("cheb", "cheb", "fc", "skip")),
}


def choose(table: NASBenchGraph) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """The rule of the module docstring applied to ``table``."""
    archs = [Arch.from_genotype(key_genotype(int(k))) for k in table.keys]
    ok = np.array([i for i, a in enumerate(archs) if not {"arma", "graph"} & set(a.ops)])
    test = table.test_acc[ok]
    picked = {"best_val": ok[int(np.argmax(table.valid_acc[ok]))]}
    for q, name in ((1.0, "q1.0_best_test"), (0.5, "q0.5_median"), (0.1, "q0.1_weak")):
        tied = ok[test == np.quantile(test, q, method="lower")]
        picked[name] = tied[np.argmin(table.keys[tied])]
    return {n: (tuple(archs[i].link), tuple(archs[i].ops)) for n, i in picked.items()}


def run_one(out: Path, name: str, seed: int) -> dict:
    link, ops = ARCHS[name]
    run_dir = out / f"{name}-s{seed}"
    summary = run_dir / "summary.json"
    if not (summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"):
        cmd = [sys.executable, "-m", "archlab.cli", "train", str(RECIPE), "--seed", str(seed), "--out", str(run_dir),
               "--no-progress", "--set", f"model.link={list(link)}", "--set", f"model.ops={json.dumps(list(ops))}"]
        if run_dir.exists():
            cmd.append("--resume")
        subprocess.run(cmd, check=True)
    s = json.loads(summary.read_text())
    m = s["metrics"]  # the node loop: val_acc / test_acc at the best validation epoch (best_step)
    return {"seed": seed, "test_acc": m["test_acc"], "val_acc_at_best": m["val_acc"], "best_epoch": m["best_step"],
            "num_params": s["num_params"], "wall_s": s["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/nasbench_cross")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--extra", action="append", default=[], metavar="NAME:SEED",
                    help="one more seed for one architecture (repeatable), e.g. best_val:1")
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    table = NASBenchGraph.load("cora")
    if choose(table) != ARCHS:
        sys.exit(f"the selection rule gives {choose(table)}, not ARCHS")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(n, s) for s in args.seeds for n in args.archs]  # every architecture's first seed first
    for extra in args.extra:
        name, _, seed = extra.partition(":")
        if name not in args.archs or not seed.isdigit():
            sys.exit(f"--extra {extra!r}: expected NAME:SEED with NAME one of {', '.join(args.archs)}")
        jobs.append((name, int(seed)))
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_one(out, *j), jobs))
    rows = []
    for name in args.archs:
        link, ops = ARCHS[name]
        rec = table.query(Arch(link, ops))
        runs = [r for (n, _), r in zip(jobs, results, strict=True) if n == name]
        mean = statistics.fmean(r["test_acc"] for r in runs)
        diff = 100 * (mean - rec.test_acc)
        rows.append({"name": name, "link": list(link), "ops": list(ops), "table_test": rec.test_acc,
                     "table_valid": rec.valid_acc, "table_params_M": rec.params, "runs": runs,
                     "archlab_test_mean": mean, "diff_points": diff, "within_1.5": abs(diff) <= 1.5})
        accs = " ".join(f"{100 * r['test_acc']:.2f}" for r in runs)
        print(f"{name:16s} {link} {','.join(ops):22s} table {100 * rec.test_acc:.2f}  archlab {accs} "
              f"(mean {100 * mean:.2f})  diff {diff:+.2f}")
    diffs = [r["diff_points"] for r in rows]
    result = {"rows": rows, "mean_diff_points": statistics.fmean(diffs),
              "mean_abs_diff_points": statistics.fmean(abs(d) for d in diffs),
              "all_within_1.5": all(r["within_1.5"] for r in rows), "wall_s": time.perf_counter() - t0}
    print(f"mean difference {result['mean_diff_points']:+.2f} points, mean |difference| "
          f"{result['mean_abs_diff_points']:.2f}, all within 1.5: {result['all_within_1.5']}")
    (out / "crosscheck.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
