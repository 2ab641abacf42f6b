"""AdaBoost with neural weak learners: SAMME (Zhu, Zou, Rosset & Hastie 2009, "Multi-class AdaBoost",
Algorithm 2), for K classes::

    w_i = 1/N
    for m = 1..M:
        T_m    = fit(weak learner, x, y, weights w)                 the loss: sum_i w_i CE(T(x_i), y_i)
        err_m  = sum_i w_i 1[y_i != T_m(x_i)] / sum_i w_i
        alpha_m = lr * (log((1 - err_m) / err_m) + log(K - 1))
        w_i   <- w_i exp(alpha_m 1[y_i != T_m(x_i)]),  renormalized to sum 1
    C(x) = argmax_k sum_m alpha_m 1[T_m(x) = k]

A weak learner has to be better than chance, err_m < 1 - 1/K (else alpha_m <= 0 and boosting stops
there, the learner not kept); one with err_m = 0 is kept with alpha_m = 1 and ends the boosting (the
weights could not be updated) -- both as scikit-learn's AdaBoostClassifier does.

Each weak learner is an ordinary run ``OUT/round-m`` of the recipe on the ``weighted_supervised``
loop (the sample weights are in its loss; :mod:`archlab.train.weighted`). Boosting wants weak, i.e.
briefly trained, learners: set few steps in the recipe or ``fixed``. Besides the SAMME vote's accuracy
the result has ``probs``-based scores of the normalized vote ``sum_m alpha_m onehot(T_m(x)) / sum alpha``
(its NLL and ECE, with probabilities clamped at 1e-6, are those of a hard vote, not of a calibrated model).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ArchlabError
from .ensemble import expected_calibration_error

MAX_ROUNDS = 1000


def samme_step(weights: torch.Tensor, incorrect: torch.Tensor, num_classes: int,
               learning_rate: float = 1.0) -> tuple[float, float, torch.Tensor | None]:
    """One SAMME round: (err_m, alpha_m, the new weights summing to 1), from the current weights (N,)
    and the weak learner's mistakes ``incorrect`` (N,) bool. The weights are None when boosting stops:
    a learner no better than chance (alpha_m <= 0, not kept) or a perfect one (err = 0, alpha = 1)."""
    w = weights.double() / weights.double().sum()
    err = float((w * incorrect.double()).sum())
    if err <= 0:
        return 0.0, 1.0, None
    if err >= 1.0 - 1.0 / num_classes:
        return err, 0.0, None
    alpha = learning_rate * (math.log((1.0 - err) / err) + math.log(num_classes - 1))
    new = w * torch.exp(alpha * incorrect.double())
    return err, alpha, new / new.sum()


def samme_vote(predictions: torch.Tensor, alphas: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Weighted votes (N, K): ``sum_m alpha_m onehot(T_m(x))`` from the learners' predicted classes (M, N)."""
    onehot = torch.nn.functional.one_hot(predictions.long(), num_classes).double()  # (M, N, K)
    return torch.einsum("m,mnk->nk", alphas.double(), onehot)


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])


def adaboost(recipe_path: str | os.PathLike, rounds: int = 5, out: str | os.PathLike | None = None,
             seed: int = 0, fixed: list[str] | None = None, split: str = "test", learning_rate: float = 1.0,
             log: Any = print) -> dict[str, Any]:
    """Boost ``rounds`` weak learners (runs of the recipe on the ``weighted_supervised`` loop); return
    the SAMME ensemble's and every learner's scores on ``split`` with alphas and training errors."""
    from .. import recipe as recipe_mod
    from ..registry import load
    from ..runner import train
    from ..train.weighted import WeightedDataset

    if not 1 <= rounds <= MAX_ROUNDS:
        raise ArchlabError(f"rounds must be in [1, {MAX_ROUNDS}], got {rounds}")
    if not 0 < learning_rate <= 100:
        raise ArchlabError(f"learning_rate must be in (0, 100], got {learning_rate}")
    if split not in ("val", "test"):
        raise ArchlabError(f"split must be val or test, got {split!r}")
    keys = list(fixed or []) + ['train.loop="weighted_supervised"']
    recipe = recipe_mod.load(recipe_path, keys)
    if recipe.data is None or recipe.loop_class.data_kind != "arrays":
        raise ArchlabError("AdaBoost reweights an array dataset; this recipe trains on none")
    data = recipe.loop_class.load_data(recipe)
    k, bs = data.num_classes, recipe.data.eval_batch_size
    part = getattr(data, split)
    out_dir = Path(out) if out is not None else Path("runs") / "adaboost" / recipe.name
    w = torch.full((len(data.train),), 1.0 / len(data.train), dtype=torch.float64)
    alphas, errors, preds, members = [], [], [], []
    for m in range(rounds):
        wdata = WeightedDataset(name=data.name, train=data.train, val=data.val, test=data.test,
                                num_classes=k, input_shape=data.input_shape, train_weights=w.float())
        run_dir = out_dir / f"round-{m}"
        train(recipe_mod.load(recipe_path, keys), out=run_dir, seed=seed + m, data=wdata, progress=False,
              log=lambda msg: None)
        model = load(run_dir).eval()
        incorrect = _predict(model, data.train.x, bs) != data.train.y
        err, alpha, new_w = samme_step(w, incorrect, k, learning_rate)
        log(f"adaboost: round {m}: weighted training error {err:.4f}, alpha {alpha:.4f}")
        if alpha <= 0:  # no better than chance: not kept
            break
        p = _predict(model, part.x, bs)
        alphas.append(alpha)
        errors.append(err)
        preds.append(p)
        members.append({"run_dir": str(run_dir), "acc": float((p == part.y).float().mean()), "alpha": alpha,
                        "train_err": err})
        if new_w is None:
            break
        w = new_w
    if not alphas:
        raise ArchlabError("adaboost: the first weak learner is no better than chance; train it longer")
    votes = samme_vote(torch.stack(preds), torch.tensor(alphas), k)
    probs = (votes / votes.sum(-1, keepdim=True)).clamp_min(1e-6)
    probs = probs / probs.sum(-1, keepdim=True)
    scores = {"acc": float((votes.argmax(-1) == part.y).float().mean()),
              "nll": float(-probs.log()[torch.arange(len(part.y)), part.y].mean()),
              "ece": expected_calibration_error(probs.float(), part.y)}
    return {"method": "adaboost (SAMME)", "split": split, "seed": seed, "members": members, "ensemble": scores,
            "alphas": alphas, "train_errors": errors, "best_member_acc": max(mm["acc"] for mm in members)}
