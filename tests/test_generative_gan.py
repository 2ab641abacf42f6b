"""DCGAN and WGAN-GP on the image_gan loop: the gradient penalty's value, both networks trained with
their own optimizers, FID reported against its floor, the EMA generator saved, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import archlab

pytestmark = pytest.mark.usefixtures("single_thread")


def _recipe(tmp_path, loss: str = "bce", steps: int = 30, **loop) -> dict:
    classifier = tmp_path / "classifier"
    if not classifier.exists():  # an untrained CNN is enough to check the FID plumbing
        torch.manual_seed(0)
        archlab.create("cnn2d", in_channels=1, image_size=8, num_classes=10, channels=[8],
                       hidden=16).save_pretrained(classifier)
    return {"name": "gan_tiny", "seed": 0,
            "model": {"name": "dcgan", "latent_dim": 8, "width": 8,
                      "critic_norm": "batch" if loss == "bce" else "layer"},
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adam", "betas": [0.5, 0.999], "generator": {"lr": 2e-3}, "discriminator": {"lr": 1e-3}},
            "train": {"loop": "image_gan", "steps": steps, "eval_every": 10, "log_every": 5, "checkpoint_every": 10},
            "loop": {"loss": loss, "fid_classifier": str(classifier), "fid_samples": 100, "samples": 16, **loop}}


def test_gradient_penalty_of_a_linear_critic_is_its_weight_norm_gap(tmp_path):
    """D(x) = w . x has |grad D| = |w| everywhere: the penalty is (|w| - 1)^2 exactly."""
    from archlab.engine.device import Precision
    from archlab.engine.distributed import DistInfo
    from archlab.engine.loop import Context
    from archlab.recipe import from_dict
    from archlab.train.image_gan import ImageGAN

    recipe = from_dict(_recipe(tmp_path, "wgan_gp"))
    data = ImageGAN.load_data(recipe)
    model = ImageGAN.build_model(recipe, data, torch.device("cpu"))
    ctx = Context(torch.device("cpu"), Precision("fp32", torch.device("cpu")), DistInfo(), 0)
    loop = ImageGAN(recipe, model, data, ctx)
    w = torch.randn(64)
    linear = nn.Linear(64, 1, bias=False)
    linear.weight.data = w.view(1, -1)
    model.critic = lambda x: linear(x.flatten(1)).squeeze(-1)
    gp = loop._gradient_penalty(torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8))
    assert float(gp.detach()) == pytest.approx(float((w.norm() - 1) ** 2), rel=1e-5)


@pytest.mark.parametrize("loss", ["bce", "wgan_gp"])
def test_both_networks_train_and_fid_is_reported(tmp_path, loss):
    from archlab.recipe import from_dict
    from archlab.runner import train

    torch.manual_seed(0)
    before = archlab.create("dcgan", image_shape=[1, 8, 8], latent_dim=8, width=8,
                            critic_norm="batch" if loss == "bce" else "layer")
    out = tmp_path / loss
    raw = _recipe(tmp_path, loss, n_critic=2 if loss == "wgan_gp" else 1, ema_decay=0.9)
    train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    after = archlab.load(out)
    for part in ("generator", "discriminator"):
        # every weight matrix / kernel moved (a WGAN critic's output bias gets no gradient: it cancels)
        pairs = zip(getattr(before, part).parameters(), getattr(after, part).parameters(), strict=True)
        moved = [not torch.equal(a, b) for a, b in pairs if a.dim() > 1]
        assert moved and all(moved), part
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["fid_floor"] >= 0 and metrics["test_fid"] >= 0 and metrics["val_fid"] >= 0
    assert (out / "samples.png").exists() and (out / "interpolation.png").exists()


def test_image_gan_resumes_exactly(tmp_path, assert_resume_exact):
    assert_resume_exact(_recipe(tmp_path, "wgan_gp", steps=20, n_critic=2, ema_decay=0.5))


def test_wgan_gp_refuses_a_batch_norm_critic(tmp_path):
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = _recipe(tmp_path, "wgan_gp", steps=2)
    raw["model"]["critic_norm"] = "batch"
    with pytest.raises(archlab.ArchlabError, match="critic_norm"):
        train(from_dict(raw), out=tmp_path / "bad", progress=False, log=lambda _m: None)
