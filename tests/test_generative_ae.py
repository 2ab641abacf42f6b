"""Conv autoencoder, WAE-MMD and the adversarial autoencoder: the IMQ MMD estimator (against its
double sum, unbiased, larger between different distributions), and each model end to end on the 8x8
digits through its loop (elbo; adversarial_ae with two optimizers), with exact resume."""

from __future__ import annotations

import json

import pytest
import torch

import archlab
from archlab.models.generative.wae import SCALES, imq_mmd

pytestmark = pytest.mark.usefixtures("single_thread")


def test_imq_mmd_is_the_u_statistic_of_its_formula():
    g = torch.Generator().manual_seed(0)
    z, w = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) + 0.5
    base = 6.0

    def k(a, b):
        return sum(base * s / (base * s + float((a - b).pow(2).sum())) for s in SCALES)

    n = len(z)
    same = sum(k(z[i], z[j]) + k(w[i], w[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    cross = sum(k(z[i], w[j]) for i in range(n) for j in range(n)) / n ** 2
    torch.testing.assert_close(imq_mmd(z, w, base), torch.tensor(same - 2 * cross), rtol=1e-5, atol=1e-6)


def test_imq_mmd_is_unbiased_at_zero_and_grows_with_the_shift():
    g = torch.Generator().manual_seed(1)
    same = torch.stack([imq_mmd(torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g), 8.0)
                        for _ in range(400)])
    assert abs(float(same.mean())) < 4 * float(same.std()) / 20  # E[MMD_u] = 0 for equal distributions
    shifted = [float(imq_mmd(torch.randn(64, 4, generator=g) + d, torch.randn(64, 4, generator=g), 8.0))
               for d in (0.5, 1.0, 2.0)]
    assert 0 < shifted[0] < shifted[1] < shifted[2]


def _recipe(model: dict, loop: str = "elbo", steps: int = 40) -> dict:
    raw = {"name": "ae_tiny", "seed": 0, "model": model,
           "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
           "optim": {"name": "adam", "lr": 3e-3},
           "train": {"loop": loop, "steps": steps, "eval_every": 20, "log_every": 10, "checkpoint_every": 20},
           "loop": {"binarize": "none", "samples": 4}}
    if loop == "adversarial_ae":
        raw["optim"]["discriminator"] = {"lr": 1e-3}
    return raw


def _train(raw: dict, out):
    from archlab.engine.metrics import read_metrics
    from archlab.recipe import from_dict
    from archlab.runner import train

    train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    vals = [r["val_rec"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-1] < vals[0] - 2, vals
    return json.loads((out / "summary.json").read_text())["metrics"]


def test_conv_autoencoder_learns_and_interpolates(tmp_path):
    _train(_recipe({"name": "conv_autoencoder", "channels": 8, "latent_dim": 4}, steps=60), tmp_path / "cae")
    assert (tmp_path / "cae" / "interpolation.png").exists() and not (tmp_path / "cae" / "samples.png").exists()
    assert (tmp_path / "cae" / "plots" / "loss.png").exists()


def test_wae_learns_pulls_codes_to_the_prior_and_samples(tmp_path):
    metrics = _train(_recipe({"name": "wae", "channels": 8, "latent_dim": 2}, steps=60), tmp_path / "wae")
    assert metrics["test_mmd"] < 0.5 and metrics["test_loss"] == pytest.approx(
        metrics["test_rec"] + 10 * metrics["test_mmd"], rel=1e-6)
    assert (tmp_path / "wae" / "samples.png").exists() and (tmp_path / "wae" / "interpolation.png").exists()


def test_aae_trains_both_optimizers(tmp_path):
    from archlab.recipe import from_dict
    from archlab.runner import train

    out = tmp_path / "aae"
    torch.manual_seed(0)
    model = {"name": "aae", "channels": 8, "latent_dim": 2, "disc_hidden": 16}
    metrics = _train(_recipe(model, loop="adversarial_ae", steps=60), out)
    assert metrics["test_adv"] > 0 and (out / "samples.png").exists()
    init = archlab.create("aae", image_shape=[1, 8, 8], channels=8, latent_dim=2, disc_hidden=16)
    trained = archlab.load(out)
    for part in ("encoder", "decoder", "discriminator"):
        a, b = getattr(init, part).state_dict(), getattr(trained, part).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{part} did not move"
    with pytest.raises(archlab.ArchlabError, match="code discriminator"):
        train(from_dict(_recipe({"name": "wae"}, loop="adversarial_ae", steps=2)), out=tmp_path / "bad",
              progress=False, log=lambda _m: None)


def test_adversarial_ae_resumes_exactly(assert_resume_exact):
    assert_resume_exact(_recipe({"name": "aae", "channels": 4, "latent_dim": 2, "disc_hidden": 8},
                                loop="adversarial_ae"))


def test_wae_resumes_exactly(assert_resume_exact):
    assert_resume_exact(_recipe({"name": "wae", "channels": 4, "latent_dim": 2}))


def test_gaussian_decoder_likelihood_is_the_normal_density_and_its_vae_learns(tmp_path):
    from archlab.models.generative.vae import gaussian_log_likelihood

    g = torch.Generator().manual_seed(3)
    mean, x = torch.randn(4, 6, generator=g), torch.rand(4, 6, generator=g)
    log_scale = torch.randn(6, generator=g) * 0.3
    want = torch.distributions.Normal(mean, log_scale.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(gaussian_log_likelihood(mean, log_scale, x), want)
    model = {"name": "vae", "hidden": [32], "latent_dim": 4, "likelihood": "gaussian"}
    raw = _recipe(model, steps=60)
    raw["loop"]["nll_k"] = 20
    metrics = _train(raw, tmp_path / "gvae")
    assert metrics["test_nll"] <= metrics["test_loss"] + 1.0  # -L_k below -ELBO (both densities, may be < 0)
    vae = archlab.load(tmp_path / "gvae")
    assert vae.log_scale.shape == (64,) and not torch.equal(vae.log_scale, torch.zeros(64))
