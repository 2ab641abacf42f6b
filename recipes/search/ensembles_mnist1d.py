"""Ensembles of the MNIST-1D CNN (recipes/classic/mnist1d_cnn.toml) against their best member, per seed.

For each seed s: a deep ensemble (5 members on the full training split, seeds s..s+4), bagging (5
members on bootstrap resamples), stacking (a logistic meta-learner on the validation probabilities of
the deep-ensemble members, scored on test), a snapshot ensemble (5 cosine cycles whose total steps
equal one member's) and AdaBoost SAMME (5 weak learners of STEPS / 5 steps each). Every member trains
STEPS steps (the recipe's 6,000 shortened for a shared 2-core machine). Writes OUT/seed-s.json per seed
and OUT/summary.json (means over seeds); the issue's target: ensemble acc >= best member acc, mean of
3 seeds, ECE reported.

    OMP_NUM_THREADS=1 ARCHLAB_DATA=... python recipes/search/ensembles_mnist1d.py --out runs/ens_mnist1d
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from archlab.toolbox.adaboost import adaboost
from archlab.toolbox.bagging import bagging
from archlab.toolbox.snapshot import snapshot_ensemble
from archlab.toolbox.stacking import stacking

RECIPE = Path(__file__).resolve().parents[1] / "classic" / "mnist1d_cnn.toml"


def row(result: dict, seconds: float) -> dict:
    members = result["members"]
    best = max(members, key=lambda m: m["acc"])
    return {"ensemble": result["ensemble"], "best_member": {k: best[k] for k in best if k != "run_dir"},
            "mean_member_acc": statistics.fmean(m["acc"] for m in members), "members": len(members),
            "wall_s": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/ens_mnist1d")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--members", type=int, default=5)
    args = ap.parse_args()
    out = Path(args.out)
    fixed = [f"train.steps={args.steps}", "train.eval_every=500", "train.checkpoint_minutes=0"]
    quiet = lambda m: None  # noqa: E731
    per_seed = {}
    for s in args.seeds:
        base = 100 * s  # member seeds of different ensemble seeds do not overlap
        res, t = {}, time.perf_counter()
        deep = bagging(RECIPE, args.members, out / f"seed-{s}" / "deep", base, fixed, bootstrap=False, log=quiet)
        res["deep ensemble"] = row(deep, time.perf_counter() - t)
        t = time.perf_counter()
        st = stacking([m["run_dir"] for m in deep["members"]])
        res["stacking (deep members)"] = row(st, time.perf_counter() - t)
        res["stacking (deep members)"]["average_of_same_members"] = st["average"]
        t = time.perf_counter()
        res["bagging"] = row(bagging(RECIPE, args.members, out / f"seed-{s}" / "bag", base, fixed, log=quiet),
                             time.perf_counter() - t)
        t = time.perf_counter()
        cyc = args.steps // args.members
        res["snapshot"] = row(snapshot_ensemble(RECIPE, args.members, cyc, out / f"seed-{s}" / "snap", base,
                                                fixed[1:], log=quiet), time.perf_counter() - t)
        t = time.perf_counter()
        res["adaboost"] = row(adaboost(RECIPE, args.members, out / f"seed-{s}" / "boost", base,
                                       [f"train.steps={cyc}"] + fixed[1:], log=quiet), time.perf_counter() - t)
        per_seed[s] = res
        (out / f"seed-{s}.json").write_text(json.dumps(res, indent=2) + "\n")
        print(f"seed {s}: " + "; ".join(f"{k} {v['ensemble']['acc']:.4f} (best member {v['best_member']['acc']:.4f},"
                                        f" ECE {v['ensemble']['ece']:.4f})" for k, v in res.items()), flush=True)
    summary = {}
    for method in per_seed[args.seeds[0]]:
        rows = [per_seed[s][method] for s in args.seeds]
        summary[method] = {
            "ensemble_acc": statistics.fmean(r["ensemble"]["acc"] for r in rows),
            "ensemble_acc_std": statistics.stdev(r["ensemble"]["acc"] for r in rows) if len(rows) > 1 else 0.0,
            "ensemble_nll": statistics.fmean(r["ensemble"]["nll"] for r in rows),
            "ensemble_ece": statistics.fmean(r["ensemble"]["ece"] for r in rows),
            "best_member_acc": statistics.fmean(r["best_member"]["acc"] for r in rows),
            "best_member_ece": (statistics.fmean(r["best_member"]["ece"] for r in rows)
                                if all("ece" in r["best_member"] for r in rows) else None),  # AdaBoost: votes only
            "mean_member_acc": statistics.fmean(r["mean_member_acc"] for r in rows),
            "ensemble_ge_best": all(r["ensemble"]["acc"] >= r["best_member"]["acc"] for r in rows),
            "wall_s": sum(r["wall_s"] for r in rows)}
    (out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "steps": args.steps, "methods": summary},
                                                 indent=2) + "\n")
    for k, v in summary.items():
        print(f"{k}: ensemble {v['ensemble_acc']:.4f} ± {v['ensemble_acc_std']:.4f} (ECE {v['ensemble_ece']:.4f}) "
              f"vs best member {v['best_member_acc']:.4f} (ECE {v['best_member_ece']}), mean member "
              f"{v['mean_member_acc']:.4f}; >= best on every seed: {v['ensemble_ge_best']}")


if __name__ == "__main__":
    main()
