"""β-VAE sweep: train ``recipes/generative/beta_vae_mnist.toml`` once per β and plot the test reconstruction
error and KL (nats per image) against β (Higgins et al. 2017: a larger β buys a code closer to the prior
with worse reconstructions).

    ARCHLAB_DATA=../shared/datasets OMP_NUM_THREADS=1 python docs/results/generative/beta_sweep.py \
        --out runs/beta_sweep            # writes beta_sweep.json and beta_sweep.png here and into --out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from archlab.io import atomic_write_bytes, pyplot
from archlab.recipe import load
from archlab.runner import train

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parents[2] / "recipes" / "generative" / "beta_vae_mnist.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--out", type=Path, default=Path("runs/beta_sweep"))
    ap.add_argument("--set", action="append", default=[], help="extra recipe overrides (KEY=VALUE)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from the committed beta_sweep.json")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads((HERE / "beta_sweep.json").read_text()), [HERE])
        return
    rows = []
    for beta in args.betas:
        recipe = load(RECIPE, [f"model.beta={beta}", *args.set])
        run = args.out / f"beta_{beta:g}"
        train(recipe, out=run, progress=False, log=lambda _m: None)
        m = json.loads((run / "summary.json").read_text())
        rows.append({"beta": beta, "test_rec": m["metrics"]["test_rec"], "test_kl": m["metrics"]["test_kl"],
                     "test_elbo": -(m["metrics"]["test_rec"] + m["metrics"]["test_kl"]), "wall_s": m["wall_s"]})
        print(json.dumps(rows[-1]), flush=True)
    plot(rows, [args.out, HERE])


def plot(rows: list[dict], folders: list[Path]) -> None:
    """Reconstruction (left axis) and KL (right axis) against β; PNG + JSON into each folder."""
    import io

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    betas = [r["beta"] for r in rows]
    ax.plot(betas, [r["test_rec"] for r in rows], "o-", label="reconstruction  -E_q log p(x|z)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("β")
    ax.set_ylabel("reconstruction (nats / image)")
    ax2 = ax.twinx()
    ax2.plot(betas, [r["test_kl"] for r in rows], "s--", color="tab:red", label="KL(q(z|x) || p(z))")
    ax2.set_ylabel("KL (nats / image)", color="tab:red")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", fontsize=8)
    ax.set_title("β-VAE on binarized MNIST (test split, 4 epochs per β)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    table = (json.dumps(rows, indent=1) + "\n").encode()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "beta_sweep.png", buf.getvalue())
        atomic_write_bytes(folder / "beta_sweep.json", table)

if __name__ == "__main__":
    main()
