"""VQ-VAE: nearest-code quantization, the straight-through gradient, the EMA codebook update against its
formula, the learned-codebook variant's losses, and the elbo loop end to end on the 8x8 digits (codebook
usage and perplexity reported, resume bit-exact)."""

from __future__ import annotations

import json

import pytest
import torch

import archlab

pytestmark = pytest.mark.usefixtures("single_thread")


def _vq(**kw):
    torch.manual_seed(0)
    cfg = {"image_shape": [1, 8, 8], "hidden": 8, "res_blocks": 1, "embed_dim": 3, "codebook_size": 5, **kw}
    return archlab.create("vqvae", **cfg)


def test_quantize_picks_the_nearest_code():
    model = _vq()
    z_e = torch.randn(2, 3, 2, 2)
    z_q, codes = model.quantize(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    expected = torch.cdist(flat, model.codebook).argmin(1)
    assert torch.equal(codes.flatten(), expected)
    torch.testing.assert_close(z_q.permute(0, 2, 3, 1).reshape(-1, 3), model.codebook[expected])


def test_straight_through_gives_the_encoder_the_decoders_gradient():
    model = _vq().eval()
    x = torch.rand(2, 1, 8, 8)
    z_e = model.encoder(x).detach().requires_grad_(True)
    z_q, _ = model.quantize(z_e)
    out = model.decoder(z_e + (z_q - z_e).detach())
    (g_e,) = torch.autograd.grad(out.sum(), z_e)
    z_q = z_q.detach().requires_grad_(True)
    (g_q,) = torch.autograd.grad(model.decoder(z_q).sum(), z_q)
    torch.testing.assert_close(g_e, g_q)  # the argmin is skipped: d out / d z_e = d out / d z_q
    assert g_e.abs().sum() > 0


def test_ema_update_follows_the_moving_average_formula():
    model = _vq(decay=0.9).train()
    x = torch.rand(4, 1, 8, 8)
    model.terms(x)  # the first call seeds the codebook from the batch and takes one EMA step
    count, total = model.ema_count.clone(), model.ema_sum.clone()
    with torch.no_grad():
        z_e = model.encoder(x)
    _, codes = model.quantize(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    onehot = torch.nn.functional.one_hot(codes.flatten(), 5).float()
    model.terms(x)
    want_count = 0.9 * count + 0.1 * onehot.sum(0)
    want_sum = 0.9 * total + 0.1 * onehot.T @ flat
    torch.testing.assert_close(model.ema_count, want_count)
    torch.testing.assert_close(model.ema_sum, want_sum)
    n = want_count.sum()
    smoothed = (want_count + 1e-5) / (n + 5e-5) * n
    torch.testing.assert_close(model.codebook, want_sum / smoothed[:, None])
    assert not any(p is model.codebook for p in model.parameters())  # not the optimizer's business


def test_dead_codes_restart_on_encoder_outputs():
    model = _vq(decay=0.5, restart_dead=1.0).train()
    x = torch.rand(4, 1, 8, 8)
    model.terms(x)
    with torch.no_grad():  # code 0 fell out of use and sits far from the data
        model.ema_count[0] = 0.0
        model.ema_sum[0] = model.codebook[0] = 100.0
        flat = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 3)
    model.terms(x)
    assert model.ema_count[0] == 1.0
    assert torch.cdist(model.codebook[:1], flat).min() < 1e-3  # restarted at one of the batch's z_e


def test_learned_codebook_gets_the_codebook_loss_and_the_encoder_the_commitment():
    model = _vq(ema=False).train()
    terms = model.terms(torch.rand(3, 1, 8, 8))
    assert set(terms) >= {"loss", "rec", "commit"}
    terms["loss"].sum().backward()
    assert model.codebook.grad is not None and model.codebook.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.encoder.parameters())


def _recipe(model: dict, steps: int = 40) -> dict:
    return {"name": "vq_tiny", "seed": 0, "model": model,
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 3e-3},
            "train": {"loop": "elbo", "steps": steps, "eval_every": 20, "log_every": 10, "checkpoint_every": 20},
            "loop": {"binarize": "none"}}


def test_vqvae_learns_digits_and_reports_its_codebook(tmp_path):
    from archlab.engine.metrics import read_metrics
    from archlab.recipe import from_dict
    from archlab.runner import train

    out = tmp_path / "vq"
    model = {"name": "vqvae", "hidden": 16, "res_blocks": 1, "embed_dim": 4, "codebook_size": 16, "restart_dead": 0.5}
    train(from_dict(_recipe(model, steps=80)), out=out, progress=False, log=lambda _m: None)
    vals = [r["val_rec"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-1] < vals[0] - 3, vals
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert 0 < metrics["test_usage"] <= 1 and 1 <= metrics["test_perplexity"] <= 16
    assert metrics["test_perplexity"] <= metrics["test_usage"] * 16 + 1e-9  # exp(H) <= codes in use
    assert (out / "interpolation.png").stat().st_size > 0 and not (out / "samples.png").exists()


def test_vqvae_run_resumes_exactly(assert_resume_exact):
    assert_resume_exact(_recipe({"name": "vqvae", "hidden": 8, "res_blocks": 1, "embed_dim": 2, "codebook_size": 8,
                                 "restart_dead": 0.5}))
