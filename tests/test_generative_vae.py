"""VAE and autoencoder: the ELBO estimator, the importance-weighted bound against an exact likelihood
(1-D latent, by quadrature), and the elbo loop end to end on the 8x8 digits (learning, resume, pictures)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import archlab
from archlab.models.generative.images import lerp, slerp
from archlab.models.generative.vae import bernoulli_log_likelihood

pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny_vae(latent: int = 1):
    torch.manual_seed(0)
    return archlab.create("vae", input_dim=6, image_shape=[1, 2, 3], hidden=[8], latent_dim=latent).eval()


def _exact_log_px(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int p(x|z) N(z; 0, 1) dz for a 1-D latent, on a fine grid (float64)."""
    z = torch.linspace(-10, 10, 20001).view(-1, 1)
    with torch.no_grad():
        logits = model.decode(z).double()                                   # (G, D)
    log_joint = bernoulli_log_likelihood(logits[:, None, :], x.flatten(1).double()[None]) \
        - 0.5 * z.double().pow(2) - 0.5 * math.log(2 * math.pi)             # (G, B)
    return torch.logsumexp(log_joint, dim=0) + math.log(float(z[1] - z[0]))


def test_analytic_kl_elbo_has_the_monte_carlo_expectation():
    """E_q[log p(x,z) - log q(z|x)] (all Monte Carlo) equals E_q[log p(x|z)] - KL (closed-form KL)."""
    model = _tiny_vae(latent=3)
    x = torch.bernoulli(torch.full((4, 6), 0.4), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    with torch.no_grad():
        mc = model.log_weights(x, 40000)                       # (k, B)
        analytic = torch.stack([model.terms(x)["elbo"] for _ in range(4000)])
    gap = (mc.mean(0) - analytic.mean(0)).abs()
    stderr = (mc.var(0) / len(mc) + analytic.var(0) / len(analytic)).sqrt()
    assert (gap < 4 * stderr + 1e-4).all(), (gap, stderr)


def test_iwae_bound_rises_with_k_towards_the_exact_likelihood():
    model = _tiny_vae(latent=1)
    with torch.no_grad():  # a decoder that depends strongly on z: q(z|x) is far from the true posterior
        for p in model.decoder.parameters():
            p.mul_(4)
    x = torch.bernoulli(torch.full((5, 6), 0.5), generator=torch.Generator().manual_seed(3))
    exact = _exact_log_px(model, x)
    torch.manual_seed(4)
    with torch.no_grad():
        bounds = {k: torch.stack([model.iwae_bound(x, k) for _ in range(1000 if k < 1000 else 5)]).double().mean(0)
                  for k in (1, 10, 100, 5000)}
    assert (bounds[1] < bounds[10]).all() and (bounds[10] < bounds[100]).all()
    assert (bounds[100] <= exact + 0.01).all()
    torch.testing.assert_close(bounds[5000], exact, rtol=0, atol=0.02)


def test_slerp_keeps_the_norm_of_equal_norm_codes_and_lerp_ends_on_both():
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 3.0])
    s = torch.linspace(0, 1, 7)
    path = slerp(a, b, s)
    torch.testing.assert_close(path.norm(dim=1), torch.full((7,), 3.0))
    torch.testing.assert_close(path[[0, -1]], torch.stack([a, b]))
    torch.testing.assert_close(lerp(a, b, s)[3], (a + b) / 2)


def _recipe(model: dict, steps: int = 60) -> dict:
    return {"name": "vae_tiny", "seed": 0, "model": model,
            "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 3e-3},
            "train": {"loop": "elbo", "steps": steps, "eval_every": 20, "log_every": 10, "checkpoint_every": 20},
            "loop": {"nll_k": 20, "nll_examples": 50, "samples": 16}}


def test_vae_learns_digits_and_writes_its_pictures(tmp_path):
    from archlab.engine.metrics import read_metrics
    from archlab.recipe import from_dict
    from archlab.runner import train

    classifier = tmp_path / "classifier"  # an untrained CNN is enough to check the FID plumbing
    archlab.create("cnn2d", in_channels=1, image_size=8, num_classes=10, channels=[8], hidden=16).save_pretrained(
        classifier)
    raw = _recipe({"name": "vae", "hidden": [32], "latent_dim": 4})
    raw["loop"].update(fid_classifier=str(classifier), fid_samples=200)
    out = tmp_path / "vae"
    train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    vals = [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-1] < vals[0] - 5, vals
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    # -L_k <= -ELBO (a tighter bound), both in nats per 8x8 image (64 pixels: at most 64 log 2).
    assert 0 < metrics["test_nll"] <= metrics["test_loss"] + 1.0 < 64 * math.log(2)
    assert 0 <= metrics["fid_floor"] and 0 <= metrics["test_fid"] and 1 <= metrics["test_is"] <= 10
    for name in ("samples.png", "interpolation.png", "interpolation.gif"):
        assert (out / name).stat().st_size > 0
    model = archlab.load(out)
    assert model.sample(3).shape == (3, 1, 8, 8)


def test_elbo_loop_resumes_exactly(assert_resume_exact):
    assert_resume_exact(_recipe({"name": "vae", "hidden": [16], "latent_dim": 2}, steps=40))


def test_autoencoder_trains_without_samples(tmp_path):
    from archlab.recipe import from_dict
    from archlab.runner import train

    out = tmp_path / "ae"
    raw = _recipe({"name": "autoencoder", "hidden": [32], "latent_dim": 4}, steps=40)
    train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    assert not (out / "samples.png").exists() and (out / "interpolation.png").exists()


def test_missing_fid_classifier_is_one_line(tmp_path):
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = _recipe({"name": "vae"}, steps=2)
    raw["loop"]["fid_classifier"] = str(tmp_path / "nothing")
    with pytest.raises(archlab.ArchlabError, match="mnist_lenet5"):
        train(from_dict(raw), out=tmp_path / "bad", progress=False, log=lambda _m: None)


def test_model_that_does_not_fit_is_refused(tmp_path):
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = _recipe({"name": "vae", "input_dim": 784, "image_shape": [1, 28, 28]}, steps=2)
    with pytest.raises(archlab.ArchlabError, match="image_shape"):
        train(from_dict(raw), out=tmp_path / "bad", progress=False, log=lambda _m: None)
