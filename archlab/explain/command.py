"""``archlab explain RUN_DIR``: attribution maps of a trained image classifier, and their faithfulness.

    archlab explain runs/mnist_lenet5 --method integrated_gradients --method gradcam --index 0 --index 7
    archlab explain runs/mnist_lenet5 --method all --faithfulness 200 --out docs/results/explain/lenet5

The first form draws one figure: a column per example (the input, titled with its true and predicted
label), then a row per method with the attribution map (red: for the target class, blue: against; each
map scaled to its own largest magnitude). The target is the predicted class unless ``--target true``.

With ``--sanity N`` it runs the cascading model-parameter randomization check (Adebayo et al. 2018,
:mod:`archlab.explain.sanity`) on the first N examples: ``OUT.json``, ``OUT.md`` and ``OUT.png``.

With ``--tcav N`` it tests drawn concepts (horizontal stroke, vertical stroke, diagonal stroke, closed
loop; :func:`concept_images`) for every class with TCAV (:mod:`archlab.explain.tcav`) at ``--layer``,
against 10 sets of random training images: ``OUT.json`` and ``OUT.md``.

With ``--roar N`` it runs remove-and-retrain (Hooker et al. 2019, :mod:`archlab.explain.roar`): the maps
of the run's model (for the true class) rank the pixels of the first N training and N/5 test images; for
10/30/50/70/90% removed a fresh model of the run's architecture is retrained (``--roar-epochs``, default 3,
Adam) and tested; a random ranking is always included: ``OUT.json``, ``OUT.md``, ``OUT.png``. Rows already in
``OUT.json`` from the same settings are kept, so a long table can be filled by several calls.

With ``--faithfulness N`` the command instead scores every method (and a random ranking) on the first N
examples of the split with deletion and insertion curves (:mod:`archlab.explain.faithfulness`) and
writes ``OUT.json`` (areas: mean and standard error per method), ``OUT.md`` (the table) and ``OUT.png``
(mean curves). Insertion is scored twice: into a blurred copy (Petsiuk et al.) and into black.

For node-classification runs (graph family) the method is GNNExplainer: ``--node I`` draws the
explanatory subgraph of test node I (:mod:`archlab.explain.graph_command`) and ``--faithfulness N``
scores fidelity on N test nodes against random edge rankings.

For graph-classification runs (``train.loop = "graph"``) ``--index I`` draws graph I of the split with its
explanatory subgraph (the ``--top-k`` edges by occlusion) and node attributions, and ``--faithfulness N``
scores fidelity against random edges (:mod:`archlab.explain.graph_level_command`).

For language-model runs (``train.loop = "lm"``) the command explains the next token after ``--prompt``
with Integrated Gradients over the token embedding and draws the tokens coloured by attribution; for
masked-LM runs (``train.loop = "mlm"``, BERT) the prediction for the ``--mask-at`` character of the prompt
replaced by ``[MASK]`` (:mod:`archlab.explain.text_command`). ``--probe N`` trains per-layer linear probes
with a control task on either.

Image models: runs whose examples are ``[C, H, W]``. Settings per method suit small images: the
baseline is the darkest value of the training data ("black" after standardisation), occlusion slides
a window of a seventh of the image, the Shapley-type methods work on a grid of superpixels, DeepSHAP
averages DeepLIFT over ``--shap-background`` random training images (the background distribution).
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
from . import attribute, methods
from .faithfulness import area, curve
from .gradcam import upsample

KINDS = ("deletion", "insertion", "insertion_black")
IMAGE_METHODS = ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "deeplift", "deep_shap",
                 "gradcam",
                 "guided_gradcam", "occlusion", "lrp", "shapley", "kernel_shap", "lime", "attention_rollout",
                 "attention_flow")


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("explain", help="attribution maps (saliency, IG, Grad-CAM, SHAP ...) of an image, "
                       "node/graph classifier or language model's run")
    s.set_defaults(run=run)
    s.add_argument("run_dir")
    s.add_argument("--method", action="append", help=f"repeatable; `all`: those of {', '.join(IMAGE_METHODS)} "
                   "that apply to the model (default integrated_gradients)")
    s.add_argument("--index", type=int, action="append", help="example index in the split (repeatable; default 0-5)")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--target", default="pred", choices=["pred", "true"], help="explain the predicted or true class")
    s.add_argument("--steps", type=int, default=64, help="Integrated Gradients steps (default 64)")
    s.add_argument("--samples", type=int, default=512, help="KernelSHAP / LIME coalitions (default 512)")
    s.add_argument("--faithfulness", type=int, metavar="N", help="score deletion/insertion on the first N examples")
    s.add_argument("--sanity", type=int, metavar="N", help="cascading randomization check on the first N examples")
    s.add_argument("--roar", type=int, metavar="N", help="remove-and-retrain on the first N training images "
                   "(and N/5 test images), 10-90%% removed, a fresh model retrained per cell")
    s.add_argument("--roar-epochs", type=int, default=3, metavar="E", help="epochs of every ROAR retraining "
                   "(default 3)")
    s.add_argument("--tcav", type=int, metavar="N", help="TCAV of drawn stroke/loop concepts for every class, "
                   "N test inputs per class")
    s.add_argument("--layer", help="layer for Grad-CAM and TCAV (dotted name; default: the last conv block)")
    s.add_argument("--probe", type=int, metavar="N", help="language-model runs: per-layer linear probes (previous "
                   "character's category, with a control task) trained on N positions")
    s.add_argument("--prompt", default="ROMEO:\nWhat say", help="language-model runs: the text whose next token "
                   "is explained")
    s.add_argument("--mask-at", type=int, help="masked-LM runs: the prompt token replaced by [MASK] and explained "
                   "(negative: from the end; default the middle)")
    s.add_argument("--node", type=int, action="append", help="graph runs: test node to explain, by position "
                   "among the test nodes (repeatable; default 0-3)")
    s.add_argument("--top-k", type=int, default=6, help="graph runs: edges kept in the explanation (default 6)")
    s.add_argument("--shap-background", type=int, default=16, metavar="K", help="deep_shap: K random training "
                   "examples as the background distribution (default 16)")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampling methods and the random ranking")
    s.add_argument("--out", help="output file (.png) or, with --faithfulness, prefix (default RUN/plots/explain)")


def _load(run_dir: str) -> tuple[torch.nn.Module, Any, str]:
    """The run's model (eval mode), its data, and ``"image"`` or ``"graph"``."""
    from .. import recipe as recipe_mod
    from ..registry import load
    from ..runner import RECIPE, is_run_dir

    path = Path(run_dir)
    if not path.is_dir() or not is_run_dir(path):
        raise ArchlabError(f"{run_dir} is not a run directory (no {RECIPE}); pass the folder `archlab train` wrote")
    recipe = recipe_mod.load(path / RECIPE)
    model = load(path)
    if not isinstance(model, torch.nn.Module) or not recipe.loop_class.uses_data:
        raise ArchlabError(f"{run_dir}: archlab explain explains image and node classifiers; this run trained a "
                           f"{type(model).__name__}")
    data = recipe.loop_class.load_data(recipe)
    if hasattr(data, "tokenizer") and recipe.loop_class.name in ("lm", "mlm"):
        return model.eval(), data, "text" if recipe.loop_class.name == "lm" else "masked_text"
    if getattr(data, "task", None) == "node":
        return model.eval(), data, "graph"
    if getattr(data, "task", None) == "graph":
        return model.eval(), data, "graph_level"
    shape = getattr(data, "input_shape", ())
    if len(shape) != 3:
        raise ArchlabError(f"{run_dir}: archlab explain explains image classifiers ([C, H, W] examples), node and "
                           f"graph classifiers and language models; {recipe.data.name!r} examples have shape "
                           f"{tuple(shape)}")
    return model.eval(), data, "image"


def options(method: str, images: torch.Tensor, background: float, args: argparse.Namespace) -> dict[str, Any]:
    """Per-method settings for ``[B, C, H, W]`` images (module docstring)."""
    _, c, h, w = images.shape
    gen = torch.Generator().manual_seed(args.seed)

    def grid(cells: int) -> torch.Tensor:
        rows = torch.arange(h) * cells // h
        cols = torch.arange(w) * cells // w
        return (rows[:, None] * cells + cols[None])[None]

    return {
        "integrated_gradients": {"baselines": background, "n_steps": args.steps},
        "deeplift": {"baselines": background},
        "deep_shap": {"baselines": _shap_background(args, images, background)},
        "gradcam": {"layer": args.layer}, "guided_gradcam": {"layer": args.layer},
        "smoothgrad": {"stdevs": 0.15 * float(images.max() - images.min()), "n_samples": 16, "generator": gen},
        "occlusion": {"baselines": background, "sliding_window_shapes": (c, max(1, h // 7), max(1, w // 7)),
                      "strides": (c, max(1, h // 14), max(1, w // 14))},
        "shapley": {"baselines": background, "feature_mask": grid(3)},
        "kernel_shap": {"baselines": background, "feature_mask": grid(7), "n_samples": args.samples,
                        "generator": gen},
        "lime": {"baselines": background, "feature_mask": grid(7), "n_samples": args.samples, "generator": gen},
    }.get(method, {})


def _shap_background(args: argparse.Namespace, images: torch.Tensor, background: float) -> torch.Tensor:
    """DeepSHAP's background samples: the training examples :func:`run` drew (``args.shap_samples``), or --
    when called without them -- two constant images at ``background`` (DeepLIFT's black baseline)."""
    samples = getattr(args, "shap_samples", None)
    return samples if samples is not None else torch.full((2, *images.shape[1:]), background)


def maps(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor, method: str, background: float,
         args: argparse.Namespace) -> torch.Tensor:
    """Attributions of one method at the input resolution ``[B, C or 1, H, W]``."""
    a = attribute(model, images, target, method, **options(method, images, background, args))
    return upsample(a, tuple(images.shape[2:]), "bilinear") if a.shape[2:] != images.shape[2:] else a


def _methods(args: argparse.Namespace, model: torch.nn.Module, probe: torch.Tensor, background: float) -> list[str]:
    """The requested methods; ``all``: every image method that applies to this model (tried on one example)."""
    names = args.method or ["integrated_gradients"]
    for n in names:
        if n not in methods() and n != "all":
            raise ArchlabError(f"unknown attribution method {n!r}; methods: all, {', '.join(methods())}")
    if "all" not in names:
        return names
    usable = []
    for n in IMAGE_METHODS:
        try:
            maps(model, probe, torch.zeros(1, dtype=torch.long), n, background, args)
            usable.append(n)
        except ArchlabError as exc:
            print(f"skipping {n}: {exc}")
    return usable


def run(args: argparse.Namespace) -> int:
    for flag in ("faithfulness", "sanity", "roar", "tcav", "probe", "steps", "samples", "top_k", "shap_background",
                 "roar_epochs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ArchlabError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if sum(bool(getattr(args, f)) for f in ("faithfulness", "sanity", "roar", "tcav")) > 1:
        raise ArchlabError("pass one of --faithfulness, --sanity, --roar, --tcav")
    torch.manual_seed(args.seed)
    model, data, kind = _load(args.run_dir)
    if kind == "graph":
        from .graph_command import run_graph

        return run_graph(model, data, args)
    if kind == "graph_level":
        from .graph_level_command import run_graph_level

        return run_graph_level(model, data, args)
    if kind in ("text", "masked_text"):
        from .text_command import run_text

        return run_text(model, data, args, masked=kind == "masked_text")
    split = getattr(data, args.split)
    if len(split) == 0:
        raise ArchlabError(f"the {args.split} split of {args.run_dir} is empty")
    background = float(data.train.x[:1024].min())
    draw_gen = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(len(data.train.x), generator=draw_gen)[:max(2, args.shap_background)]
    args.shap_samples = data.train.x[pick]
    names = _methods(args, model, split.x[:1], background)
    default_out = Path(args.run_dir) / "plots" / "explain"
    if args.faithfulness:
        prefix = Path(args.out).with_suffix("") if args.out else default_out.with_name("faithfulness")
        return faithfulness_report(model, split, names, background, args, prefix)
    if args.sanity:
        prefix = Path(args.out).with_suffix("") if args.out else default_out.with_name("sanity")
        return sanity_report(model, split, names, background, args, prefix)
    if args.roar:
        prefix = Path(args.out).with_suffix("") if args.out else default_out.with_name("roar")
        return roar_report(model, data, names, background, args, prefix)
    if args.tcav:
        prefix = Path(args.out).with_suffix("") if args.out else default_out.with_name("tcav")
        return tcav_report(model, data, background, args, prefix)
    idx = args.index or list(range(min(6, len(split))))
    if min(idx) < 0 or max(idx) >= len(split):
        raise ArchlabError(f"--index must be in [0, {len(split) - 1}] for the {args.split} split")
    images, labels = split.x[idx], split.y[idx]
    with torch.no_grad():
        probs = model(images).softmax(-1)
    pred = probs.argmax(-1)
    target = labels if args.target == "true" else pred
    rows = [(n, maps(model, images, target, n, background, args)) for n in names]
    label = "_".join(names) if len(names) < 3 else "methods"
    out = Path(args.out) if args.out else default_out.with_name(f"explain_{label}.png")
    draw(images, labels, pred, probs, rows, out)
    print(f"wrote {out}")
    return 0


def draw(images: torch.Tensor, labels: torch.Tensor, pred: torch.Tensor, probs: torch.Tensor,
         rows: list[tuple[str, torch.Tensor]], out: Path) -> Path:
    """Inputs on top, one row of heat maps per method (red for, blue against the class, symmetric scale per map;
    methods whose maps are never negative from each map's minimum to its maximum)."""
    from ..io import pyplot

    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(len(rows) + 1, n, figsize=(1.6 * n + 1.4, 1.6 * (len(rows) + 1)), squeeze=False)
    for j in range(n):
        img = images[j]
        shown = img[0] if img.shape[0] == 1 else (img - img.min()) / (img.max() - img.min() + 1e-12)
        shown = shown if img.shape[0] == 1 else shown.permute(1, 2, 0)
        axes[0, j].imshow(shown.numpy(), cmap="gray")
        axes[0, j].set_title(f"true {int(labels[j])} / pred {int(pred[j])}\np={float(probs[j, pred[j]]):.2f}",
                             fontsize=8)
        for i, (name, a) in enumerate(rows, start=1):
            m = a[j].sum(0)
            axes[i, j].imshow(shown.numpy(), cmap="gray", alpha=0.35)
            if float(a.min()) >= 0:  # a non-negative method (saliency, rollout ...): its own min to max
                axes[i, j].imshow(m.numpy(), cmap="Reds", vmin=float(m.min()), vmax=float(m.max()), alpha=0.8)
            else:
                lim = float(m.abs().max()) or 1.0
                axes[i, j].imshow(m.numpy(), cmap="bwr", vmin=-lim, vmax=lim, alpha=0.8)
            if j == 0:
                axes[i, j].set_ylabel(name.replace("_", "\n"), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def faithfulness_report(model: torch.nn.Module, split: Any, names: list[str], background: float,
                        args: argparse.Namespace, prefix: Path, batch: int = 50, steps: int = 28) -> int:
    """Deletion / insertion areas of every method and of a random ranking on the first N examples."""
    n = min(args.faithfulness, len(split))
    images, labels = split.x[:n], split.y[:n]
    with torch.no_grad():
        pred = model(images).softmax(-1).argmax(-1)
    target = labels if args.target == "true" else pred
    gen = torch.Generator().manual_seed(args.seed)
    results: dict[str, dict[str, Any]] = {}
    for name in ["random", *names]:
        t0 = time.perf_counter()
        curves: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
        for s in range(0, n, batch):
            x, t = images[s:s + batch], target[s:s + batch]
            a = (torch.rand(x.shape, generator=gen) if name == "random"
                 else maps(model, x, t, name, background, args))
            curves["deletion"].append(curve(model, x, t, a, "deletion", steps, baseline=background))
            curves["insertion"].append(curve(model, x, t, a, "insertion", steps))
            curves["insertion_black"].append(curve(model, x, t, a, "insertion", steps, baseline=background,
                                                   start="baseline"))
        results[name] = {"seconds": round(time.perf_counter() - t0, 2)}
        for kind, parts in curves.items():
            c = torch.cat(parts)
            results[name] |= {f"{kind}_auc": float(area(c).mean()), f"{kind}_se": float(area(c).std() / math.sqrt(n)),
                              f"{kind}_curve": c.mean(0).tolist()}
        r = results[name]
        print(f"{name:22s} " + "   ".join(f"{k} {r[k + '_auc']:.3f} ± {r[k + '_se']:.3f}" for k in KINDS)
              + f"   ({r['seconds']} s)", flush=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    meta = {"examples": n, "split": args.split, "target": args.target, "steps": steps, "seed": args.seed,
            "baseline": background, "run_dir": str(args.run_dir)}
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "methods": results}, indent=1) + "\n")
    lines = ["| method | deletion AUC (lower is better) | insertion AUC, from blur (higher is better) | "
             "insertion AUC, from black (higher is better) | seconds |", "|---|---|---|---|---|"]
    for name, r in sorted(results.items(), key=lambda kv: kv[1]["deletion_auc"]):
        lines.append(f"| {name} | " + " | ".join(f"{r[k + '_auc']:.3f} ± {r[k + '_se']:.3f}" for k in KINDS)
                     + f" | {r['seconds']} |")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot_curves(results, prefix.with_suffix(".png"), n)
    print(f"wrote {prefix.with_suffix('.json')}, .md, .png")
    return 0


def _plot_curves(results: dict[str, dict[str, Any]], path: Path, n: int) -> None:
    from ..io import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, key in zip(axes, KINDS, strict=True):
        for name, r in results.items():
            ys = r[f"{key}_curve"]
            xs = [k / (len(ys) - 1) for k in range(len(ys))]
            ax.plot(xs, ys, label=f"{name} ({r[f'{key}_auc']:.3f})", lw=2.2 if name == "random" else 1.2,
                    ls="--" if name == "random" else "-", color="black" if name == "random" else None)
        ax.set_xlabel(f"fraction of pixels {'removed' if key == 'deletion' else 'inserted'}"
                      + {"insertion": " into a blurred copy", "insertion_black": " into black"}.get(key, ""))
        ax.set_ylabel("probability of the explained class")
        ax.set_title(f"{key} ({n} examples; area in the legend)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sanity_report(model: torch.nn.Module, split: Any, names: list[str], background: float,
                  args: argparse.Namespace, prefix: Path) -> int:
    """Spearman correlation of each method's maps with the trained model's as layers are randomised."""
    from .sanity import cascading_randomization

    n = min(args.sanity, len(split))
    images = split.x[:n]
    with torch.no_grad():
        target = model(images).argmax(-1)
    table: dict[str, list[tuple[str, float]]] = {}
    for name in names:
        def explain(m: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, name: str = name) -> torch.Tensor:
            return maps(m, x, t, name, background, args)

        table[name] = cascading_randomization(model, images, target, explain, seed=args.seed)
        print(f"{name:22s} " + "  ".join(f"{layer}:{rho:.2f}" for layer, rho in table[name]), flush=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    meta = {"examples": n, "split": args.split, "seed": args.seed, "run_dir": str(args.run_dir),
            "similarity": "mean Spearman rank correlation of |map| with the trained model's |map|"}
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "methods": table}, indent=1) + "\n")
    layers = [layer for layer, _ in next(iter(table.values()))]
    lines = ["| method | " + " | ".join(f"up to {layer}" if layer != "none" else "trained" for layer in layers) + " |",
             "|---|" + "---|" * len(layers)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{rho:.2f}" for _, rho in row) + " |")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    from ..io import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, row in table.items():
        ax.plot(range(len(row)), [rho for _, rho in row], marker="o", label=name)
    ax.set_xticks(range(len(layers)), ["trained"] + [f"{layer}" for layer in layers[1:]], rotation=30, fontsize=8)
    ax.set_xlabel("layers re-initialised, cumulatively from the output")
    ax.set_ylabel("Spearman rank corr. of |map| with trained")
    ax.set_title(f"cascading randomization (Adebayo et al. 2018), {n} examples")
    ax.axhline(0, color="grey", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(prefix.with_suffix(".png"), dpi=100)
    plt.close(fig)
    print(f"wrote {prefix.with_suffix('.json')}, .md, .png")
    return 0


def concept_images(shape: tuple[int, ...], n: int, low: float, high: float,
                   gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` drawn examples of each concept, ``[n, C, H, W]``: a bright stroke (value ``high``, width ~H/10,
    random length and position, slightly blurred) or a ring on a ``low`` background."""
    from .faithfulness import gaussian_blur

    c, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")

    def draw(kind: str) -> torch.Tensor:
        u = torch.rand(6, generator=gen)
        cy, cx = h * (0.3 + 0.4 * u[0]), w * (0.3 + 0.4 * u[1])
        half, thick = (0.25 + 0.15 * u[2]) * min(h, w), max(1.0, min(h, w) / 14)
        if kind == "horizontal stroke":
            m = ((yy - cy).abs() <= thick) & ((xx - cx).abs() <= half)
        elif kind == "vertical stroke":
            m = ((xx - cx).abs() <= thick) & ((yy - cy).abs() <= half)
        elif kind == "diagonal stroke":
            d = ((xx - cx) - (yy - cy)) / math.sqrt(2)
            m = (d.abs() <= thick) & (((xx - cx) + (yy - cy)).abs() / math.sqrt(2) <= half)
        else:  # closed loop
            r = (0.15 + 0.15 * u[3]) * min(h, w)
            m = (((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() - r).abs() <= thick
        return torch.where(m, high, low).expand(c, h, w)

    names = ("horizontal stroke", "vertical stroke", "diagonal stroke", "closed loop")
    return {k: gaussian_blur(torch.stack([draw(k) for _ in range(n)]), 0.7) for k in names}


def tcav_report(model: torch.nn.Module, data: Any, background: float, args: argparse.Namespace, prefix: Path) -> int:
    """TCAV scores and significance of the drawn concepts for every class."""
    from .base import find_layer
    from .tcav import tcav

    gen = torch.Generator().manual_seed(args.seed)
    test, train = data.test, data.train
    layer = find_layer(model, args.layer, test.x[:1])
    layer_name = next(n for n, m in model.named_modules() if m is layer)
    concepts = concept_images(tuple(test.x.shape[1:]), 50, background, float(train.x[:1024].max()), gen)
    randoms = [train.x[torch.randperm(len(train), generator=gen)[:50]] for _ in range(10)]
    table: dict[str, dict[str, Any]] = {}
    for k in range(int(test.y.max()) + 1):
        inputs = test.x[test.y == k][:args.tcav]
        for name, images in concepts.items():
            r = tcav(model, layer, inputs, k, images, randoms)
            table.setdefault(name, {})[str(k)] = {"mean": r.mean, "scores": r.scores, "random": r.random_scores,
                                                  "t": r.t, "p": r.p_value, "significant": r.significant()}
        print(f"class {k}: " + "  ".join(f"{c} {table[c][str(k)]['mean']:.2f}"
                                         f"{'*' if table[c][str(k)]['significant'] else ''}" for c in concepts),
              flush=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    meta = {"layer": layer_name, "inputs_per_class": args.tcav, "concept_examples": 50, "random_sets": 10,
            "seed": args.seed, "run_dir": str(args.run_dir)}
    prefix.with_suffix(".json").write_text(json.dumps({"meta": meta, "concepts": table}, indent=1) + "\n")
    classes = sorted(next(iter(table.values())), key=int)
    lines = ["| concept | " + " | ".join(f"class {k}" for k in classes) + " |", "|---|" + "---|" * len(classes)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]['mean']:.2f}{'*' if row[k]['significant'] else ''}"
                                                 for k in classes) + " |")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {prefix.with_suffix('.json')}, .md")
    return 0


def roar_report(model: torch.nn.Module, data: Any, names: list[str], background: float, args: argparse.Namespace,
                prefix: Path) -> int:
    """ROAR test accuracies per method and fraction removed (plus a random ranking).

    The 0% cell is retrained once (it does not depend on the map). ``OUT.json`` is rewritten after every
    method, and rows already in an ``OUT.json`` written with the same settings (its ``meta``) are kept, not
    recomputed: a long table can be filled by several shorter calls with the same ``--out``."""
    from .. import config as _config
    from ..registry import create
    from .roar import roar

    n = min(args.roar, len(data.train))
    train_x, train_y = data.train.x[:n], data.train.y[:n]
    test_x, test_y = data.test.x[:max(1, n // 5)], data.test.y[:max(1, n // 5)]
    config = _config.to_dict(model.config)

    def build() -> torch.nn.Module:
        return create(model.registry_name, **config)

    meta = {"train_images": n, "test_images": len(test_x), "epochs": args.roar_epochs, "seed": args.seed,
            "run_dir": str(args.run_dir), "steps": args.steps, "samples": args.samples,
            "shap_background": args.shap_background, "fill": "training per-channel mean",
            "explained_class": "true label"}
    path = prefix.with_suffix(".json")
    table: dict[str, dict[str, float]] = {}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("meta") == meta:
            table = old["methods"]
            print(f"keeping {', '.join(table)} from {path} (same settings)", flush=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    for name in ["random", *names]:
        if name in table:
            continue
        t0 = time.perf_counter()

        def explain(x: torch.Tensor, y: torch.Tensor, name: str = name) -> torch.Tensor:
            if name == "random":
                return torch.rand(x.shape, generator=gen)
            return maps(model, x, y, name, background, args)

        reference = next((row["0.0"] for row in table.values()), None)
        acc = roar(build, explain, train_x, train_y, test_x, test_y, epochs=args.roar_epochs, seed=args.seed,
                   reference=reference)
        table[name] = {f"{f:.1f}": a for f, a in acc.items()} | {"seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name:22s} " + "  ".join(f"{f:.0%}:{a:.3f}" for f, a in acc.items())
              + f"  ({table[name]['seconds']} s)", flush=True)
        path.write_text(json.dumps({"meta": meta, "methods": table}, indent=1) + "\n")
    fracs = [k for k in next(iter(table.values())) if k != "seconds"]
    lines = ["| method | " + " | ".join(f"{float(f):.0%} removed" for f in fracs) + " |", "|---|" + "---|" * len(fracs)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[f]:.3f}" for f in fracs) + " |")
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot_roar(table, prefix.with_suffix(".png"),
              f"ROAR (Hooker et al. 2019), {n} training images, {args.roar_epochs} epochs")
    print(f"wrote {prefix.with_suffix('.json')}, .md, .png")
    return 0


def plot_roar(table: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """Test accuracy against the fraction removed, one line per method (``table`` as in the ROAR json's
    ``methods``), the legend beside the axes so that it hides no line."""
    from ..io import pyplot

    fracs = [k for k in next(iter(table.values())) if k != "seconds"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, (name, row) in enumerate(table.items()):   # past 10 methods the colours repeat: new marker and line
        style = {"ls": "--", "color": "black", "marker": "o"} if name == "random" else \
            {"ls": ("-", ":", "-.")[(i - 1) // 10 % 3], "marker": "os^"[(i - 1) // 10 % 3]}
        ax.plot([float(f) for f in fracs], [row[f] for f in fracs], label=name, **style)
    ax.set_xlabel("fraction of pixels removed (then retrained)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
