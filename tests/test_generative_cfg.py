"""Class-conditional DDPM with classifier-free guidance: the guided noise estimate, label dropout, and the
diffusion loop end to end on the 8x8 digits with labels (per-class accuracy plumbing, exact resume,
``archlab sample --class --guidance``)."""

from __future__ import annotations

import json

import pytest
import torch

import archlab

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"image_shape": [1, 8, 8], "channels": 8, "channel_mult": [1, 2], "groups": 4, "num_steps": 50,
        "n_classes": 3}


def test_guided_eps_mixes_conditional_and_null_predictions():
    torch.manual_seed(0)
    model = archlab.create("cond_ddpm", **TINY).eval()
    with torch.no_grad():  # a non-trivial class embedding (it starts random anyway; make the null row differ)
        model.class_emb.weight[-1].add_(1.0)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 20, 49]), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t)
        torch.testing.assert_close(model.guided_eps(x, t, y, 0.0), cond)
        torch.testing.assert_close(model.guided_eps(x, t, y, 2.5), 3.5 * cond - 2.5 * uncond, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cond, uncond)


def test_label_dropout_one_is_the_unconditional_loss():
    torch.manual_seed(0)
    model = archlab.create("cond_ddpm", **{**TINY, "cond_drop": 1.0})
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    a = model.loss(x, torch.Generator().manual_seed(3), labels=y)
    b = model.loss(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    model.config.cond_drop = 0.0
    assert not torch.equal(model.loss(x, torch.Generator().manual_seed(3), labels=y), b)


def _recipe(steps: int = 20) -> dict:
    model = {"name": "cond_ddpm", **{k: v for k, v in TINY.items() if k != "image_shape"}, "n_classes": 10}
    return {"name": "cfg_tiny", "seed": 0, "model": model,
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 2e-3},
            "train": {"loop": "diffusion", "steps": steps, "eval_every": 10, "log_every": 10, "checkpoint_every": 10},
            "loop": {"ema_decay": 0.9, "eval_examples": 64, "samples": 10, "sample_steps": 5, "guidance": 1.5}}


def test_conditional_run_reports_class_accuracy_and_samples_by_class(tmp_path):
    from archlab.cli import main
    from archlab.recipe import from_dict
    from archlab.runner import train

    classifier = tmp_path / "classifier"  # untrained: checks the plumbing, not the quality
    torch.manual_seed(0)
    archlab.create("cnn2d", in_channels=1, image_size=8, num_classes=10, channels=[8], hidden=16).save_pretrained(
        classifier)
    raw = _recipe()
    raw["loop"].update(fid_classifier=str(classifier), fid_samples=40)
    out = tmp_path / "cfg"
    train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    accs = [metrics[f"test_class_acc_{k}"] for k in range(10)]
    assert metrics["test_class_acc"] == pytest.approx(sum(accs) / 10) and metrics["test_class_acc_min"] == min(accs)
    assert (out / "samples.png").stat().st_size > 0
    assert main(["sample", str(out), "--n", "4", "--class", "3", "--guidance", "1", "--steps", "3",
                 "--out", str(tmp_path / "three.png")]) == 0
    assert (tmp_path / "three.png").exists()


def test_guidance_on_a_model_without_it_is_one_line(tmp_path, capsys):
    from archlab.cli import main

    archlab.create("ddpm", image_shape=[1, 8, 8], channels=8, channel_mult=[1, 2], groups=4,
                   num_steps=10).save_pretrained(tmp_path / "ddpm")
    assert main(["sample", str(tmp_path / "ddpm"), "--guidance", "2", "--steps", "2",
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no classifier-free guidance" in err and len(err.splitlines()) == 1


def test_conditional_diffusion_resumes_exactly(assert_resume_exact):
    assert_resume_exact(_recipe(steps=20))
