"""Transfer learning from MNIST to scikit-learn's digits: feature extraction vs fine-tuning vs training
from scratch, at several fractions of the target labels.

The target data: the ``digits`` images (8x8, 1,438 train / 359 test) resized to 20x20 (bilinear) and
padded by 4 pixels to 28x28 -- MNIST's own framing (digits size-normalized into a 20x20 box, centered in
28x28; LeCun et al. 1998) -- so a network trained on MNIST reads them as it reads MNIST::

    x_28 = pad_4(resize_20(x_8))                                           (N, 1, 28, 28) in [0, 1]

``label_fraction`` keeps a stratified, seeded subset of the training split (validation and test splits
whole). Three ways to train the same network on it, each an ordinary run (``OUT/<mode>-<frac>-s<seed>``):

    scratch          fresh initialization, every parameter trained
    finetune         train.init_from = SOURCE, init_skip = HEAD (a fresh classifier), every parameter trained
    features         as finetune, plus train.freeze = BODY: only the new classifier learns (a linear probe on
                     the source network's penultimate features)

``HEAD`` and ``BODY`` are key prefixes of the model (for ``cnn2d``: head ``head.5``, the last linear layer;
body ``features`` and ``head.2``, the convolutions and the hidden layer).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Dataset, Split
from ..data.registry import stratified_indices
from ..errors import ArchlabError

MODES = ("scratch", "finetune", "features")


def upsample_digits(x: torch.Tensor, box: int = 20, size: int = 28) -> torch.Tensor:
    """(N, 1, 8, 8) -> (N, 1, size, size): bilinear resize to ``box`` x ``box``, centered by zero padding."""
    if box > size or (size - box) % 2:
        raise ArchlabError(f"the box {box} must fit the image {size} with equal margins")
    pad = (size - box) // 2
    return F.pad(F.interpolate(x, size=(box, box), mode="bilinear", align_corners=False), (pad,) * 4)


def label_subset(split: Split, fraction: float, seed: int) -> Split:
    """A stratified ``fraction`` of ``split`` (seeded); 1 keeps it whole."""
    if not 0 < fraction <= 1:
        raise ArchlabError(f"label fractions must be in (0, 1], got {fraction}")
    if fraction == 1:
        return split
    _, keep = stratified_indices(split.y.numpy(), fraction, seed)
    keep = torch.from_numpy(np.sort(keep))
    return Split(split.x[keep], split.y[keep])


def target_dataset(data: Dataset, fraction: float, seed: int) -> Dataset:
    """The digits at 28x28 with ``fraction`` of the training labels."""
    up = {name: Split(upsample_digits(p.x), p.y) for name, p in (("train", data.train), ("val", data.val),
                                                                   ("test", data.test))}
    return Dataset(name=data.name, train=label_subset(up["train"], fraction, seed), val=up["val"], test=up["test"],
                   num_classes=data.num_classes, input_shape=(1, 28, 28))


def transfer_study(source_run: str | os.PathLike, target_recipe: str | os.PathLike, out: str | os.PathLike,
                   fractions: tuple[float, ...] = (0.1, 0.5, 1.0), seeds: tuple[int, ...] = (0,),
                   head: tuple[str, ...] = ("head.5",), body: tuple[str, ...] = ("features", "head.2"),
                   fixed: list[str] | None = None, log: Any = print) -> dict[str, Any]:
    """Train every (mode, fraction, seed); return rows and per-(mode, fraction) mean ± std test accuracy."""
    from .. import recipe as recipe_mod
    from ..runner import train

    source = Path(source_run).resolve()
    base = recipe_mod.load(target_recipe, fixed or [])
    if base.data is None or base.data.name != "digits":
        raise ArchlabError("the transfer study's target recipe trains on digits")
    digits = base.loop_class.load_data(base)
    out_dir = Path(out)
    rows = []
    for fraction in fractions:
        for seed in seeds:
            data = target_dataset(digits, fraction, seed)
            for mode in MODES:
                keys = list(fixed or [])
                if mode != "scratch":
                    keys += [f'train.init_from="{source}"', f"train.init_skip={list(head)!r}".replace("'", '"')]
                if mode == "features":
                    keys.append(f"train.freeze={list(body)!r}".replace("'", '"'))
                run_dir = out_dir / f"{mode}-{fraction:g}-s{seed}"
                summary = train(recipe_mod.load(target_recipe, keys), out=run_dir, seed=seed, data=data,
                                progress=False, log=lambda m: None)
                m = summary["metrics"]
                trained = sum(p.numel() for p in _trainable_params(run_dir, mode, body))
                rows.append({"mode": mode, "fraction": fraction, "seed": seed, "train_examples": len(data.train),
                             "test_acc": m["test_acc"], "test_loss": m["test_loss"], "wall_s": summary["wall_s"],
                             "trained_params": trained})
                log(f"transfer: {mode} with {fraction:g} of the labels ({len(data.train)}), seed {seed}: "
                    f"test acc {m['test_acc']:.4f}")
    table = {}
    for mode in MODES:
        for fraction in fractions:
            accs = [r["test_acc"] for r in rows if r["mode"] == mode and r["fraction"] == fraction]
            table[f"{mode}@{fraction:g}"] = {"mean": statistics.fmean(accs),
                                             "std": statistics.stdev(accs) if len(accs) > 1 else 0.0}
    return {"rows": rows, "table": table, "source": str(source), "fractions": list(fractions), "seeds": list(seeds)}


def _trainable_params(run_dir: Path, mode: str, body: tuple[str, ...]) -> list[torch.Tensor]:
    from ..engine.init import matches
    from ..registry import load

    model = load(run_dir)
    return [p for n, p in model.named_parameters() if mode != "features" or not any(matches(n, b) for b in body)]


def plot_study(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Test accuracy against the fraction of target labels, one line per mode (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"scratch": "from scratch", "finetune": "fine-tuning (MNIST init)",
              "features": "feature extraction (frozen body)"}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    fr = result["fractions"]
    for mode in MODES:
        mean = [result["table"][f"{mode}@{f:g}"]["mean"] for f in fr]
        std = [result["table"][f"{mode}@{f:g}"]["std"] for f in fr]
        ax.errorbar([100 * f for f in fr], mean, yerr=std, marker="o", capsize=3, label=labels[mode])
    ax.set_xlabel("% of the digits training labels")
    ax.set_ylabel("test accuracy (digits, 28x28)")
    ax.set_title(f"MNIST -> digits transfer ({len(result['seeds'])} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
