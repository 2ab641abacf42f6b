"""The ensemble commands: ``archlab ensemble RUN_DIR ... [--stack]`` combines finished runs (the average of
their probabilities, or stacking), ``archlab ensemble-train METHOD RECIPE`` trains the members of an
ensemble from one recipe and scores it.

    archlab ensemble-train deep     RECIPE [--members M]                      # seeds differ only
    archlab ensemble-train bagging  RECIPE [--members M]                      # bootstrap resamples
    archlab ensemble-train stacking RECIPE [--members M] [--C C]              # deep members + a logistic
                                                                              #   meta-learner fitted on val
    archlab ensemble-train snapshot RECIPE [--members M] [--steps-per-cycle T] [--use-last K]
    archlab ensemble-train adaboost RECIPE [--members M] [--learning-rate LR] # SAMME, weighted loss

with ``[--seed S] [--split val|test] [--out DIR] [--set KEY=VALUE ...]`` for every method (``--set`` fixes
recipe keys of every member, as in ``archlab train``). Each member is an ordinary run directory under
``OUT`` (default ``runs/ensembles/<method>/<recipe>``); ``OUT/ensemble.json`` holds the scores (accuracy,
NLL and ECE of every member and of the ensemble, as ``archlab ensemble`` prints them). The methods are
the toolbox's (``bagging.py``, ``stacking.py``, ``snapshot.py``, ``adaboost.py``); this module only
checks the arguments -- before any member trains -- and calls them. ``archlab ensemble RUN_DIR ...
[--stack]`` combines runs that already exist.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ArchlabError
from ..io import atomic_write_bytes

METHODS = ("deep", "bagging", "stacking", "snapshot", "adaboost")


def add_parser(sub: Any) -> None:
    s = sub.add_parser("ensemble", help="average the class probabilities of trained runs (or stack them); "
                                        "accuracy, NLL, ECE")
    s.set_defaults(run=combine)
    s.add_argument("run_dirs", nargs="+", help="finished run directories of classifiers on the same data")
    s.add_argument("--split", default="test", help="val or test (default test)")
    s.add_argument("--stack", action="store_true",
                   help="stacking instead of the average: a logistic meta-learner fitted on the val split, "
                        "scored on test (archlab/toolbox/stacking.py)")
    s.add_argument("--C", type=float, default=1.0, help="with --stack: inverse L2 strength of the meta-learner")
    s.add_argument("--out", help="also write the result as JSON to this file")

    s = sub.add_parser("ensemble-train", help="train an ensemble from one recipe (deep, bagging, stacking, "
                                              "snapshot, adaboost) and score it: accuracy, NLL, ECE")
    msub = s.add_subparsers(dest="ensemble_method", required=True, metavar="METHOD")
    helps = {"deep": "members that differ only in their seed (a deep ensemble)",
             "bagging": "members trained on bootstrap resamples of the training split (Breiman 1996)",
             "stacking": "deep-ensemble members combined by a logistic meta-learner fitted on val (Wolpert 1992)",
             "snapshot": "the snapshots of chained cosine cycles of one run (Huang et al. 2017)",
             "adaboost": "SAMME boosting of weak learners on a reweighted loss (Zhu et al. 2009)"}
    for method in METHODS:
        p = msub.add_parser(method, help=helps[method])
        p.set_defaults(run=run, method=method)
        p.add_argument("recipe", help="recipe TOML file of a classifier on an array dataset")
        p.add_argument("--members", type=int, default=5,
                       help="members (snapshot: cycles; adaboost: rounds, fewer if it stops early); default 5")
        p.add_argument("--seed", type=int, default=0, help="seed of the first member (member m: seed + m)")
        p.add_argument("--split", default="test", help="val or test: where members and ensemble are scored "
                                                        "(stacking: always test, its meta-learner fits on val)")
        p.add_argument("--out", help="folder for the member runs and ensemble.json")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key in every member (repeatable)")
        if method == "stacking":
            p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the meta-learner")
        if method == "snapshot":
            p.add_argument("--steps-per-cycle", type=int, default=1000, help="steps of each cosine cycle")
            p.add_argument("--use-last", type=int, default=0, help="average the last K snapshots (0: all)")
        if method == "adaboost":
            p.add_argument("--learning-rate", type=float, default=1.0, help="shrinks every alpha (SAMME)")


def combine(args: argparse.Namespace) -> int:
    """``archlab ensemble``: score finished runs, averaged or stacked."""
    from .ensemble import ensemble
    from .stacking import stacking

    if args.stack:
        if args.split != "test":
            raise ArchlabError("--stack fits on val and scores on test; leave --split out")
        result = stacking(args.run_dirs, args.C)
    else:
        result = ensemble(args.run_dirs, args.split)
    for m in result["members"]:
        print(f"{m['run_dir']}: acc={m['acc']:.4f} nll={m['nll']:.4f} ece={m['ece']:.4f}")
    e = result["ensemble"]
    kind, where = ("stacked ensemble", "") if args.stack else ("ensemble", f"{result['dataset']} ")
    mean_member = sum(m["acc"] for m in result["members"]) / len(result["members"])
    print(f"{kind} of {len(result['members'])} on {where}{result['split']}: acc={e['acc']:.4f} "
          f"nll={e['nll']:.4f} ece={e['ece']:.4f} (best member {result['best_member_acc']:.4f}, "
          f"mean member {mean_member:.4f})")
    if args.out:
        atomic_write_bytes(Path(args.out), (json.dumps(result, indent=2) + "\n").encode())
    return 0


def check(args: argparse.Namespace) -> None:
    """The argument errors the methods would otherwise meet only after training some members."""
    from .. import recipe as recipe_mod

    if args.split not in ("val", "test"):
        raise ArchlabError(f"--split must be val or test, got {args.split!r}")
    if args.method == "stacking" and args.split != "test":
        raise ArchlabError("stacking fits its meta-learner on val and scores on test; leave --split out")
    if args.members < 2 and args.method != "adaboost":
        raise ArchlabError(f"--members must be at least 2, got {args.members}")
    if args.method == "stacking" and not args.C > 0:
        raise ArchlabError(f"--C must be a positive number, got {args.C}")
    recipe = recipe_mod.load(args.recipe, args.overrides)
    if recipe.data is None or recipe.loop_class.data_kind != "arrays":
        raise ArchlabError(f"{args.recipe}: ensemble-train combines classifiers of array datasets; this recipe "
                           "trains on none")
    if args.method == "stacking" or args.split == "val":
        data = recipe.loop_class.load_data(recipe)
        if len(data.val) == 0:
            raise ArchlabError(f"{args.recipe}: its validation split is empty (set data.val_fraction > 0)")


def train_ensemble(args: argparse.Namespace) -> dict[str, Any]:
    from .adaboost import adaboost
    from .bagging import bagging
    from .snapshot import snapshot_ensemble
    from .stacking import stacking

    check(args)
    out = Path(args.out) if args.out else Path("runs") / "ensembles" / args.method / Path(args.recipe).stem
    fixed = list(args.overrides)
    if args.method in ("deep", "bagging", "stacking"):
        result = bagging(args.recipe, args.members, out, args.seed, fixed, "test" if args.method == "stacking"
                         else args.split, bootstrap=args.method == "bagging")
        if args.method == "stacking":
            result = stacking([m["run_dir"] for m in result["members"]], args.C)
    elif args.method == "snapshot":
        result = snapshot_ensemble(args.recipe, args.members, args.steps_per_cycle, out, args.seed, fixed,
                                   args.split, args.use_last)
    else:
        result = adaboost(args.recipe, args.members, out, args.seed, fixed, args.split, args.learning_rate)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "ensemble.json", (json.dumps(result, indent=2) + "\n").encode())
    result["out"] = str(out)
    return result


def run(args: argparse.Namespace) -> int:
    result = train_ensemble(args)
    for m in result["members"]:
        extra = f" alpha={m['alpha']:.4f}" if "alpha" in m else ""
        scores = " ".join(f"{k}={m[k]:.4f}" for k in ("acc", "nll", "ece") if k in m)
        print(f"{m['run_dir']}: {scores}{extra}")
    e = result["ensemble"]
    print(f"{args.method} ensemble of {len(result['members'])} on {result['split']}: acc={e['acc']:.4f} "
          f"nll={e['nll']:.4f} ece={e['ece']:.4f} (best member {result['best_member_acc']:.4f}); "
          f"{result['out']}/ensemble.json")
    return 0
