"""SimMIM (archlab/models/ssl/simmim.py) and CPC (archlab/models/ssl/cpc.py): losses, masks, the ssl loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import archlab
from archlab.errors import ArchlabError
from archlab.models.ssl.cpc import cpc_info_nce
from archlab.models.ssl.mae import patchify
from archlab.recipe import from_dict
from archlab.runner import train

TINY_VIT = {"image_size": 8, "patch_size": 2, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 16}


# -------------------------------------------------------------------------------------------- SimMIM


def test_simmim_masks_exactly_the_ratio_in_blocks():
    model = archlab.create("simmim", encoder_config=TINY_VIT, mask_ratio=0.6)
    mask = model._mask(torch.zeros(5, 1, 8, 8), torch.Generator().manual_seed(0))
    assert mask.shape == (5, 16) and (mask.sum(1) == round(0.6 * 16)).all()
    blocky = archlab.create("simmim", encoder_config=TINY_VIT, mask_ratio=0.5, mask_patch_size=4)
    m = blocky._mask(torch.zeros(3, 1, 8, 8), torch.Generator().manual_seed(1)).view(3, 4, 4)
    assert (m.sum((1, 2)) == 8).all()                                # 2 of 4 blocks of 2x2 patches
    assert torch.equal(m, m[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2))
    with pytest.raises(ArchlabError, match="multiple of the ViT patch"):
        archlab.create("simmim", encoder_config=TINY_VIT, mask_patch_size=3)


def test_simmim_loss_sees_only_masked_patches_and_the_encoder_sees_the_mask_token():
    torch.manual_seed(0)
    model = archlab.create("simmim", encoder_config=TINY_VIT)
    x = torch.randn(2, 1, 8, 8)
    mask = model._mask(x, torch.Generator().manual_seed(0))
    # l1 on hidden patches only, by hand
    pred = model.predict(x, mask).detach().requires_grad_(True)
    target = patchify(x, 2)
    loss = model.masked_loss(pred, target, mask)
    by_hand = sum((pred[b, p] - target[b, p]).abs().mean()
                  for b in range(2) for p in range(16) if mask[b, p]) / mask.sum()
    assert float(loss.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-6)
    loss.backward()
    assert (pred.grad[mask == 0] == 0).all() and (pred.grad[mask == 1] != 0).any()
    # gradient check on the input: hidden pixels reach the loss only as targets, visible pixels only as
    # encoder inputs; changing a hidden patch's input pixels leaves the prediction unchanged (mask token).
    hidden = int(mask[0].nonzero()[0])
    x2 = x.clone()
    r, c = divmod(hidden, 4)
    x2[0, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 1.0
    model.eval()
    assert torch.allclose(model.predict(x, mask), model.predict(x2, mask), atol=1e-6)
    visible = int((mask[0] == 0).nonzero()[0])
    r, c = divmod(visible, 4)
    x3 = x.clone()
    x3[0, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 1.0
    assert not torch.allclose(model.predict(x, mask), model.predict(x3, mask))
    # mask-token gradient flows; the linear head gets gradient
    model.train()
    model.zero_grad()
    model.ssl_loss(x).backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0


def _simmim_recipe() -> dict:
    return {
        "name": "simmim_tiny", "seed": 0,
        "model": {"name": "simmim", "encoder_config": TINY_VIT},
        "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"loop": "ssl", "steps": 6, "eval_every": 3, "checkpoint_every": 3},
        "loop": {"augment": ["translate:1"], "knn_k": 5, "linear_probe": False},
    }


def test_simmim_loop_resumes_bit_exactly(assert_resume_exact):
    assert_resume_exact(_simmim_recipe())


# ----------------------------------------------------------------------------------------------- CPC


def test_cpc_info_nce_equals_the_per_pair_formula():
    torch.manual_seed(0)
    pred, z = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    total = 0.0
    for p in range(3):
        for b in range(4):
            scores = torch.stack([pred[b, p] @ z[c, p] for c in range(4)])
            total += -float(scores[b] - torch.logsumexp(scores, 0))
    assert float(cpc_info_nce(pred, z)) == pytest.approx(total / 12, rel=1e-5)


def _cpc(**kw):
    return archlab.create("cpc", encoder="cnn1d", encoder_config={"channels": [8, 8, 8]}, **kw)


def test_cpc_windows_latents_and_loss_by_hand():
    torch.manual_seed(0)
    model = _cpc(window=16, stride=4, prediction_steps=2, context_dim=8)
    x = torch.randn(3, 40)
    win = model.windows(x)
    assert win.shape == (3, 7, 1, 16) and torch.equal(win[1, 2, 0], x[1, 8:24])
    z = model.latents(x)
    assert torch.allclose(z[:, 3], model.encoder(x[:, None, 12:28]), atol=1e-6)
    c = model.contexts(z)
    assert c.shape == (3, 7, 8)
    # the context at t depends only on windows <= t (autoregressive)
    x2 = x.clone()
    x2[:, 36:] += 1.0                                                # only the last window changes
    assert torch.allclose(model.contexts(model.latents(x2))[:, :6], c[:, :6], atol=1e-6)
    with torch.no_grad():
        expected = sum(cpc_info_nce(w(c[:, :7 - k]), z[:, k:]) for k, w in enumerate(model.predictors, 1)) / 2
        assert float(model.ssl_loss(x)) == pytest.approx(float(expected), rel=1e-5)
    assert model.forward(x).shape == (3, 7, 2, z.shape[-1])
    assert model.features(x).shape == (3, 8) and torch.allclose(model.features(x), c[:, -1], atol=1e-6)
    model.config.features_from = "latents"
    assert torch.allclose(model.features(x), z.flatten(1), atol=1e-6)


def test_cpc_loss_falls_when_the_future_is_predictable():
    """Sequences that are noisy sine waves with random phase and frequency: the future windows follow
    from the past, so a few hundred steps must bring InfoNCE well below log(B)."""
    torch.manual_seed(0)
    model = _cpc(window=8, stride=4, prediction_steps=2, context_dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.arange(40).float()

    def batch():
        f, ph = torch.rand(32, 1) * 0.5 + 0.1, torch.rand(32, 1) * 6.28
        return torch.sin(f * t + ph) + 0.05 * torch.randn(32, 40)

    with torch.no_grad():
        first = float(model.ssl_loss(batch()))
    for _ in range(150):
        opt.zero_grad()
        model.ssl_loss(batch()).backward()
        opt.step()
    with torch.no_grad():
        last = sum(float(model.ssl_loss(batch())) for _ in range(5)) / 5
    assert first > 3.0 and last < 0.6 * first


def test_cpc_config_errors_are_one_line(tmp_path):
    raw = _cpc_recipe()
    raw["model"]["window"] = 32                                      # 40 samples -> 2 windows, need > 2
    raw["model"]["stride"] = 8
    with pytest.raises(ArchlabError, match="windows"):
        train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)
    raw = _cpc_recipe()
    raw["model"]["encoder_config"]["length"] = 40
    with pytest.raises(ArchlabError, match="window"):
        train(from_dict(raw), out=tmp_path / "run2", progress=False, log=lambda _m: None)


def _cpc_recipe() -> dict:
    return {
        "name": "cpc_tiny", "seed": 0,
        "model": {"name": "cpc", "encoder": "cnn1d", "encoder_config": {"channels": [8, 8, 8]},
                  "window": 16, "stride": 4, "context_dim": 16, "prediction_steps": 2},
        "data": {"name": "mnist1d", "batch_size": 32, "val_fraction": 0.2, "options": {"num_samples": 400}},
        "optim": {"name": "adam", "lr": 3e-3},
        "train": {"loop": "ssl", "steps": 8, "eval_every": 4, "log_every": 2, "checkpoint_every": 4},
        "loop": {"augment": ["noise:0.05"], "knn_k": 5},
    }


def test_cpc_loop_resumes_bit_exactly(assert_resume_exact):
    assert_resume_exact(_cpc_recipe())


def test_cpc_loop_end_to_end(tmp_path):
    summary = train(from_dict(copy.deepcopy(_cpc_recipe())), out=tmp_path / "run", progress=False,
                    log=lambda _m: None)
    for key in ("val_knn_acc", "test_knn_acc", "val_linear_acc", "test_linear_acc"):
        assert 0.0 <= summary["metrics"][key] <= 1.0
    model = archlab.load(tmp_path / "run")
    assert type(model).registry_name == "cpc" and model.features(torch.randn(2, 40)).shape == (2, 16)
    assert F.mse_loss(model.features(torch.zeros(1, 40)), model.features(torch.zeros(1, 40))) == 0
