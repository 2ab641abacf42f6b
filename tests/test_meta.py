"""Meta-learning: Omniglot and Lake-runs readers, the episode sampler, the learners (MAML against
`higher`, FOMAML and Reptile properties, ProtoNet/Matching Nets equations) and the episodic loop."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import archlab
from archlab.data.episodes import EpisodeSampler, load_fewshot
from archlab.data.omniglot import read_runs
from archlab.data.registry import Split
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import evaluate, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
HAS_OMNIGLOT = (SHARED / "omniglot" / "images_background_small1.zip").is_file()


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def omniglot_data(monkeypatch):
    if not HAS_OMNIGLOT:
        pytest.skip("images_background_small1.zip not in ../shared/datasets/omniglot")
    monkeypatch.setenv("ARCHLAB_DATA", str(SHARED))


def _episode(ways=3, shots=2, queries=2, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(ways * shots, 1, size, size, generator=g, dtype=torch.float64)
    qx = torch.rand(ways * queries, 1, size, size, generator=g, dtype=torch.float64)
    return sx, torch.arange(ways).repeat_interleave(shots), qx, torch.arange(ways).repeat_interleave(queries)


# ------------------------------------------------------------------------------------------ data
def test_omniglot_small1_counts_splits_and_rotations(omniglot_data):
    d = load_fewshot("omniglot")
    # 136 characters x 20 drawings x 4 rotations; alphabets: train 24+22+40, val Greek 24, test Latin 26.
    assert (len(d.train), len(d.val), len(d.test)) == (86 * 80, 24 * 80, 26 * 80)
    assert (d.classes("train"), d.classes("val"), d.classes("test")) == (344, 96, 104)
    assert d.train.x.shape[1:] == (1, 28, 28) and d.input_shape == (1, 28, 28)
    assert 0.0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1.0
    assert float(d.train.x.mean()) < 0.3  # ink 1 on paper 0: mostly zeros
    # class 4c + r is class 4c rotated by r * 90 degrees, drawing by drawing
    c0 = d.test.x[d.test.y == 0]
    assert torch.equal(d.test.x[d.test.y == 1], torch.rot90(c0, 1, dims=(2, 3)))
    plain = load_fewshot("omniglot", {"rotations": False, "split": "characters"})
    assert len(plain.train) + len(plain.val) + len(plain.test) == 2720


def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (105, 105), color=value).save(buf, format="PNG")
    return buf.getvalue()


def test_lake_runs_reader_on_files_in_the_all_runs_format(tmp_path):
    # Two runs of 3 classes; each training image has its own grey level, each query copies one of them.
    path = tmp_path / "all_runs.zip"
    answers = {1: [2, 0, 1], 2: [1, 1, 0]}  # run -> true class index of item01..item03
    with zipfile.ZipFile(path, "w") as zf:
        for run, truth in answers.items():
            r = f"run{run:02d}"
            for k in range(3):
                zf.writestr(f"{r}/training/class{k + 1:02d}.png", _png(40 * k + 20 * run))
            lines = []
            for i, k in enumerate(truth):
                zf.writestr(f"{r}/test/item{i + 1:02d}.png", _png(40 * k + 20 * run))
                lines.append(f"{r}/test/item{i + 1:02d}.png {r}/training/class{k + 1:02d}.png")
            zf.writestr(f"{r}/class_labels.txt", "\n".join(reversed(lines)) + "\n")  # order must not matter
    runs = read_runs(path)
    assert len(runs) == 2
    for ep, truth in zip(runs, answers.values(), strict=True):
        assert ep.support_x.shape == (3, 1, 28, 28) and ep.query_x.shape == (3, 1, 28, 28)
        assert ep.support_y.tolist() == [0, 1, 2] and ep.query_y.tolist() == truth
        for q, k in zip(ep.query_x, truth, strict=True):  # the query is the picture of its labelled class
            assert torch.allclose(q, ep.support_x[k])
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("run01/class_labels.txt", "run01/test/item01.png run01/training/class01.png\n")
    with pytest.raises(ArchlabError, match="not in the zip"):
        read_runs(bad)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ArchlabError, match="not a readable zip"):
        read_runs(tmp_path / "junk.zip")


def test_episode_sampler_shapes_labels_seed_and_resume():
    y = torch.arange(10).repeat_interleave(6)
    x = y.float()[:, None] * 100 + torch.arange(60).float()[:, None] % 6  # class and member in the value
    split = Split(x, y)
    a = EpisodeSampler(split, ways=4, shots=2, queries=3, seed=7)
    ep = a.sample()
    assert ep.support_x.shape == (8, 1) and ep.query_x.shape == (12, 1)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ep.query_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    cls_s, cls_q = (ep.support_x[:, 0] // 100).long(), (ep.query_x[:, 0] // 100).long()
    assert len(set(cls_s.tolist())) == 4
    for k in range(4):  # one original class per label, support and queries distinct examples
        orig = cls_s[ep.support_y == k].unique()
        assert len(orig) == 1 and (cls_q[ep.query_y == k] == orig).all()
        assert not set(ep.support_x[ep.support_y == k, 0].tolist()) & set(ep.query_x[ep.query_y == k, 0].tolist())
    state = a.state_dict()
    nxt = a.sample()
    b = EpisodeSampler(split, ways=4, shots=2, queries=3, seed=7)
    b.load_state_dict(state)
    assert torch.equal(b.sample().support_x, nxt.support_x)
    assert not torch.equal(EpisodeSampler(split, 4, 2, 3, seed=8).sample().support_x, ep.support_x)
    with pytest.raises(ArchlabError, match="11-way episodes need 11 classes"):
        EpisodeSampler(split, ways=11, shots=1, queries=1, seed=0)
    with pytest.raises(ArchlabError, match="has only 6"):
        EpisodeSampler(split, ways=2, shots=4, queries=3, seed=0)


# -------------------------------------------------------------------------------------- learners
def _maml(first_order=False, steps=2):
    torch.manual_seed(0)
    return archlab.create("maml", hidden=4, image_size=16, ways=3, inner_lr=0.3, inner_steps=steps,
                          first_order=first_order).double()


def test_maml_meta_gradient_equals_higher():
    higher = pytest.importorskip("higher")
    sx, sy, qx, qy = _episode()
    model = _maml()
    loss, _ = model.meta_loss(sx, sy, qx, qy)
    ours = torch.autograd.grad(loss, list(model.parameters()))
    # The same two inner SGD steps through `higher`'s differentiable optimizer.
    inner = torch.optim.SGD(model.net.parameters(), lr=model.config.inner_lr)
    with higher.innerloop_ctx(model.net, inner, copy_initial_weights=False) as (fnet, diffopt):
        for _ in range(model.config.inner_steps):
            diffopt.step(F.cross_entropy(fnet(sx), sy))
        peer = torch.autograd.grad(F.cross_entropy(fnet(qx), qy), list(model.net.parameters()))
    for a, b in zip(ours, peer, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert sum(float(g.abs().sum()) for g in ours) > 0


def test_fomaml_is_maml_without_the_second_order_term():
    sx, sy, qx, qy = _episode()
    full, first = _maml(False, 1), _maml(True, 1)
    g_first = torch.autograd.grad(first.meta_loss(sx, sy, qx, qy)[0], list(first.parameters()))
    # First order: the query-loss gradient at theta' = theta - alpha grad L_S(theta), taken w.r.t. theta'.
    adapted = {k: v.detach().requires_grad_() for k, v in full.adapt(sx, sy, 1, create_graph=False).items()}
    q_loss = F.cross_entropy(torch.func.functional_call(full.net, adapted, (qx,)), qy)
    expected = torch.autograd.grad(q_loss, list(adapted.values()))
    for a, b in zip(g_first, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # ... which differs from the full meta-gradient by the Hessian term only: not equal in general.
    g_full = torch.autograd.grad(full.meta_loss(sx, sy, qx, qy)[0], list(full.parameters()))
    assert max(float((a - b).abs().max()) for a, b in zip(g_full, g_first, strict=True)) > 1e-6


def test_reptile_with_one_inner_step_is_a_scaled_sgd_step():
    sx, sy, qx, qy = _episode()
    torch.manual_seed(1)
    model = archlab.create("reptile", hidden=4, image_size=16, ways=3, inner_lr=0.1, inner_steps=1,
                           inner_batch=0).double()
    theta = [p.detach().clone() for p in model.parameters()]
    surrogate, _ = model.meta_loss(sx, sy, qx, qy)
    grads = torch.autograd.grad(surrogate, list(model.parameters()))
    task = torch.autograd.grad(F.cross_entropy(model(sx), sy), list(model.parameters()))
    for g, t in zip(grads, task, strict=True):  # theta - theta' = alpha * grad L_task(theta)
        torch.testing.assert_close(g, 0.1 * t, rtol=1e-9, atol=1e-12)
    # One outer SGD step of size eps: theta <- theta - eps * alpha * grad L_task = SGD with lr eps * alpha.
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g
    opt.step()
    for p, t0, t in zip(model.parameters(), theta, task, strict=True):
        torch.testing.assert_close(p.detach(), t0 - 0.5 * 0.1 * t)


def test_protonet_logits_are_negative_squared_distances_to_class_means():
    sx, sy, qx, qy = _episode(ways=3, shots=4, queries=2)
    model = archlab.create("protonet", hidden=8).double().eval()
    logits = model.predict(sx, sy, qx)
    z = model(torch.cat([sx, qx]))
    zs, zq = z[: len(sx)], z[len(sx):]
    centres = torch.stack([zs[sy == k].mean(0) for k in range(3)])
    expected = -((zq[:, None, :] - centres[None]) ** 2).sum(-1)
    torch.testing.assert_close(logits, expected)
    loss, _ = model.meta_loss(sx, sy, qx, qy)
    torch.testing.assert_close(loss, F.cross_entropy(expected, qy))


def test_matching_net_probabilities_are_attention_over_support_labels():
    sx, sy, qx, _ = _episode(ways=3, shots=2, queries=2)
    model = archlab.create("matching_net", hidden=8).double().eval()
    probs = model.predict(sx, sy, qx).exp()
    torch.testing.assert_close(probs.sum(1), torch.ones(len(qx), dtype=torch.float64))
    z = model(torch.cat([sx, qx]))
    cos = F.normalize(z[len(sx):], dim=1) @ F.normalize(z[: len(sx)], dim=1).T
    expected = torch.stack([torch.softmax(cos, 1)[:, sy == k].sum(1) for k in range(3)], dim=1)
    torch.testing.assert_close(probs, expected)


def test_matching_net_scale_sharpens_the_attention():
    sx, sy, qx, _ = _episode(ways=3, shots=2, queries=2)
    torch.manual_seed(0)
    plain = archlab.create("matching_net", hidden=8).double().eval()
    sharp = archlab.create("matching_net", hidden=8, scale=10.0).double().eval()
    sharp.load_state_dict(plain.state_dict())
    z = plain(torch.cat([sx, qx]))
    cos = F.normalize(z[len(sx):], dim=1) @ F.normalize(z[: len(sx)], dim=1).T
    expected = torch.stack([torch.softmax(10.0 * cos, 1)[:, sy == k].sum(1) for k in range(3)], dim=1)
    torch.testing.assert_close(sharp.predict(sx, sy, qx).exp(), expected)
    # one shot per class: the class of the most similar support example gains probability as the scale grows
    sx, sy, qx, _ = _episode(ways=3, shots=1, queries=2)
    z = plain(torch.cat([sx, qx]))
    best = sy[(F.normalize(z[len(sx):], dim=1) @ F.normalize(z[: len(sx)], dim=1).T).argmax(1)]
    assert (sharp.predict(sx, sy, qx).exp().gather(1, best[:, None]) >
            plain.predict(sx, sy, qx).exp().gather(1, best[:, None])).all()
    with pytest.raises(ArchlabError, match="scale must be in"):
        archlab.create("matching_net", scale=0.0)


# ------------------------------------------------------------------------------------------ loop
def _recipe(model="protonet", **loop):
    return {"name": "meta_tiny", "seed": 0, "model": {"name": model, "hidden": 8},
            "data": {"name": "omniglot"}, "optim": {"name": "adam", "lr": 1e-3},
            "train": {"loop": "episodic", "steps": 6, "eval_every": 3, "log_every": 1, "checkpoint_every": 3},
            "loop": {"ways": 5, "shots": 1, "queries": 2, "meta_batch": 2, "val_episodes": 4, "test_episodes": 6,
                     **loop}}


def test_episodic_loop_trains_evaluates_and_writes_an_episode_picture(omniglot_data, tmp_path):
    full = train(from_dict(_recipe()), out=tmp_path / "run", progress=False, log=lambda _m: None)
    assert 0.0 <= full["metrics"]["test_acc"] <= 1.0 and full["metrics"]["test_acc_ci95"] >= 0.0
    assert (tmp_path / "run" / "plots" / "episode.png").is_file()
    shown = json.loads((tmp_path / "run" / "plots" / "episode.json").read_text())
    assert len(shown["predicted"]) == len(shown["query_y"]) == 10
    assert evaluate(tmp_path / "run", device="cpu")["test_acc"] == pytest.approx(full["metrics"]["test_acc"])


def test_episodic_loop_resumes_exactly(omniglot_data, assert_resume_exact):
    assert_resume_exact(_recipe("protonet", val_episodes=2, test_episodes=2))


def test_omniglot_runs_evaluation_of_a_trained_run(omniglot_data, tmp_path, monkeypatch):
    train(from_dict(_recipe()), out=tmp_path / "run", progress=False, log=lambda _m: None)
    runs = [_episode(ways=20, shots=1, queries=1, seed=s, size=28) for s in range(2)]
    from archlab.data import omniglot
    from archlab.data.episodes import Episode

    fake = [Episode(sx.float(), sy, qx.float(), qy) for sx, sy, qx, qy in runs]
    monkeypatch.setattr(omniglot, "read_runs", lambda path, size: fake)
    monkeypatch.setattr(omniglot, "ensure_files", lambda *a, **k: [tmp_path / "all_runs.zip"])
    scores = evaluate(tmp_path / "run", device="cpu", overrides=["data.name=omniglot_runs"])
    assert set(scores) == {"oneshot_acc"} and 0.0 <= scores["oneshot_acc"] <= 1.0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["evaluations"][-1] == {"overrides": ["data.name=omniglot_runs"], "metrics": scores}


def test_episodic_loop_rejects_what_does_not_fit(omniglot_data, tmp_path):
    quiet = {"progress": False, "log": lambda _m: None}
    with pytest.raises(ArchlabError, match="model.ways"):
        raw = {**_recipe("maml"), "model": {"name": "maml", "hidden": 8, "ways": 3}}
        train(from_dict(raw), out=tmp_path / "a", **quiet)
    with pytest.raises(ArchlabError, match="classes"):
        train(from_dict(_recipe(ways=400)), out=tmp_path / "b", **quiet)
    with pytest.raises(ArchlabError, match="kind"):
        from_dict({**_recipe(), "data": {"name": "digits"}})


# ------------------------------------------------------------------------------------- zero-shot
def test_eszsl_closed_form_is_the_minimiser_and_classifies_unseen_classes():
    from archlab.meta.gzsl import gzsl_metrics
    from archlab.meta.zeroshot import ESZSL, seven_segment_attributes

    S = seven_segment_attributes()
    assert S.shape == (7, 10) and int((S[:, 8] > 0).sum()) == 7 and int((S[:, 1] > 0).sum()) == 2
    g = torch.Generator().manual_seed(0)
    # Features that a linear map of the description explains (plus noise): ESZSL must recover 7-9.
    W = torch.randn(12, 7, generator=g, dtype=torch.float64)
    y = torch.randint(10, (600,), generator=g)
    x = (W @ S[:, y]).T + 0.3 * torch.randn(600, 12, generator=g, dtype=torch.float64)
    seen, unseen = list(range(7)), [7, 8, 9]
    train_rows = torch.isin(y, torch.tensor(seen))
    model = ESZSL(gamma=0.5, lam=2.0).fit(x[train_rows], y[train_rows], S)
    V = model.V.clone().requires_grad_()
    model.V = V
    (grad,) = torch.autograd.grad(model.objective(x[train_rows], y[train_rows], S), V)
    assert grad.abs().max() < 1e-8 * (1 + float(V.detach().abs().max()))  # closed form = stationary point
    scores = gzsl_metrics(model.scores(x, S), y, seen, unseen)
    assert scores["unseen_acc"] > 0.9 and 0.0 <= scores["gzsl_h"] <= 1.0
