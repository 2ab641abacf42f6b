"""Latent diffusion on the diffusion loop: codes and images, the scale factor, the frozen autoencoder copied
from a saved run by ``train.init_from`` + ``init_rename``, sampling, resume, and the one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import archlab
from archlab.cli import main
from archlab.errors import ArchlabError
from archlab.registry import entries

pytestmark = pytest.mark.usefixtures("single_thread")

AE = {"image_shape": [1, 8, 8], "channels": 4, "latent_dim": 3}
TINY = {"ae_channels": 4, "latent_dim": 3, "width": 32, "depth": 2, "time_dim": 16, "num_steps": 100}


def _model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)  # fixed weights: the tests must not depend on which tests ran before
    return archlab.create("latent_diffusion", image_shape=[1, 8, 8], **{**TINY, **overrides})


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """n random 8x8 images in [-1, 1] (the diffusion loop's scaling)."""
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _save_ae(directory, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    archlab.create("conv_autoencoder", **{**AE, **overrides}).save_pretrained(directory)
    return directory


def _recipe(ae_dir, steps: int = 40, **loop) -> dict:
    return {"name": "ldm_tiny", "seed": 0, "model": {"name": "latent_diffusion", **TINY},
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 3e-3},
            "train": {"loop": "diffusion", "steps": steps, "eval_every": 20, "log_every": 10, "checkpoint_every": 20,
                      "init_from": str(ae_dir), "init_rename": {"": "autoencoder"}},
            "loop": {"eval_examples": 64, "samples": 8, "sample_steps": 10, **loop}}


def _train(raw: dict, out) -> dict:
    from archlab.recipe import from_dict
    from archlab.runner import train

    return train(from_dict(raw), out=out, progress=False, log=lambda _m: None)


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm")
    ae = _save_ae(root / "ae")
    _train(_recipe(ae, steps=60, ema_decay=0.9), root / "run")
    return root


def test_codes_and_images_round_trip():
    model = _model()
    x = _images(5)
    model.measure_scale(x)
    z = model.encode(x)
    assert z.shape == (5, 3)
    images = model.decode(z)
    assert images.shape == (5, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    # D(s E(x) / s) is the autoencoder's own reconstruction of x (in [0, 1])
    torch.testing.assert_close(images, model.autoencoder((x + 1) / 2)[0].sigmoid(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.latent((x + 1) / 2), z)  # what `archlab interpolate` walks
    assert model(z, torch.tensor([0, 1, 2, 50, 99])).shape == (5, 3)


def test_scale_factor_gives_unit_variance_codes():
    model = _model()
    x = _images(64)
    raw = model.autoencoder.latent((x + 1) / 2)
    assert abs(float(raw.std()) - 1) > 0.1  # the autoencoder's codes are not unit-variance by themselves
    s = model.measure_scale(x)
    assert s == pytest.approx(1 / float(raw.std()), rel=1e-6)
    assert float(model.scale_factor) == pytest.approx(s, rel=1e-6)
    assert float(model.encode(x).std()) == pytest.approx(1.0, abs=1e-5)
    assert float(model.encode(_images(2000, seed=1)).std()) == pytest.approx(1.0, abs=0.1)  # other images too


def test_first_training_batch_measures_the_scale_once():
    model = _model().train()
    first, second = _images(32, seed=0), _images(32, seed=1) * 0.3
    model.loss(first, torch.Generator().manual_seed(0))
    s = float(model.scale_factor)
    assert s == pytest.approx(1 / float(model.autoencoder.latent((first + 1) / 2).std()), rel=1e-6)
    model.loss(second, torch.Generator().manual_seed(0))
    assert float(model.scale_factor) == s


def test_unmeasured_scale_is_a_one_line_error():
    model = _model().eval()
    for call in (lambda: model.loss(_images(4)), lambda: model.sample(2, steps=2)):
        with pytest.raises(ArchlabError, match="scale factor is not measured") as err:
            call()
        assert "\n" not in str(err.value)


def test_autoencoder_is_frozen_and_gets_no_gradients():
    model = _model().train()
    assert not any(p.requires_grad for p in model.autoencoder.parameters())
    before = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        model.loss(_images(16, seed=step), torch.Generator().manual_seed(step)).backward()
        opt.step()
    assert all(p.grad is None for p in model.autoencoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if not n.startswith("autoencoder."))
    assert all(torch.equal(before[k], v) for k, v in model.autoencoder.state_dict().items())


def test_run_keeps_the_saved_autoencoder_and_learns(ldm_run):
    from archlab.engine.metrics import read_metrics

    run, ae = ldm_run / "run", load_file(str(ldm_run / "ae" / "model.safetensors"))
    saved = load_file(str(run / "model.safetensors"))  # the EMA model the run saves
    assert {k for k in saved if k.startswith("autoencoder.")} == {f"autoencoder.{k}" for k in ae}
    assert all(torch.equal(saved[f"autoencoder.{k}"], v) for k, v in ae.items())
    vals = [r["val_loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-1] < vals[0] and vals[-1] < 0.9, vals  # predicting eps = 0 scores 1
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert metrics["test_loss"] < 0.9
    assert (run / "samples.png").stat().st_size > 0


def test_saved_scale_is_the_first_training_batch_s(ldm_run):
    """The EMA copy the run saves carries the scale the trained model measured on its first batch."""
    from archlab.data import load_dataset
    from archlab.models.generative.images import pixel_range
    from archlab.train.supervised import BatchStream

    model = archlab.load(ldm_run / "run")
    data = load_dataset("digits", {}, 0.1, 0)
    lo, hi = pixel_range(data.train.x, "digits")
    first = data.train.x[BatchStream(len(data.train), 32, seed=0).next()]
    codes = model.autoencoder.latent((first - lo) / (hi - lo))
    assert float(model.scale_factor) == pytest.approx(1 / float(codes.std()), rel=1e-5)


def test_sampling_returns_images_in_range(ldm_run, tmp_path):
    model = archlab.load(ldm_run / "run").eval()
    for kwargs in ({"steps": 10}, {"steps": 10, "eta": 1.0}, {"steps": None, "sampler": "ddpm"}):
        images = model.sample(6, torch.Generator().manual_seed(0), **kwargs)
        assert images.shape == (6, 1, 8, 8) and torch.isfinite(images).all()
        assert images.min() >= 0 and images.max() <= 1
    a = model.sample(3, torch.Generator().manual_seed(1), steps=10)
    assert torch.equal(a, model.sample(3, torch.Generator().manual_seed(1), steps=10))
    assert main(["sample", str(ldm_run / "run"), "--n", "4", "--steps", "5", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["interpolate", str(ldm_run / "run"), "--pairs", "1", "--frames", "4",
                 "--out", str(tmp_path / "i.png")]) == 0


def test_diffusion_loop_resumes_exactly(assert_resume_exact, tmp_path):
    """Resume builds a fresh model (scale unmeasured, random autoencoder) and restores both from the checkpoint."""
    assert_resume_exact(_recipe(_save_ae(tmp_path / "ae"), steps=40))


def test_init_from_mistakes_are_one_line(tmp_path):
    ae = _save_ae(tmp_path / "ae")
    other = _save_ae(tmp_path / "ae5", latent_dim=5)
    no_rename = _recipe(ae, steps=2)
    del no_rename["train"]["init_rename"]
    cases = [(_recipe(tmp_path / "missing", steps=2), "has no model.safetensors"),
             (_recipe(other, steps=2), "has shape"),
             (no_rename, "this model lacks")]
    for raw, message in cases:
        with pytest.raises(ArchlabError, match=message) as err:
            _train(raw, tmp_path / "out")
        assert "\n" not in str(err.value)
        assert not (tmp_path / "out").exists()


def test_contract_tests_cover_it():
    """tests/test_models.py parametrizes over every registered non-RL model: latent_diffusion is one, and the
    backward contract holds because the frozen autoencoder has no parameter that wants a gradient."""
    assert "latent_diffusion" in [e.name for e in entries() if e.family == "generative"]
    model = archlab.create("latent_diffusion")
    z, t = type(model).example_input(model.config, batch_size=2)
    (model(z, t) * torch.randn(2, model.config.latent_dim)).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("autoencoder.") and p.grad is not None for n, p in trainable)
