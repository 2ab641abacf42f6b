"""MNIST -> digits transfer study (archlab/toolbox/transfer.py): feature extraction vs fine-tuning vs
from scratch with 10% / 50% / 100% of the digits training labels, 3 seeds each.

First train the source network (recipes/search/transfer_mnist_source.toml), then::

    OMP_NUM_THREADS=1 ARCHLAB_DATA=... archlab train recipes/search/transfer_mnist_source.toml \
        --out runs/transfer/source
    OMP_NUM_THREADS=1 python recipes/search/transfer_digits.py --source runs/transfer/source --out runs/transfer/study

The target runs use the source recipe with TARGET_KEYS (the digits, small batches, 300 steps for every
fraction). Writes docs/results/search/transfer_digits.{json,png} and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from archlab.toolbox.transfer import MODES, plot_study, transfer_study

ROOT = Path(__file__).resolve().parents[2]
SOURCE_RECIPE = ROOT / "recipes" / "search" / "transfer_mnist_source.toml"
TARGET_KEYS = ['data.name="digits"', "data.batch_size=32", "data.val_fraction=0.1", "train.steps=300",
               "train.eval_every=100", "train.log_every=50", "train.checkpoint_minutes=0", "optim.lr=3e-3",
               "optim.warmup_steps=0"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="runs/transfer/source")
    ap.add_argument("--out", default="runs/transfer/study")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--results", default=str(ROOT / "docs" / "results" / "search"))
    args = ap.parse_args()
    result = transfer_study(args.source, SOURCE_RECIPE, args.out, seeds=tuple(args.seeds), fixed=TARGET_KEYS)
    result["target_keys"] = TARGET_KEYS
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "transfer_digits.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_study(result, results / "transfer_digits.png")
    fr = result["fractions"]
    examples = {f: next(r["train_examples"] for r in result["rows"] if r["fraction"] == f) for f in fr}
    print("| method | " + " | ".join(f"{100 * f:g}% labels ({examples[f]})" for f in fr) + " | trained params |")
    print("|---" * (len(fr) + 2) + "|")
    for mode in MODES:
        params = next(r["trained_params"] for r in result["rows"] if r["mode"] == mode)
        cells = [f"{result['table'][f'{mode}@{f:g}']['mean']:.4f} ± {result['table'][f'{mode}@{f:g}']['std']:.4f}"
                 for f in fr]
        print(f"| {mode} | " + " | ".join(cells) + f" | {params:,} |")


if __name__ == "__main__":
    main()
