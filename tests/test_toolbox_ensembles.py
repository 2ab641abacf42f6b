"""Bagging, snapshot ensembles, AdaBoost (SAMME) and stacking (archlab/toolbox/), each against its
defining property; the weighted_supervised loop their weak learners train on."""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import toolbox_tiny_toml

from archlab.errors import ArchlabError
from archlab.recipe import from_dict, load
from archlab.runner import train
from archlab.toolbox.adaboost import adaboost, samme_step, samme_vote
from archlab.toolbox.bagging import bagging, bootstrap_dataset, bootstrap_indices
from archlab.toolbox.ensemble import run_log_probabilities
from archlab.toolbox.snapshot import snapshot_ensemble
from archlab.toolbox.stacking import fit_logistic, meta_log_probs, stacking

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = toolbox_tiny_toml(steps=20, log_every=5)


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


# -- bagging --------------------------------------------------------------------------------------------------

def test_bootstrap_is_seeded_with_replacement() -> None:
    a, b = bootstrap_indices(10000, 3, 1), bootstrap_indices(10000, 3, 1)
    assert torch.equal(a, b)
    assert not torch.equal(a, bootstrap_indices(10000, 3, 2))
    assert not torch.equal(a, bootstrap_indices(10000, 4, 1))
    assert a.min() >= 0 and a.max() < 10000
    # a bootstrap sample holds 1 - (1 - 1/n)^n ~ 63.2% distinct examples
    assert len(torch.unique(a)) / 10000 == pytest.approx(1 - (1 - 1 / 10000) ** 10000, abs=0.01)


def test_bagging_trains_members_on_their_resamples(recipe_file: Path, tmp_path: Path) -> None:
    result = bagging(recipe_file, members=2, out=tmp_path / "bag", seed=7, log=lambda m: None)
    assert result["method"] == "bagging" and len(result["members"]) == 2
    data = load(recipe_file).loop_class.load_data(load(recipe_file))
    member = bootstrap_dataset(data, 7, 1)
    idx = bootstrap_indices(len(data.train), 7, 1)
    assert torch.equal(member.train.x, data.train.x[idx]) and torch.equal(member.val.y, data.val.y)
    # member 1 is exactly a run on resample (7, 1) with seed 7 + 1
    again = train(load(recipe_file), out=tmp_path / "again", seed=8, data=member, progress=False, log=lambda m: None)
    assert again["metrics"]["test_acc"] == pytest.approx(result["members"][1]["acc"])
    l1, _, _ = run_log_probabilities(tmp_path / "bag" / "member-1", "test")
    l2, _, _ = run_log_probabilities(tmp_path / "again", "test")
    assert torch.equal(l1, l2)


# -- snapshot ensembles ---------------------------------------------------------------------------------------

def test_snapshot_cycles_restart_cosine_from_previous_snapshot(recipe_file: Path, tmp_path: Path) -> None:
    result = snapshot_ensemble(recipe_file, cycles=2, steps_per_cycle=10, out=tmp_path / "snap", log=lambda m: None)
    assert len(result["members"]) == 2
    c1 = load(tmp_path / "snap" / "cycle-1" / "recipe.toml")
    assert Path(c1.train.init_from) == (tmp_path / "snap" / "cycle-0").resolve()
    assert c1.optim["model"].schedule == "cosine" and c1.train.steps == 10
    for cycle in (0, 1):  # every cycle: lr from lr0 (restart) down towards 0 (eq. 2 of Huang et al.)
        rows = [json.loads(line) for line in (tmp_path / "snap" / f"cycle-{cycle}" / "metrics.jsonl").open()]
        lrs = [r["lr"] for r in rows if "lr" in r]
        assert lrs[0] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * (rows[0]["step"] - 1) / 10)), rel=1e-6)
        assert lrs[-1] < 3e-3 * 0.03
    with pytest.raises(ArchlabError):
        snapshot_ensemble(recipe_file, cycles=2, use_last=1, out=tmp_path / "x")


# -- AdaBoost (SAMME) -----------------------------------------------------------------------------------------

def test_samme_step_by_hand() -> None:
    w = torch.full((4,), 0.25, dtype=torch.float64)
    incorrect = torch.tensor([True, False, False, False])
    err, alpha, new = samme_step(w, incorrect, num_classes=3)
    assert err == pytest.approx(0.25)
    assert alpha == pytest.approx(math.log(0.75 / 0.25) + math.log(2))
    # w_0 * exp(alpha) = 0.25 * 6 = 1.5 against 0.25 each: renormalized over 2.25
    assert torch.allclose(new, torch.tensor([1.5, 0.25, 0.25, 0.25], dtype=torch.float64) / 2.25)
    assert samme_step(w, torch.ones(4, dtype=torch.bool), 3)[2] is None  # worse than chance: stop
    assert samme_step(w, torch.zeros(4, dtype=torch.bool), 3)[:2] == (0.0, 1.0)  # perfect: alpha 1, stop


class _Replay:
    """A scikit-learn weak learner whose round-r prediction is column r of the table in X[:, 1:]."""

    fitted = 0

    def __init__(self) -> None:
        pass

    def get_params(self, deep: bool = True) -> dict:
        return {}

    def set_params(self, **params: object) -> _Replay:
        return self

    def fit(self, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> _Replay:
        self.round = _Replay.fitted
        _Replay.fitted += 1
        self.classes_ = np.unique(y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x[:, 1 + self.round].astype(int)


def test_samme_equals_scikit_learn_on_the_same_weak_learner_predictions() -> None:
    ensemble_mod = pytest.importorskip("sklearn.ensemble")
    rng = np.random.default_rng(0)
    n, k, rounds = 60, 3, 4
    y = rng.integers(0, k, n)
    # each round's learner: right on a random ~70%, else a random other class
    table = np.stack([np.where(rng.random(n) < 0.7, y, (y + rng.integers(1, k, n)) % k) for _ in range(rounds)], 1)
    x = np.concatenate([np.arange(n)[:, None], table], 1).astype(float)
    _Replay.fitted = 0
    ref = ensemble_mod.AdaBoostClassifier(estimator=_Replay(), n_estimators=rounds, learning_rate=0.7).fit(x, y)
    w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    alphas = []
    for r in range(rounds):
        err, alpha, w = samme_step(w, torch.from_numpy(table[:, r] != y), k, 0.7)
        assert err == pytest.approx(ref.estimator_errors_[r], rel=1e-9)
        alphas.append(alpha)
    assert np.allclose(alphas, ref.estimator_weights_, rtol=1e-9)
    votes = samme_vote(torch.from_numpy(table.T.copy()), torch.tensor(alphas), k)
    assert np.array_equal(votes.argmax(-1).numpy(), ref.predict(x))


def test_weighted_loop_with_equal_weights_is_supervised(tmp_path: Path) -> None:
    from archlab.train.weighted import WeightedDataset

    raw = tomllib.loads(TINY)
    a = train(from_dict(raw), out=tmp_path / "a", progress=False, log=lambda m: None)
    raw_w = copy.deepcopy(raw)
    raw_w["train"]["loop"] = "weighted_supervised"
    recipe = from_dict(raw_w)
    data = recipe.loop_class.load_data(recipe)
    wdata = WeightedDataset(**vars(data), train_weights=torch.full((len(data.train),), 0.3))
    b = train(recipe, out=tmp_path / "b", data=wdata, progress=False, log=lambda m: None)
    assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-6)
    with pytest.raises(ArchlabError):
        WeightedDataset(**vars(data), train_weights=-torch.ones(len(data.train)))


def test_weighted_loss_is_the_weighted_mean_cross_entropy() -> None:
    from archlab.train.weighted import WeightedSupervised

    logits = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 1])
    w = torch.tensor([2.0, 0.0, 1.0, 1.0])
    loop = WeightedSupervised.__new__(WeightedSupervised)
    loop.cfg = WeightedSupervised.Config()
    got = loop._batch_loss(logits, torch.stack([y.double(), w.double()], 1))
    ce = F.cross_entropy(logits, y, reduction="none")
    assert float(got) == pytest.approx(float((w * ce).sum() / 4), rel=1e-6)


def test_adaboost_alphas_follow_samme(recipe_file: Path, tmp_path: Path) -> None:
    result = adaboost(recipe_file, rounds=2, out=tmp_path / "boost", seed=0,
                      fixed=["train.steps=4"], log=lambda m: None)
    assert len(result["alphas"]) >= 1
    for err, alpha in zip(result["train_errors"], result["alphas"], strict=True):
        assert alpha == pytest.approx(math.log((1 - err) / err) + math.log(9))
    assert 0 <= result["ensemble"]["acc"] <= 1
    assert load(tmp_path / "boost" / "round-0" / "recipe.toml").train.loop == "weighted_supervised"


# -- stacking -------------------------------------------------------------------------------------------------

def test_logistic_regression_equals_scikit_learn() -> None:
    linear = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(0)
    z = torch.rand(120, 6, generator=gen, dtype=torch.float64)
    y = (z[:, 0] * 3 + torch.rand(120, generator=gen, dtype=torch.float64)).long().clamp(max=2)
    w, b = fit_logistic(z, y, 3, c=0.5)
    ref = linear.LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(z.numpy(), y.numpy())
    ours = meta_log_probs(z, w, b).exp().double().numpy()
    assert np.allclose(ours, ref.predict_proba(z.numpy()), atol=2e-4)


def test_stacking_meta_learner_sees_only_validation_data(tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1):
        raw = tomllib.loads(TINY)
        raw["seed"] = seed
        raw["data"]["val_fraction"] = 0.2
        train(from_dict(raw), out=tmp_path / f"s{seed}", progress=False, log=lambda m: None)
        runs.append(tmp_path / f"s{seed}")
    result = stacking(runs)
    val = [run_log_probabilities(r, "val") for r in runs]
    test = [run_log_probabilities(r, "test") for r in runs]
    assert result["meta_fit_on"] == "val" and result["meta_examples"] == len(val[0][1])
    # the meta-learner is exactly the one fitted on the validation probabilities and labels alone
    w, b = fit_logistic(torch.cat([v[0].exp() for v in val], 1), val[0][1], 10)
    pred = meta_log_probs(torch.cat([t[0].exp() for t in test], 1), w, b).argmax(-1)
    assert result["ensemble"]["acc"] == pytest.approx(float((pred == test[0][1]).float().mean()))
    with pytest.raises(ArchlabError):
        stacking(runs[:1])
