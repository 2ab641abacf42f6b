"""Knowledge distillation: the loss against a hand computation, the T^2 gradient scaling, FitNets hints,
and the ``distill`` loop (one run: teacher, hint stage, student; resumable at every phase)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import archlab
from archlab.compress.distill import HintRegressor, capture, distillation_loss, hint_loss, soft_kl
from archlab.engine.metrics import read_metrics
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import train

pytestmark = pytest.mark.usefixtures("single_thread")


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_loss_equals_the_hand_computed_formula():
    z = [[1.0, -0.5, 2.0], [0.3, 0.1, -1.2]]
    v = [[2.0, 0.0, 1.0], [-0.4, 1.5, 0.2]]
    y = [2, 0]
    t, alpha = 3.0, 0.7
    total = 0.0
    for zi, vi, yi in zip(z, v, y, strict=True):
        p, q = _softmax(zi, t), _softmax(vi, t)
        kl = sum(qj * (math.log(qj) - math.log(pj)) for pj, qj in zip(p, q, strict=True))
        ce = -math.log(_softmax(zi, 1.0)[yi])
        total += alpha * t * t * kl + (1 - alpha) * ce
    expected = total / len(z)
    got = distillation_loss(torch.tensor(z), torch.tensor(v), torch.tensor(y), t, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the end points: alpha = 0 is plain cross-entropy, alpha = 1 ignores the labels
    zt, vt = torch.tensor(z), torch.tensor(v)
    assert torch.equal(distillation_loss(zt, vt, torch.tensor(y), t, 0.0), F.cross_entropy(zt, torch.tensor(y)))
    assert torch.equal(distillation_loss(zt, vt, torch.tensor([0, 1]), t, 1.0), soft_kl(zt, vt, t))


def test_soft_gradient_is_t_times_p_minus_q_and_t2_keeps_its_scale():
    g = torch.Generator().manual_seed(0)
    n, batch = 10, 8
    z0 = torch.randn(batch, n, generator=g, dtype=torch.float64) * 3  # float64: p - q is tiny at high T
    v = torch.randn(batch, n, generator=g, dtype=torch.float64) * 3
    z0, v = z0 - z0.mean(1, keepdim=True), v - v.mean(1, keepdim=True)  # zero-mean logits (Hinton et al. eq. 4)

    def grad(t: float, scaled: bool = True) -> torch.Tensor:
        z = z0.clone().requires_grad_(True)
        loss = soft_kl(z, v, t) / (1.0 if scaled else t * t)
        loss.backward()
        return z.grad

    for t in (1.0, 4.0, 20.0):  # d(T^2 KL)/dz = T (p - q), per example, mean over the batch
        p, q = F.softmax(z0 / t, 1), F.softmax(v / t, 1)
        torch.testing.assert_close(grad(t), t * (p - q) / batch, rtol=1e-10, atol=1e-12)
    # High-temperature limit (Hinton et al. §2.1): T (p - q) -> (z - v) / N, whatever T is.
    limit = (z0 - v) / (n * batch)
    err = [(grad(t) - limit).abs().max().item() / limit.abs().max().item() for t in (100.0, 1000.0, 10000.0)]
    assert err[2] < 1e-3 and err[0] > err[1] > err[2]  # the error falls as 1 / T
    # Without the T^2 factor the soft gradient would shrink as 1 / T^2.
    ratio = grad(1000.0, scaled=False).norm() / grad(2000.0, scaled=False).norm()
    assert ratio.item() == pytest.approx(4.0, rel=1e-2)
    assert (grad(1000.0).norm() / grad(2000.0).norm()).item() == pytest.approx(1.0, rel=1e-2)


def test_teacher_gets_no_gradient():
    v = torch.randn(4, 5, requires_grad=True)
    z = torch.randn(4, 5, requires_grad=True)
    distillation_loss(z, v, torch.tensor([0, 1, 2, 3]), 2.0, 0.5).backward()
    assert v.grad is None and z.grad is not None


def test_hint_loss_and_regressors():
    hint, regressed = torch.randn(3, 4), torch.randn(3, 4)
    assert hint_loss(hint, regressed).item() == pytest.approx(0.5 * ((hint - regressed) ** 2).sum().item() / 3)
    lin = HintRegressor((6,), (4,))
    assert lin(torch.randn(3, 6)).shape == (3, 4)
    conv = HintRegressor((8, 10, 9), (5, 7, 7), "relu")  # kernel (10-7+1) x (9-7+1) = 4 x 3, no padding
    assert conv.map.kernel_size == (4, 3) and conv(torch.randn(2, 8, 10, 9)).shape == (2, 5, 7, 7)
    assert (conv(torch.randn(2, 8, 10, 9)) >= 0).all()
    with pytest.raises(ValueError, match="smaller than the hint"):
        HintRegressor((8, 5, 5), (5, 7, 7))
    with pytest.raises(ValueError, match="differ"):
        hint_loss(torch.randn(3, 4), torch.randn(3, 5))
    mlp = archlab.create("mlp", in_features=6, hidden=[5, 7])
    with capture(mlp, "layers.1") as out:
        mlp(torch.randn(2, 6))
    assert out["features"].shape == (2, 7)
    with pytest.raises(ValueError, match="no layer 'layers.9'"), capture(mlp, "layers.9"):
        pass


# ------------------------------------------------------------------------------------------- the loop
STUDENT = {"name": "mlp", "in_features": 64, "num_classes": 10, "hidden": [16]}
DISTILL = {
    "name": "distill_tiny", "seed": 0,
    "model": STUDENT,
    "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
    "optim": {"name": "adam", "lr": 1e-2},
    "train": {"loop": "distill", "epochs": 1, "log_every": 5, "eval_every": 10, "checkpoint_every": 15},
    "loop": {"teacher": {"name": "mlp", "in_features": 64, "num_classes": 10, "hidden": [32], "dropout": 0.2},
             "teacher_epochs": 1, "teacher_augment": ["shift:1"], "temperature": 4.0, "alpha": 0.8,
             "hint_layer": "layers.0", "guided_layer": "layers.0", "hint_epochs": 0.5,
             "regressor_activation": "relu"},
}


def _run(raw, out, resume=False):
    return train(from_dict(copy.deepcopy(raw)), out=out, resume=resume, progress=False, log=lambda _m: None)


@pytest.mark.parametrize("cut_at", [15, 40], ids=["in_teacher_phase", "in_student_phase"])
def test_distill_run_resumes_exactly(tmp_path, cut_at, assert_resume_exact):
    """Teacher (20 steps), hint stage (10), student (20): a run cut back to a checkpoint in the teacher
    phase or in the student phase (teacher logits cached) ends with the uninterrupted run's weights
    and metrics."""
    raw = copy.deepcopy(DISTILL)
    raw["train"]["checkpoint_every"] = cut_at
    summary = assert_resume_exact(raw)  # the uninterrupted run is in tmp_path / "full"
    full = tmp_path / "full"
    assert summary["steps"] == 20 + 10 + 20
    m = summary["metrics"]
    assert m["teacher_test_acc"] > 0.3 and m["test_acc"] > 0.3  # 3x chance after one epoch each
    assert m["test_errors"] == round((1 - m["test_acc"]) * 359)
    # phase 1 evaluations are the teacher's, named teacher_*; the student's come after it
    vals = [r for r in read_metrics(full / "metrics.jsonl") if r["split"] == "val"]
    assert "teacher_val_acc" in vals[0] and "val_acc" not in vals[0] and "val_acc" in vals[-1]
    # the saved teacher reproduces the teacher's score, and `archlab eval` the whole summary
    teacher = archlab.load(full / "teacher")
    assert teacher.config.hidden == [32]
    from archlab.runner import evaluate

    again = evaluate(full, device="cpu")
    for key in ("test_acc", "test_errors", "teacher_test_acc"):
        assert again[key] == m[key]


def test_alpha_zero_student_equals_the_supervised_run(tmp_path):
    """With alpha = 0 the student must be exactly the supervised loop's run of the same recipe: same
    initialization, batches and optimizer (the teacher phase draws from its own generators)."""
    raw = copy.deepcopy(DISTILL)
    raw["loop"] = {**{k: v for k, v in raw["loop"].items() if "hint" not in k and "guided" not in k
                      and k != "regressor_activation"}, "alpha": 0.0}
    _run(raw, tmp_path / "distill")
    sup = copy.deepcopy(DISTILL)
    sup["train"] = {**sup["train"], "loop": "supervised"}
    del sup["loop"]
    _run(sup, tmp_path / "supervised")
    a = load_file(str(tmp_path / "distill" / "model.safetensors"))
    b = load_file(str(tmp_path / "supervised" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_from_a_run_directory(tmp_path):
    teacher_recipe = {**copy.deepcopy(DISTILL), "model": DISTILL["loop"]["teacher"]}
    teacher_recipe["train"] = {**teacher_recipe["train"], "loop": "supervised"}
    del teacher_recipe["loop"]
    _run(teacher_recipe, tmp_path / "teacher")
    raw = copy.deepcopy(DISTILL)
    raw["loop"] = {"teacher_from": str(tmp_path / "teacher"), "temperature": 2.0}
    summary = _run(raw, tmp_path / "student")
    assert summary["steps"] == 20
    sup = archlab.runner.read_summary(tmp_path / "teacher")["metrics"]["test_acc"]
    assert summary["metrics"]["teacher_test_acc"] == sup


@pytest.mark.parametrize("loop, match", [
    ({"temperature": 2.0}, "either as a model table"),
    ({"teacher": {"name": "mlp"}, "teacher_from": "x", "teacher_epochs": 1}, "not both"),
    ({"teacher": {"name": "mlp", "hidden": [8]}}, r"teacher_epochs must be in \(0, 1e6\]"),
    ({"teacher": {"name": "mlp", "hiden": [8]}, "teacher_epochs": 1}, "unknown key loop.teacher.hiden"),
    ({"teacher": {"name": "nope"}, "teacher_epochs": 1}, "unknown model 'nope'"),
    ({**DISTILL["loop"], "guided_layer": ""}, "go together"),
    ({**DISTILL["loop"], "alpha": 1.5}, r"alpha must be in \[0, 1\]"),
])
def test_bad_loop_tables_are_one_line_errors(loop, match):
    with pytest.raises(ArchlabError, match=match):
        from_dict({**DISTILL, "loop": loop})


@pytest.mark.parametrize("change, match", [
    ({"teacher": {"name": "mlp", "in_features": 10, "num_classes": 10}}, "the teacher does not fit the data"),
    ({"hint_layer": "layers.7"}, "loop.hint_layer: no layer 'layers.7'"),
    ({"teacher": {"name": "vae"}}, "the teacher must be a classifier"),
])
def test_teacher_and_layers_must_fit(tmp_path, change, match):
    raw = copy.deepcopy(DISTILL)
    raw["loop"] = {**raw["loop"], **change}
    with pytest.raises(ArchlabError, match=match):
        _run(raw, tmp_path / "bad")
