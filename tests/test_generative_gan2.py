"""Conditional GAN, StyleGAN-style generator, progressive GAN (image_gan loop) and CycleGAN (cycle_gan loop):
shapes, conditioning, style mixing and truncation, fade-in endpoints, the cycle loss, the domain transform,
``archlab sample --class / --truncation``, and exact resume of each new loop configuration."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import archlab
from archlab.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


def _classifier(tmp_path):
    path = tmp_path / "classifier"
    if not path.exists():  # an untrained CNN is enough to check the metric plumbing
        torch.manual_seed(0)
        archlab.create("cnn2d", in_channels=1, image_size=8, num_classes=10, channels=[8],
                       hidden=16).save_pretrained(path)
    return str(path)


def _gan_recipe(tmp_path, model: dict, steps: int = 20, **loop) -> dict:
    return {"name": "gan2_tiny", "seed": 0, "model": model,
            "data": {"name": "digits", "batch_size": 16, "val_fraction": 0.1},
            "optim": {"name": "adam", "betas": [0.0, 0.99], "generator": {"lr": 2e-3}, "discriminator": {"lr": 1e-3}},
            "train": {"loop": "image_gan", "steps": steps, "eval_every": 10, "log_every": 5, "checkpoint_every": 10},
            "loop": {"fid_classifier": _classifier(tmp_path), "fid_samples": 60, "samples": 20, **loop}}


CGAN = {"name": "cgan", "n_classes": 10, "latent_dim": 8, "label_dim": 4, "width": 8}
STYLEGAN = {"name": "stylegan", "latent_dim": 8, "w_dim": 8, "mapping_layers": 2, "channels": [8, 8],
            "mixing_prob": 0.9}
PROGAN = {"name": "progan", "latent_dim": 8, "channels": [8, 8, 8]}


def _train(raw, out):
    from archlab.recipe import from_dict
    from archlab.runner import train

    train(from_dict(raw), out=out, progress=False, log=lambda _m: None)
    return json.loads((out / "summary.json").read_text())["metrics"]


# ------------------------------------------------------------------------------------- conditional GAN


def test_cgan_shapes_and_conditioning_changes_the_output():
    torch.manual_seed(0)
    model = archlab.create("cgan", n_classes=10, latent_dim=8, width=8).eval()
    z = torch.randn(1, 8).repeat(10, 1)
    y = torch.arange(10)
    images = model.generator(z, y)
    assert images.shape == (10, 1, 28, 28) and images.abs().max() <= 1
    # one z, ten labels: ten different images; and the critic scores one image differently per label
    flat = images.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(10) for j in range(i))
    scores = model.critic(images[:1].repeat(10, 1, 1, 1), y)
    assert scores.shape == (10,) and scores.unique().numel() == 10
    # the projection term is exactly e(y) . phi(x): swapping the label changes only that term
    phi = model.discriminator.features(images[:2])
    base = model.discriminator.out(phi).squeeze(-1)
    for k in (0, 7):
        expect = base + (model.discriminator.embed.weight[k] * phi).sum(1)
        torch.testing.assert_close(model.critic(images[:2], torch.tensor([k, k])), expect)
    s = model.sample(4, torch.Generator().manual_seed(0), labels=torch.tensor([3, 3, 3, 3]))
    assert s.shape == (4, 1, 28, 28) and 0 <= s.min() and s.max() <= 1


def test_cgan_trains_reports_class_accuracy_and_samples_by_class(tmp_path, capsys):
    out = tmp_path / "cgan"
    metrics = _train(_gan_recipe(tmp_path, {**CGAN}, steps=10, ema_decay=0.9), out)
    accs = [metrics[f"test_class_acc_{k}"] for k in range(10)]
    assert metrics["test_class_acc"] == pytest.approx(sum(accs) / 10)
    assert metrics["test_class_acc_min"] == min(accs) and metrics["fid_floor"] >= 0
    assert (out / "samples.png").exists() and (out / "interpolation.png").exists()
    assert main(["sample", str(out), "--n", "4", "--class", "3", "--out", str(tmp_path / "three.png")]) == 0
    assert (tmp_path / "three.png").stat().st_size > 0
    assert main(["sample", str(out), "--class", "10", "--out", str(tmp_path / "bad.png")]) == 2
    assert "--class must be in 0..9" in capsys.readouterr().err


def test_cgan_refuses_labels_beyond_its_classes(tmp_path):
    with pytest.raises(archlab.ArchlabError, match="n_classes"):
        _train(_gan_recipe(tmp_path, {**CGAN, "n_classes": 5}, steps=2), tmp_path / "bad")


def test_cgan_loop_resumes_exactly(tmp_path, assert_resume_exact):
    assert_resume_exact(_gan_recipe(tmp_path, {**CGAN, "critic_norm": "layer"}, loss="wgan_gp", n_critic=2,
                                    ema_decay=0.5))


def test_class_and_truncation_flags_refuse_models_without_them(tmp_path, capsys):
    archlab.create("dcgan", image_shape=[1, 8, 8], latent_dim=4, width=4).save_pretrained(tmp_path / "gan")
    assert main(["sample", str(tmp_path / "gan"), "--class", "1", "--out", str(tmp_path / "a.png")]) == 2
    assert main(["sample", str(tmp_path / "gan"), "--truncation", "0.5", "--out", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert "not class-conditional" in err and "no truncation trick" in err


# --------------------------------------------------------------------------------------------- StyleGAN


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    from archlab.train.image_gan import ImageGANConfig, r1_penalty

    w = torch.randn(16)
    x = torch.randn(5, 1, 4, 4, requires_grad=True)
    assert float(r1_penalty(x.flatten(1) @ w, x)) == pytest.approx(float(w @ w), rel=1e-5)
    with pytest.raises(ValueError):
        ImageGANConfig(loss="wgan_gp", r1_weight=1.0)


def _stylegan():
    torch.manual_seed(0)
    model = archlab.create("stylegan", latent_dim=8, w_dim=8, mapping_layers=2, channels=[8, 8, 8])
    with torch.no_grad():  # a trained-looking state: noise matters, w_avg away from 0
        for layer in model.generator.layers:
            layer.noise_strength.fill_(0.5)
        model.generator.w_avg.normal_()
    return model.eval()


def test_stylegan_shapes_and_noise_inputs():
    model = _stylegan()
    g = model.generator
    assert g.num_styles == 6 and g(torch.randn(3, 8)).shape == (3, 1, 28, 28)
    assert model.critic(torch.randn(4, 1, 28, 28)).shape == (4,)
    ws = model.styles(torch.randn(2, 8))
    assert ws.shape == (2, 6, 8)
    # const noise: deterministic; random noise: depends on the generator it is drawn from
    assert torch.equal(g.synthesis(ws, "const"), g.synthesis(ws, "const"))
    a = g.synthesis(ws, "random", torch.Generator().manual_seed(0))
    b = g.synthesis(ws, "random", torch.Generator().manual_seed(1))
    assert torch.equal(a, g.synthesis(ws, "random", torch.Generator().manual_seed(0))) and not torch.allclose(a, b)
    assert not torch.allclose(g.synthesis(ws, "none"), g.synthesis(ws, "const"))


def test_truncation_psi_zero_gives_the_mean_style_and_one_changes_nothing():
    model = _stylegan()
    z = torch.randn(5, 8)
    g = model.generator
    mean_image = g.synthesis(g.w_avg.view(1, 1, -1).expand(1, g.num_styles, -1), "const")
    zero = model.decode_images(z, truncation=0.0)
    for i in range(5):  # every z collapses onto the image of w_avg
        torch.testing.assert_close(zero[i:i + 1], ((mean_image + 1) / 2).clamp(0, 1))
    torch.testing.assert_close(model.decode_images(z, truncation=1.0), model.decode_images(z))
    w = g.mapping(z)
    torch.testing.assert_close(model.styles(z, 0.3)[:, 0], g.w_avg + 0.3 * (w - g.w_avg))


def test_style_mixing_takes_coarse_styles_from_one_code_and_fine_from_the_other():
    model = _stylegan()
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)
    L = model.generator.num_styles
    torch.testing.assert_close(model.mix(z1, z2, L), model.decode_images(z1))
    torch.testing.assert_close(model.mix(z1, z2, 0), model.decode_images(z2))
    ws = torch.cat([model.styles(z1)[:, :2], model.styles(z2)[:, 2:]], dim=1)
    torch.testing.assert_close(model.mix(z1, z2, 2), ((model.generator.synthesis(ws, "const") + 1) / 2).clamp(0, 1))
    assert not torch.allclose(model.mix(z1, z2, 2), model.decode_images(z1))


def test_style_mixing_regularisation_in_training_and_the_running_mean():
    model = _stylegan().train()
    g, z = model.generator, torch.randn(4, 8)
    before = g.w_avg.clone()
    g.c.mixing_prob = 1.0
    torch.manual_seed(5)
    mixed = g(z)
    # replay: same global draws -> the mixed styles by hand
    torch.manual_seed(5)
    float(torch.rand(()))  # the mixing coin
    w, w2 = g.mapping(z), g.mapping(torch.randn_like(z))
    cut = int(torch.randint(1, g.num_styles, ()))
    ws = torch.cat([w.unsqueeze(1).expand(-1, cut, -1), w2.unsqueeze(1).expand(-1, g.num_styles - cut, -1)], dim=1)
    torch.testing.assert_close(mixed, g.synthesis(ws, "random"))
    decay = g.c.w_avg_decay
    torch.testing.assert_close(g.w_avg, before * decay + w.mean(0) * (1 - decay))
    g.eval()
    frozen = g.w_avg.clone()
    g(z)
    assert torch.equal(g.w_avg, frozen)  # eval passes leave w_avg alone


def test_stylegan_trains_and_resumes_exactly(tmp_path, assert_resume_exact, capsys):
    out = tmp_path / "sg"
    raw = _gan_recipe(tmp_path, {**STYLEGAN}, steps=10, ema_decay=0.9, r1_weight=10.0)
    metrics = _train(raw, out)
    assert metrics["test_fid"] >= 0
    assert main(["sample", str(out), "--n", "4", "--truncation", "0.5", "--out", str(tmp_path / "t.png")]) == 0
    assert_resume_exact(_gan_recipe(tmp_path, {**STYLEGAN}, ema_decay=0.5, r1_weight=1.0))


# ------------------------------------------------------------------------------------- progressive GAN


def _progan():
    torch.manual_seed(0)
    return archlab.create("progan", latent_dim=8, channels=[8, 8, 8]).eval()


def test_progan_shapes_per_stage_and_frozen_layers():
    model = _progan()
    z = torch.randn(4, 8)
    for stage, size in ((0, 7), (1, 14), (2, 28)):
        model.set_growth(stage, 1.0)
        assert model.resolution(stage) == (size, size)
        x = model.generator(z)
        assert x.shape == (4, 1, size, size) and model.critic(x).shape == (4,)
        assert model.sample(3).shape == (3, 1, 28, 28)
    model.set_growth(1, 0.5)  # fading into 14 px: both toRGBs in use, the 28-px block frozen
    g = model.generator
    assert all(p.requires_grad for p in [*g.to_rgb[0].parameters(), *g.to_rgb[1].parameters()])
    assert not any(p.requires_grad for p in [*g.to_rgb[2].parameters(), *g.blocks[1].parameters()])
    with pytest.raises(ValueError):
        model.set_growth(3, 1.0)


def test_fade_in_endpoints_are_the_low_and_high_resolution_paths():
    model = _progan()
    g, d = model.generator, model.discriminator
    z, x = torch.randn(4, 8), torch.randn(4, 1, 28, 28)
    for stage in (1, 2):
        xs = F.avg_pool2d(x, 2 ** (2 - stage))  # a real batch at this stage's resolution
        model.set_growth(stage - 1, 1.0)
        low_image, low_score = g(z), d(F.avg_pool2d(xs, 2))
        # alpha = 0: the previous stage's image upsampled; the critic reads the downsampled image only
        model.set_growth(stage, 0.0)
        torch.testing.assert_close(g(z), F.interpolate(low_image, scale_factor=2, mode="nearest"))
        torch.testing.assert_close(d(xs), low_score)
        # alpha = 1: the new block alone (toRGB_s after block_s; block_s after fromRGB_s)
        model.set_growth(stage, 1.0)
        h = g.stem(z)
        for s in range(1, stage + 1):
            h = g.blocks[s - 1](F.interpolate(h, scale_factor=2, mode="nearest"))
        high_image = g.to_rgb[stage](h)
        torch.testing.assert_close(g(z), high_image)
        h = d.blocks[stage - 1](d.from_rgb[stage](xs))
        for s in range(stage - 1, 0, -1):
            h = d.blocks[s - 1](h)
        torch.testing.assert_close(d(xs), d.head(h).squeeze(-1))
        # in between: the generator's image is the convex combination of the two paths
        model.set_growth(stage, 0.25)
        low = F.interpolate(low_image, scale_factor=2, mode="nearest")
        torch.testing.assert_close(g(z), 0.75 * low + 0.25 * high_image)


def test_growth_schedule_of_the_loop():
    from archlab.train.image_gan import ImageGAN, ImageGANConfig

    fake = SimpleNamespace(cfg=ImageGANConfig(grow_at=[10, 20], fade_steps=4))
    got = [ImageGAN.growth(fake, t) for t in (0, 9, 10, 11, 13, 14, 19, 20, 22, 99)]
    assert got == [(0, 1.0), (0, 1.0), (1, 0.0), (1, 0.25), (1, 0.75), (1, 1.0), (1, 1.0), (2, 0.0), (2, 0.5),
                   (2, 1.0)]
    assert ImageGAN.growth(SimpleNamespace(cfg=ImageGANConfig(grow_at=[5])), 5) == (1, 1.0)
    with pytest.raises(ValueError):
        ImageGANConfig(grow_at=[10, 10])


def test_progan_needs_a_schedule_with_one_step_per_growth(tmp_path):
    with pytest.raises(archlab.ArchlabError, match="grow_at"):
        _train(_gan_recipe(tmp_path, {**PROGAN}, steps=2), tmp_path / "none")
    with pytest.raises(archlab.ArchlabError, match="grow_at"):
        _train(_gan_recipe(tmp_path, {**PROGAN}, steps=2, grow_at=[1]), tmp_path / "short")


def test_progan_grows_and_resumes_exactly_mid_fade(tmp_path, assert_resume_exact):
    out = tmp_path / "pg"
    model = {**PROGAN, "channels": [8, 8]}  # 8x8 digits: 4 -> 8 px
    _train(_gan_recipe(tmp_path, model, steps=12, grow_at=[4], fade_steps=4, ema_decay=0.9), out)
    saved = archlab.load(out)
    assert int(saved.generator.stage) == 1 and float(saved.generator.alpha) == 1.0
    # the first checkpoint (step 10) falls inside the second fade (steps 8..14)
    assert_resume_exact(_gan_recipe(tmp_path, {**PROGAN, "channels": [8, 8, 8], "image_shape": [1, 8, 8]},
                                    grow_at=[3, 8], fade_steps=6, ema_decay=0.5))


# -------------------------------------------------------------------------------------------- CycleGAN


def test_dilate_invert_domain():
    from archlab.train.cycle_gan import dilate_invert, unpaired_domains

    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 1.0
    b = dilate_invert(x, 3)
    assert b.shape == x.shape and 0 <= b.min() and b.max() <= 1
    expect = torch.ones(7, 7)
    expect[2:5, 2:5] = 0  # one white pixel becomes a 3x3 black square on white
    assert torch.equal(b[0, 0], expect)
    imgs = torch.rand(5, 1, 8, 8)
    assert (dilate_invert(imgs, 3) <= 1 - imgs).all()  # dilation only thickens
    assert torch.equal(dilate_invert(imgs, 1), 1 - imgs)
    a1, b1 = unpaired_domains(11, seed=0)
    a2, b2 = unpaired_domains(11, seed=0)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and len(a1) == len(b1) == 5
    assert not set(a1.tolist()) & set(b1.tolist())
    assert not torch.equal(unpaired_domains(11, seed=1)[0], a1)


def _cycle_recipe(tmp_path, steps: int = 20, **loop) -> dict:
    return {"name": "cycle_tiny", "seed": 0, "model": {"name": "cyclegan", "width": 4, "res_blocks": 1, "d_width": 4},
            "data": {"name": "digits", "batch_size": 8, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 2e-3, "betas": [0.5, 0.999]},
            "train": {"loop": "cycle_gan", "steps": steps, "eval_every": 10, "log_every": 5, "checkpoint_every": 10},
            "loop": {"classifier": _classifier(tmp_path), "eval_samples": 50, "samples": 4, "pool_size": 10, **loop}}


class _Scale(torch.nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k * x


def test_cycle_loss_vanishes_for_inverse_generators(tmp_path):
    from archlab.engine.device import Precision
    from archlab.engine.distributed import DistInfo
    from archlab.engine.loop import Context
    from archlab.recipe import from_dict
    from archlab.train.cycle_gan import CycleGANLoop

    recipe = from_dict(_cycle_recipe(tmp_path, identity_weight=0.5))
    data = CycleGANLoop.load_data(recipe)
    model = CycleGANLoop.build_model(recipe, data, torch.device("cpu"))
    ctx = Context(torch.device("cpu"), Precision("fp32", torch.device("cpu")), DistInfo(), 0)
    loop = CycleGANLoop(recipe, model, data, ctx)
    a, b = torch.rand(4, 1, 8, 8) * 2 - 1, torch.rand(4, 1, 8, 8) * 2 - 1
    model.generator_ab, model.generator_ba = _Scale(-1.0), _Scale(-1.0)  # F = G^-1, but G != identity
    _, parts = loop.generator_loss(a, b)
    assert float(parts["cycle"]) == 0.0
    assert float(parts["identity"]) == pytest.approx(float(2 * b.abs().mean() + 2 * a.abs().mean()), rel=1e-6)
    model.generator_ba = _Scale(0.5)  # not the inverse: F(G(a)) = -a / 2, G(F(b)) = -b / 2
    _, parts = loop.generator_loss(a, b)
    assert float(parts["cycle"]) == pytest.approx(float(1.5 * a.abs().mean() + 1.5 * b.abs().mean()), rel=1e-6)


def test_image_pool_returns_new_fakes_until_full_then_mixes_in_history():
    from archlab.train.cycle_gan import ImagePool

    pool, gen = ImagePool(4, (1, 2, 2), torch.device("cpu")), torch.Generator().manual_seed(0)
    first = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    assert torch.equal(pool.query(first, gen), first) and pool.count == 4
    new = torch.full((64, 1, 2, 2), 9.0)
    out = pool.query(new, gen)
    old = (out != 9).flatten(1).all(1)
    assert 0 < int(old.sum()) < 64  # about half come from the history
    again = ImagePool(4, (1, 2, 2), torch.device("cpu"))
    again.load_state_dict(pool.state_dict())
    assert torch.equal(again.images, pool.images) and again.count == 4
    assert torch.equal(ImagePool(0, (1, 2, 2), torch.device("cpu")).query(new, gen), new)


def test_cyclegan_trains_all_four_networks_and_reports_content(tmp_path):
    torch.manual_seed(0)
    before = archlab.create("cyclegan", image_shape=[1, 8, 8], width=4, res_blocks=1, d_width=4)
    out = tmp_path / "cycle"
    metrics = _train(_cycle_recipe(tmp_path, steps=10, ema_decay=0.9), out)
    after = archlab.load(out)
    for part in ("generator_ab", "generator_ba", "discriminator_a", "discriminator_b"):
        pairs = zip(getattr(before, part).parameters(), getattr(after, part).parameters(), strict=True)
        assert all(not torch.equal(p, q) for p, q in pairs if p.dim() > 1), part
    for key in ("test_content_acc", "test_raw_acc", "test_content_acc_ab", "test_raw_acc_ab", "val_content_acc"):
        assert 0 <= metrics[key] <= 1
    assert metrics["test_cycle_l1"] >= 0 and metrics["test_fid_ba"] >= 0
    assert (out / "translations.png").stat().st_size > 0


def test_cyclegan_loop_resumes_exactly(tmp_path, assert_resume_exact):
    assert_resume_exact(_cycle_recipe(tmp_path, ema_decay=0.5))
