"""DDPM on the diffusion loop: the U-Net's shapes, the loss it trains, DDPM/DDIM sampling through the
shared NoiseSchedule, and the loop end to end on the 8x8 digits (learning, EMA, resume, samples)."""

from __future__ import annotations

import json

import pytest
import torch

import archlab
from archlab.models.generative.schedule import NoiseSchedule

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"name": "ddpm", "channels": 8, "channel_mult": [1, 2], "groups": 4, "num_steps": 100}


def _recipe(steps: int = 40, **loop) -> dict:
    return {"name": "ddpm_tiny", "seed": 0, "model": dict(TINY),
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 2e-3},
            "train": {"loop": "diffusion", "steps": steps, "eval_every": 20, "log_every": 10, "checkpoint_every": 20},
            "loop": {"eval_examples": 64, "samples": 8, "sample_steps": 10, **loop}}


@pytest.mark.parametrize("shape", [[1, 28, 28], [1, 8, 8], [3, 9, 7]])
def test_unet_keeps_the_image_shape(shape):
    model = archlab.create("ddpm", image_shape=shape, channels=8, groups=4)
    x = torch.randn(3, *shape)
    assert model(x, torch.tensor([0, 5, 999])).shape == x.shape


def test_time_embedding_changes_the_prediction():
    model = archlab.create("ddpm", **{k: v for k, v in TINY.items() if k != "name"}, image_shape=[1, 8, 8]).eval()
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(model(x, torch.tensor([1, 1])), model(x, torch.tensor([90, 90])))


def test_samplers_follow_the_schedule_steps():
    """With a model that predicts the true noise of a fixed x_0, DDIM (eta 0) lands on x_0."""
    model = archlab.create("ddpm", **{k: v for k, v in TINY.items() if k != "name"}, image_shape=[1, 8, 8])
    target = torch.rand(1, 1, 8, 8) * 1.6 - 0.8
    s: NoiseSchedule = model.schedule

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * target) / (1 - abar).sqrt()

    model.forward = oracle
    images = model.sample(4, torch.Generator().manual_seed(0), steps=20)
    torch.testing.assert_close(images, ((target + 1) / 2).expand(4, -1, -1, -1), rtol=0, atol=1e-4)
    ddpm = model.sample(2, torch.Generator().manual_seed(0), steps=None, sampler="ddpm")
    torch.testing.assert_close(ddpm, ((target + 1) / 2).expand(2, -1, -1, -1), rtol=0, atol=1e-3)


def test_ddpm_learns_digits_and_samples(tmp_path):
    from archlab.engine.metrics import read_metrics
    from archlab.recipe import from_dict
    from archlab.runner import train

    out = tmp_path / "ddpm"
    train(from_dict(_recipe(steps=60, ema_decay=0.9)), out=out, progress=False, log=lambda _m: None)
    vals = [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-1] < vals[0] and vals[-1] < 0.5, vals  # predicting eps = 0 scores 1
    assert (out / "samples.png").stat().st_size > 0
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["test_loss"] < 0.5
    model = archlab.load(out)
    assert model.sample(2, steps=5).shape == (2, 1, 8, 8)


def test_diffusion_loop_resumes_exactly(assert_resume_exact):
    assert_resume_exact(_recipe(steps=40))


def test_too_many_sample_steps_are_refused(tmp_path):
    from archlab.recipe import from_dict
    from archlab.runner import train

    with pytest.raises(archlab.ArchlabError, match="sample_steps"):
        train(from_dict(_recipe(steps=2, sample_steps=500)), out=tmp_path / "bad", progress=False, log=lambda _m: None)
