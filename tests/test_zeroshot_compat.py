"""Zero-shot learning beyond raw-pixel ESZSL: the learned bilinear compatibility (``compat_zsl``), the generalized
zero-shot scores (H, calibrated stacking, AUSUC), ESZSL over a grid with held-out seen classes, and the
``zeroshot`` loop on rendered seven-segment digits, whose descriptions determine the images."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import archlab
from archlab.data.registry import Dataset, Split
from archlab.errors import ArchlabError
from archlab.meta.gzsl import EszslPath, ausuc, choose_eszsl, gzsl_metrics, seen_unseen_curve
from archlab.meta.zeroshot import ESZSL, SEVEN_SEGMENT, seven_segment_attributes
from archlab.recipe import from_dict
from archlab.runner import train

SEEN, UNSEEN = list(range(7)), [7, 8, 9]


def zero_shot_scores(model, x, y, attributes, seen, unseen):
    """Independent reference of the generalized scores (written out, not through archlab.meta.gzsl): unseen
    accuracy among the unseen classes, generalized per-class accuracies with every class a candidate, and H."""

    def per_class(pred, truth, classes):
        return float(torch.stack([(pred[truth == c] == c).double().mean() for c in classes]).mean())

    candidates = torch.tensor(unseen)
    mask_u = torch.isin(y, candidates)
    pred_u = candidates[model.scores(x[mask_u], attributes[:, unseen]).argmax(1)]
    pred_all = model.scores(x, attributes).argmax(1)
    s, u = per_class(pred_all, y, seen), per_class(pred_all, y, unseen)
    return {"unseen_acc": per_class(pred_u, y[mask_u], unseen), "gzsl_seen": s, "gzsl_unseen": u,
            "gzsl_h": 2 * s * u / (s + u) if s + u else 0.0}


pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------ the compatibility model
def test_compatibility_scores_are_bilinear_and_predict_takes_the_best_candidate():
    model = archlab.create("compat_zsl", hidden=8).eval()
    x = torch.rand(5, 1, 28, 28)
    scores = model(x)
    assert scores.shape == (5, 10) and model.num_classes == 10
    theta = model.embed(x)
    assert theta.shape == (5, 8)
    S = seven_segment_attributes().float()
    torch.testing.assert_close(scores, theta @ model.W @ S)  # F(x, z) = theta(x)^T W s_z
    candidates = torch.tensor(UNSEEN)
    pred = model.predict(x, candidates)
    assert set(pred.tolist()) <= set(UNSEEN)
    assert torch.equal(pred, torch.tensor([UNSEEN[int(scores[i, 7:].argmax())] for i in range(5)]))
    # the training loss sees only the seen classes' compatibilities
    y = torch.tensor([0, 3, 6, 2, 5])
    loss, logits = model.seen_loss(x, y, torch.tensor(SEEN))
    assert logits.shape == (5, 7)
    torch.testing.assert_close(loss, F.cross_entropy(scores[:, :7], y))
    # an unseen class's score comes from its description alone: changing 8's segments changes only column 8
    model.class_attributes[:, 8] = -model.class_attributes[:, 8]
    changed = model(x)
    torch.testing.assert_close(changed[:, :8], scores[:, :8])
    torch.testing.assert_close(changed[:, 8], -scores[:, 8])


# ------------------------------------------------------------------------------- generalized scores
def _linear_features(n=700, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = seven_segment_attributes()
    W = torch.randn(d, 7, generator=g, dtype=torch.float64)
    y = torch.randint(10, (n,), generator=g)
    return (W @ S[:, y]).T + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64), y, S


def _random_scores(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(10, (n,), generator=g)
    scores = torch.randn(n, 10, generator=g, dtype=torch.float64) + 2.0 * F.one_hot(y, 10)
    return scores, y


def test_gzsl_metrics_match_the_eszsl_evaluation_and_the_harmonic_mean():
    x, y, S = _linear_features(seed=3)
    keep = y < 7
    model = ESZSL(gamma=0.5, lam=2.0).fit(x[keep], y[keep], S[:, :7])
    ref = zero_shot_scores(model, x, y, S, SEEN, UNSEEN)
    got = gzsl_metrics(model.scores(x, S), y, SEEN, UNSEEN)
    assert got == pytest.approx(ref)
    assert 0 < got["gzsl_h"] == pytest.approx(2 / (1 / got["gzsl_seen"] + 1 / got["gzsl_unseen"]))


def test_seen_unseen_curve_and_ausuc_equal_a_brute_force_sweep_of_calibrated_stacking():
    scores, y = _random_scores(200, seed=1)
    scores = (4 * scores).round() / 4  # multiples of 1/4: exact arithmetic, and ties between examples' gaps
    deltas, acc_s, acc_u = seen_unseen_curve(scores, y, SEEN, UNSEEN)
    assert bool((acc_s[1:] <= acc_s[:-1] + 1e-12).all()) and bool((acc_u[1:] >= acc_u[:-1] - 1e-12).all())
    finite = deltas[1:]
    probes = torch.cat([finite[:1] - 1, (finite[:-1] + finite[1:]) / 2, finite[-1:] + 1])
    for i, d in enumerate(probes.tolist()):
        m = gzsl_metrics(scores, y, SEEN, UNSEEN, delta=d)
        assert (m["gzsl_seen"], m["gzsl_unseen"]) == pytest.approx((float(acc_s[i]), float(acc_u[i])))
    # ends: every prediction seen (seen-only accuracy) / every prediction unseen (the conventional unseen_acc)
    assert float(acc_u[-1]) == pytest.approx(gzsl_metrics(scores, y, SEEN, UNSEEN)["unseen_acc"])
    # a perfect scorer has area 1; this one lies strictly between 0 and 1
    assert ausuc(10.0 * F.one_hot(y, 10).double(), y, SEEN, UNSEEN) == pytest.approx(1.0)
    assert 0.0 < ausuc(scores, y, SEEN, UNSEEN) < 1.0


# --------------------------------------------------------------------------------- ESZSL on features
def test_eszsl_path_equals_the_closed_form_on_given_features():
    x, y, S = _linear_features()
    keep = y < 7
    path = EszslPath(x[keep], y[keep], S[:, :7])
    for gamma, lam in [(1e-3, 1e-3), (0.5, 2.0), (100.0, 0.01)]:
        ref = ESZSL(gamma=gamma, lam=lam).fit(x[keep], y[keep], S[:, :7])
        torch.testing.assert_close(path.fit(gamma, lam).V, ref.V, rtol=1e-8, atol=1e-10)


def test_choose_eszsl_is_the_best_grid_point_on_held_out_seen_classes_and_transfers():
    x, y, S = _linear_features(900)
    train_rows, val_rows = torch.arange(900) < 600, torch.arange(900) >= 600
    seen_tr = train_rows & (y < 7)
    seen_val = val_rows & (y < 7)
    grid = [0.01, 1.0, 100.0]
    choice = choose_eszsl(x[seen_tr], y[seen_tr], x[seen_val], y[seen_val], S, SEEN, [5, 6], grid, grid)
    # brute force with the plain closed form: fit on classes 0-4, 5 and 6 play the unseen classes
    fit = seen_tr & (y < 5)
    best = max(((gzsl_metrics(ESZSL(g, lam).fit(x[fit], y[fit], S[:, :5]).scores(x[seen_val], S), y[seen_val],
                              [0, 1, 2, 3, 4], [5, 6]), g, lam) for g in grid for lam in grid),
               key=lambda t: (t[0]["gzsl_h"], t[0]["unseen_acc"]))
    assert (choice.gamma, choice.lam) == (best[1], best[2])
    assert choice.val["gzsl_h"] == pytest.approx(best[0]["gzsl_h"])
    assert choice.val["gzsl_h_cs"] >= choice.val["gzsl_h"] - 1e-12  # delta = 0 is on the stacking curve
    # refitted on all seen classes with the chosen pair, it recovers the unseen digits 7-9
    model = ESZSL(choice.gamma, choice.lam).fit(x[seen_tr], y[seen_tr], S[:, :7])
    test = val_rows
    assert gzsl_metrics(model.scores(x[test], S), y[test], SEEN, UNSEEN)["unseen_acc"] > 0.9


# --------------------------------------------------------------------- the loop on rendered segments
# (row slice, column slice) of segments a-g on a 16 x 16 display
_SEGMENTS = [(slice(2, 3), slice(4, 12)), (slice(2, 8), slice(11, 12)), (slice(8, 14), slice(11, 12)),
             (slice(13, 14), slice(4, 12)), (slice(8, 14), slice(4, 5)), (slice(2, 8), slice(4, 5)),
             (slice(7, 9), slice(4, 12))]


def _render(y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Seven-segment images of digits ``y`` (N, 1, 16, 16): lit segments of random brightness, a random shift of
    at most one pixel and Gaussian noise -- the class description determines the picture."""
    x = torch.zeros(len(y), 1, 16, 16)
    for i, digit in enumerate(y.tolist()):
        for k, (rows, cols) in enumerate(_SEGMENTS):
            if SEVEN_SEGMENT[digit, k]:
                x[i, 0, rows, cols] = 0.6 + 0.4 * float(torch.rand(1, generator=g))
        dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
        x[i] = torch.roll(x[i], (dy, dx), dims=(1, 2))
    return x + 0.3 * torch.randn(x.shape, generator=g)


def _segment_data() -> Dataset:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        y = torch.randint(10, (n,), generator=g)
        return Split(_render(y, g), y)

    return Dataset("segments", split(1400), split(400), split(600), 10, (1, 16, 16))


def _recipe(**loop):
    return {"name": "zsl_tiny", "seed": 0,
            "model": {"name": "compat_zsl", "hidden": 16, "image_size": 16},
            "data": {"name": "mnist", "batch_size": 64},
            "optim": {"name": "adam", "lr": 3e-3},
            "train": {"loop": "zeroshot", "steps": 120, "eval_every": 60, "log_every": 20},
            "loop": {"gammas": [0.01, 1.0, 100.0], "lambdas": [0.01, 1.0, 100.0], **loop}}


def test_zeroshot_loop_transfers_to_unseen_classes_when_descriptions_determine_the_input(tmp_path):
    summary = train(from_dict(_recipe()), out=tmp_path / "run", data=_segment_data(), progress=False,
                    log=lambda _m: None)
    m = summary["metrics"]
    chance = 1 / 3
    assert m["val_seen_acc"] > 0.9
    assert m["unseen_acc"] > chance + 0.3, m        # the learned compatibility
    assert m["eszsl_unseen_acc"] > chance + 0.3, m  # ESZSL on its features theta(x)
    assert m["pixels_unseen_acc"] > chance + 0.3, m  # pixels are linear in the segments here
    for key in ("gzsl_h", "eszsl_gzsl_h", "pixels_gzsl_h", "ausuc", "eszsl_ausuc", "eszsl_gzsl_h_cs"):
        assert 0.0 <= m[key] <= 1.0
    assert m["eszsl_gamma"] in (0.01, 1.0, 100.0)
    model = archlab.load(tmp_path / "run")
    assert model.registry_name == "compat_zsl"
    assert (tmp_path / "run" / "plots" / "zeroshot.png").is_file()
    confusion = json.loads((tmp_path / "run" / "plots" / "zeroshot.json").read_text())["confusion"]
    assert len(confusion) == 10 and all(sum(row) == pytest.approx(1.0) for row in confusion)


@pytest.mark.parametrize(("loop", "match"), [
    ({"unseen": [6, 7, 8, 9]}, "share classes"),
    ({"val_classes": [7]}, "proper subset"),
    ({"val_classes": SEEN}, "proper subset"),
    ({"gammas": [0.0]}, "positive"),
    ({"unseen": [7, 8, 10]}, "class 10"),
])
def test_bad_zero_shot_settings_are_one_line_errors(tmp_path, loop, match):
    with pytest.raises(ArchlabError, match=match) as err:
        train(from_dict(_recipe(**loop)), out=tmp_path / "run", data=_segment_data(), progress=False,
              log=lambda _m: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_model_without_a_compatibility_is_refused(tmp_path):
    raw = {**_recipe(), "model": {"name": "protonet", "hidden": 8, "image_size": 16}}
    with pytest.raises(ArchlabError, match="not a zero-shot model") as err:
        train(from_dict(raw), out=tmp_path / "run", data=_segment_data(), progress=False, log=lambda _m: None)
    assert "\n" not in str(err.value)


def test_the_recipe_validates_and_names_its_metrics():
    from archlab.recipe import load

    recipe = load("recipes/meta/zeroshot_mnist_compat.toml")
    assert recipe.train.loop == "zeroshot" and recipe.model_name == "compat_zsl"
    loop = archlab.engine.loop.LOOPS.get("zeroshot").obj
    assert {"unseen_acc", "gzsl_h", "eszsl_unseen_acc", "pixels_gzsl_h"} <= set(loop.metrics)
    assert math.isclose(recipe.data.val_fraction, 0.1)


def test_zeroshot_loop_resumes_exactly(assert_resume_exact, monkeypatch):
    from archlab.train.zeroshot import ZeroShot

    data = _segment_data()
    monkeypatch.setattr(ZeroShot, "load_data", classmethod(lambda cls, recipe: data))  # no MNIST needed
    raw = _recipe(eszsl_pixels=False)
    raw["model"]["hidden"] = 4
    raw["train"] = {"loop": "zeroshot", "steps": 6, "eval_every": 3, "log_every": 1, "checkpoint_every": 3}
    assert_resume_exact(raw)
