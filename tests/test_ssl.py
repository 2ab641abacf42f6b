"""Self-supervised family: losses against direct per-pair formulas, momentum updates and MoCo's queue,
seeded augmentations, the probe protocol, and the ssl loop end to end (bit-exact resume, archlab probe)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import archlab
from archlab.cli import main
from archlab.data.augment import make_views
from archlab.data.transforms import shift_along
from archlab.errors import ArchlabError
from archlab.models.ssl.byol import ema_rate
from archlab.models.ssl.losses import byol_loss, clip_loss, info_nce, momentum_update, nt_xent
from archlab.recipe import from_dict
from archlab.runner import train
from archlab.train.probe import knn_predict, linear_probe

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------ losses


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_nt_xent_equals_the_per_pair_formula():
    torch.manual_seed(0)
    n, tau = 5, 0.3
    z1, z2 = torch.randn(n, 7, dtype=torch.float64), torch.randn(n, 7, dtype=torch.float64)
    z = torch.cat([z1, z2])

    def term(i: int, j: int) -> float:  # SimCLR Eq. 1, one term at a time
        num = math.exp(_cos(z[i], z[j]) / tau)
        den = sum(math.exp(_cos(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        return -math.log(num / den)

    brute = sum(term(k, k + n) + term(k + n, k) for k in range(n)) / (2 * n)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(brute, abs=1e-6)


def test_nt_xent_properties():
    torch.manual_seed(1)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    perm = torch.randperm(6)
    # Reordering the examples (both views alike) or swapping the views does not change the loss.
    assert nt_xent(z1[perm], z2[perm], 0.5).item() == pytest.approx(nt_xent(z1, z2, 0.5).item(), abs=1e-6)
    assert nt_xent(z2, z1, 0.5).item() == pytest.approx(nt_xent(z1, z2, 0.5).item(), abs=1e-6)
    # All views identical: every candidate is equally likely -> log(2N - 1).
    same = torch.ones(6, 4)
    assert nt_xent(same, same, 0.5).item() == pytest.approx(math.log(11), abs=1e-6)
    # Views that agree, examples orthogonal to each other: the loss goes to 0 as tau -> 0.
    eye = torch.eye(4)
    assert nt_xent(eye, eye, 0.01).item() < 1e-6


def test_info_nce_equals_the_direct_formula():
    torch.manual_seed(2)
    q, k, neg = (torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64),
                 torch.randn(9, 5, dtype=torch.float64))
    tau = 0.2
    brute = 0.0
    for i in range(4):
        pos = math.exp(_cos(q[i], k[i]) / tau)
        others = sum(math.exp(_cos(q[i], neg[j]) / tau) for j in range(9))
        brute += -math.log(pos / (pos + others)) / 4
    assert info_nce(q, k, neg, tau).item() == pytest.approx(brute, abs=1e-6)


def test_clip_loss_is_symmetric_and_a_mean_of_two_info_nce():
    torch.manual_seed(3)
    img, txt = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    assert clip_loss(img, txt, 10.0).item() == pytest.approx(clip_loss(txt, img, 10.0).item(), abs=1e-12)
    # Row i of the logits is InfoNCE with text i as the positive and the other texts as negatives.
    rows = sum(info_nce(img[i:i + 1], txt[i:i + 1], torch.cat([txt[:i], txt[i + 1:]]), 0.1)
               for i in range(6)) / 6
    cols = sum(info_nce(txt[i:i + 1], img[i:i + 1], torch.cat([img[:i], img[i + 1:]]), 0.1)
               for i in range(6)) / 6
    assert clip_loss(img, txt, 10.0).item() == pytest.approx(((rows + cols) / 2).item(), abs=1e-10)


def test_byol_loss_is_two_minus_two_cosine_without_target_gradient():
    p = torch.randn(3, 4, requires_grad=True)
    z = torch.randn(3, 4, requires_grad=True)
    loss = byol_loss(p, z)
    expected = sum(2 - 2 * _cos(p[i].detach(), z[i].detach()) for i in range(3)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert p.grad is not None and z.grad is None


def test_momentum_update_is_exact():
    torch.manual_seed(4)
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    momentum_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=0, rtol=1e-6)
    momentum_update(target, online, 0.0)  # m = 0: a copy
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters(), strict=True))


def test_byol_tau_schedule_runs_from_base_to_one():
    assert ema_rate(0.99, 0.0) == pytest.approx(0.99)
    assert ema_rate(0.99, 1.0) == pytest.approx(1.0)
    assert ema_rate(0.99, 0.5) == pytest.approx(0.995)


# --------------------------------------------------------------------------- methods (tiny models)


def _tiny(name: str, **kw):
    torch.manual_seed(0)
    return archlab.create(name, encoder_config={"length": 16, "channels": [4, 4, 4]}, **kw)


def test_moco_queue_is_fifo_and_keys_carry_no_gradient():
    model = _tiny("moco", queue_size=5, proj_dim=3).train()
    model.enqueue(torch.arange(9.0).view(3, 3))
    assert int(model.queue_ptr) == 3 and torch.equal(model.queue[:3], torch.arange(9.0).view(3, 3))
    model.enqueue(torch.full((4, 3), -1.0))  # wraps: slots 3, 4, 0, 1; slot 2 keeps the oldest survivor
    assert int(model.queue_ptr) == 2
    assert torch.equal(model.queue[2], torch.tensor([6.0, 7.0, 8.0]))
    assert (model.queue[[0, 1, 3, 4]] == -1).all()
    # One loss evaluation: the keys are enqueued, and only the query branch gets gradients.
    x = torch.randn(4, 16)
    loss = model.ssl_loss(x, x + 0.1)
    assert int(model.queue_ptr) == (2 + 4) % 5
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.key_encoder.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    keys = model.keys(x)
    assert not keys.requires_grad and torch.allclose(keys.norm(dim=1), torch.ones(4))


def test_moco_and_byol_after_step_apply_the_momentum_update():
    for name, online, target in (("moco", "encoder", "key_encoder"), ("byol", "encoder", "target_encoder")):
        model = _tiny(name, momentum=0.9, **({"cosine_momentum": False} if name == "byol" else {}))
        with torch.no_grad():
            for p in getattr(model, online).parameters():
                p.add_(1.0)
        before = [p.clone() for p in getattr(model, target).parameters()]
        model.after_step(0.5)
        for t, b, o in zip(getattr(model, target).parameters(), before, getattr(model, online).parameters(),
                           strict=True):
            assert torch.allclose(t, 0.9 * b + 0.1 * o, rtol=1e-6, atol=1e-7), name


def test_trained_modules_exclude_the_momentum_copies():
    for name in ("simclr", "moco", "byol"):
        model = _tiny(name)
        trained = {id(p) for p in model.trained_modules().parameters()}
        assert trained == {id(p) for p in model.parameters() if p.requires_grad}, name


def test_encoder_must_be_a_classic_or_transformer_model():
    with pytest.raises(ArchlabError, match="encoder must be one of"):
        archlab.create("simclr", encoder="byol")
    with pytest.raises(ArchlabError, match="classifier is removed"):
        archlab.create("simclr", encoder_config={"num_classes": 3})


# ------------------------------------------------------------------------------------ augmentations


SIGNAL_SPECS = ["shift:3", "scale:0.2", "stretch:0.2", "noise:0.1", "prob:0.5:shift:2"]
IMAGE_SPECS = ["resized_crop:0.3", "translate:2", "rotate:20", "elastic:2:1.5", "noise:0.1", "prob:0.5:rotate:10"]


@pytest.mark.parametrize("spec", SIGNAL_SPECS + IMAGE_SPECS)
def test_augmentations_are_deterministic_under_a_seed(spec):
    x = torch.randn(6, 1, 12, 12) if spec in IMAGE_SPECS and spec != "noise:0.1" else torch.randn(6, 40)
    views = make_views([spec])
    a = views(x, torch.Generator().manual_seed(0))
    b = views(x, torch.Generator().manual_seed(0))
    c = views(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_augmentations_do_what_they_say():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(4, 1, 10, 10)
    # Zero-strength transforms are the identity (grid_sample at pixel centres is exact bilinear).
    for spec in ("rotate:0", "translate:0", "noise:0", "scale:0", "stretch:0", "elastic:0:1"):
        x = img if spec.split(":")[0] in ("rotate", "translate", "elastic") else torch.randn(4, 40)
        assert torch.allclose(make_views([spec])(x, g), x, atol=1e-5), spec
    # shift moves by whole steps with zero fill: the same as the supervised shift with the same offsets.
    sig = torch.randn(8, 40)
    out = make_views(["shift:4"])(sig, torch.Generator().manual_seed(5))
    offsets = torch.randint(-4, 5, (8,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, shift_along(sig, 1, offsets))
    # scale multiplies each example by one factor in [1 - s, 1 + s].
    ratio = make_views(["scale:0.3"])(sig, g) / sig
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4)
    assert ((ratio[:, 0] >= 0.7 - 1e-6) & (ratio[:, 0] <= 1.3 + 1e-6)).all()
    # rotating by 180 degrees (the range's end) maps a centred image onto itself turned around.
    turned = make_views(["rotate:180"])
    ones = torch.ones(64, 1, 9, 9)
    assert torch.isfinite(turned(ones, g)).all()
    # a resized crop of a constant image is the same constant (the window lies inside the image).
    assert torch.allclose(make_views(["resized_crop:0.2"])(ones, g), ones, atol=1e-5)
    # noise has the configured standard deviation.
    noisy = make_views(["noise:0.5"])(torch.zeros(200, 100), g)
    assert noisy.std().item() == pytest.approx(0.5, rel=0.03)


@pytest.mark.parametrize("spec,message", [("blur:3", "unknown augmentation"), ("shift:-1", "outside"),
                                          ("rotate:x", "bad number"), ("prob:2:shift:1", "outside"),
                                          ("resized_crop:0", "outside")])
def test_bad_augmentation_specs_are_one_line_errors(spec, message):
    with pytest.raises(ArchlabError, match=message):
        make_views([spec])


def test_image_augmentation_on_signals_is_an_error():
    with pytest.raises(ArchlabError, match="expects images"):
        make_views(["rotate:10"])(torch.randn(2, 40), torch.Generator())


# ------------------------------------------------------------------------------------------- probes


def test_knn_matches_a_brute_force_vote():
    torch.manual_seed(6)
    bank, bank_y, query = torch.randn(30, 5), torch.randint(0, 3, (30,)), torch.randn(7, 5)
    k, tau = 4, 0.2
    expected = []
    for q in query:
        sims = torch.stack([torch.tensor(_cos(q, b)) for b in bank])
        votes = torch.zeros(3)
        for j in sims.topk(k).indices:
            votes[bank_y[j]] += math.exp(sims[j] / tau)
        expected.append(int(votes.argmax()))
    assert knn_predict(bank, bank_y, query, k, tau, 3, chunk=3).tolist() == expected


def test_linear_probe_separates_separable_classes_and_picks_on_val():
    torch.manual_seed(7)
    centres = torch.randn(3, 6) * 5
    def draw(n):
        y = torch.randint(0, 3, (n,))
        return centres[y] + torch.randn(n, 6) * 0.1, y
    out = linear_probe(draw(90), draw(30), draw(30), 3)
    assert out["val_acc"] == 1.0 and out["test_acc"] == 1.0
    assert out["weight_decay"] == 0.1  # ties go to the strongest regularisation


# --------------------------------------------------------------------------------------- the loop


def _recipe(method: str, **model) -> dict:
    return {
        "name": f"{method}_tiny", "seed": 0,
        "model": {"name": method, "encoder": "cnn1d",
                  "encoder_config": {"length": 40, "channels": [8, 8, 8]}, **model},
        "data": {"name": "mnist1d", "batch_size": 32, "val_fraction": 0.2, "options": {"num_samples": 400}},
        "optim": {"name": "adam", "lr": 3e-3},
        "train": {"loop": "ssl", "steps": 8, "eval_every": 4, "log_every": 2, "checkpoint_every": 4},
        "loop": {"augment": ["shift:4", "noise:0.05"], "knn_k": 5},
    }


@pytest.mark.parametrize("method,extra", [("moco", {"queue_size": 64}), ("byol", {}), ("simclr", {})])
def test_ssl_loop_resumes_bit_exactly(method, extra, assert_resume_exact):
    assert_resume_exact(_recipe(method, **extra))


def test_ssl_loop_end_to_end_and_probe_command(tmp_path, capsys):
    raw = _recipe("simclr")
    summary = train(from_dict(copy.deepcopy(raw)), out=tmp_path / "run", progress=False, log=lambda _m: None)
    metrics = summary["metrics"]
    for key in ("val_knn_acc", "test_knn_acc", "val_linear_acc", "test_linear_acc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert (tmp_path / "run" / "plots" / "embedding.png").is_file()
    model = archlab.load(tmp_path / "run")
    assert type(model).registry_name == "simclr"
    # archlab eval recomputes the same final numbers from the saved model.
    again = archlab.runner.evaluate(tmp_path / "run", device="cpu")
    assert again["test_linear_acc"] == pytest.approx(metrics["test_linear_acc"])
    # archlab probe: the same protocol from the command line, on the trained and on a random encoder.
    assert main(["probe", str(tmp_path / "run"), "--method", "knn"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_knn_acc"] == pytest.approx(metrics["test_knn_acc"], abs=1e-4) and out["knn_k"] == 5
    assert main(["probe", str(tmp_path / "run"), "--random-init", "--method", "linear"]) == 0
    assert (tmp_path / "run" / "probe-random.json").is_file()
    assert (tmp_path / "run" / "plots" / "embedding-probe-random.png").is_file()
    assert main(["probe", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("change,message", [
    ({"loop": {"augment": ["shift:40"]}}, "shifts must be smaller"),
    ({"loop": {"augment": ["rotate:10"]}}, "expects images"),
    ({"loop": {"augment": ["blur:1"]}}, "unknown augmentation"),
    ({"model": {"name": "simclr", "encoder": "cnn1d", "encoder_config": {"length": 20}}}, "does not fit"),
])
def test_bad_ssl_recipes_fail_before_training(change, message, tmp_path):
    raw = {**_recipe("simclr"), **change}
    with pytest.raises(ArchlabError, match=message):
        train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)


def test_features_are_the_encoder_output():
    model = _tiny("byol").eval()
    x = torch.randn(3, 16)
    assert torch.equal(model.features(x), model.encoder(x))
    assert torch.equal(model(x), model.predictor(model.projector(model.encoder(x))))
    assert F.cosine_similarity(model.projection(x), model.projector(model.encoder(x))).min() > 0.999


# ---------------------------------------------------------------------------------------------- MAE

TINY_VIT = {"image_size": 8, "patch_size": 2, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 16}


def test_mae_masks_exactly_the_ratio_and_restore_inverts_the_shuffle():
    from archlab.models.ssl.mae import random_masking

    keep, restore, mask = random_masking(5, 16, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (5, 4) and (mask.sum(1) == 12).all()
    assert all(set(keep[i].tolist()) == set(torch.nonzero(mask[i] == 0).flatten().tolist()) for i in range(5))
    shuffle = restore.argsort(1)
    assert torch.equal(shuffle.gather(1, restore), torch.arange(16).expand(5, 16))


def test_mae_patchify_round_trip():
    from archlab.models.ssl.mae import patchify, unpatchify

    x = torch.randn(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48) and torch.equal(p[0, 1], x[0, :, :4, 4:].permute(1, 2, 0).flatten())
    assert torch.equal(unpatchify(p, 4, 3), x)


def test_mae_encoder_sees_only_visible_patches_and_the_loss_only_hidden_ones():
    from archlab.models.ssl.mae import patchify, random_masking, unpatchify

    torch.manual_seed(0)
    model = archlab.create("mae", decoder_dim=16, mask_ratio=0.5, encoder_config=TINY_VIT)
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    keep, restore, mask = random_masking(3, 16, 0.5, torch.Generator().manual_seed(1))
    # Changing the pixels of hidden patches changes nothing the model computes.
    hidden = mask.bool().unsqueeze(-1).expand(-1, -1, 4)
    x2 = unpatchify(torch.where(hidden, torch.randn(3, 16, 4), patchify(x, 2)), 2, 1)
    assert not torch.equal(x, x2)
    with torch.no_grad():
        assert torch.allclose(model.reconstruct(x, keep, restore), model.reconstruct(x2, keep, restore), atol=1e-6)
    # The loss has no gradient with respect to the predictions of visible patches.
    pred = model.reconstruct(x, keep, restore).detach().requires_grad_(True)
    model.masked_loss(pred, model.targets(x), mask).backward()
    assert (pred.grad[mask == 0] == 0).all() and (pred.grad[mask == 1] != 0).any()


def test_mae_loop_resumes_bit_exactly(assert_resume_exact):
    assert_resume_exact({
        "name": "mae_tiny", "seed": 0,
        "model": {"name": "mae", "decoder_dim": 16, "decoder_depth": 1,
                  "encoder_config": TINY_VIT},
        "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"loop": "ssl", "steps": 6, "eval_every": 3, "checkpoint_every": 3},
        "loop": {"augment": ["translate:1"], "knn_k": 5, "linear_probe": False},
    })


def test_method_comparison_plot(tmp_path):
    from archlab.train.probe import plot_methods

    rows = [{"label": "simclr", "wall_s": 10.0, "linear": 0.6, "knn": 0.5},
            {"label": "random init", "wall_s": 0.0, "linear": 0.4, "knn": 0.5}]
    assert plot_methods(rows, tmp_path / "m.png", "t").stat().st_size > 1000


# --------------------------------------------------------------------------------------------- SwAV


def test_sinkhorn_codes_have_the_required_marginals():
    from archlab.models.ssl.swav import sinkhorn

    torch.manual_seed(8)
    scores = torch.randn(12, 4, dtype=torch.float64)
    q = sinkhorn(scores, 0.5, 3)
    assert torch.allclose(q.sum(1), torch.ones(12, dtype=torch.float64), atol=1e-4)   # one unit per example
    q = sinkhorn(scores, 0.5, 200)
    assert torch.allclose(q.sum(0), torch.full((4,), 3.0, dtype=torch.float64), atol=1e-4)  # B / K per prototype
    assert torch.allclose(q.sum(1), torch.ones(12, dtype=torch.float64), atol=1e-4)
    assert (q >= 0).all()


def test_swav_loss_is_the_swapped_cross_entropy_and_prototypes_stay_unit_norm():
    from archlab.models.ssl.swav import sinkhorn

    model = _tiny("swav", num_prototypes=5, proj_batch_norm=False).train()
    x1, x2 = torch.randn(6, 16), torch.randn(6, 16)
    loss = model.ssl_loss(x1, x2)
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(5), atol=1e-6)
    with torch.no_grad():
        s1, s2 = model(x1), model(x2)
    cfg = model.config
    q1, q2 = sinkhorn(s1, cfg.epsilon, cfg.sinkhorn_iterations), sinkhorn(s2, cfg.epsilon, cfg.sinkhorn_iterations)
    expected = -0.5 * sum(float(q2[n] @ F.log_softmax(s1[n] / cfg.temperature, 0)
                                + q1[n] @ F.log_softmax(s2[n] / cfg.temperature, 0)) for n in range(6)) / 6
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_swav_loop_resumes_bit_exactly(assert_resume_exact):
    assert_resume_exact(_recipe("swav", num_prototypes=20))
