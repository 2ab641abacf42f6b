"""PixelCNN and gated PixelCNN: causality of the masks by gradient (no output sub-pixel depends on itself or
anything after it, colours included), an exact likelihood that sums to one over every binary image,
samples drawn from that likelihood, and the elbo loop end to end on the 8x8 digits (learning, resume)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import archlab

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = {"pixelcnn": {"hidden": 6, "layers": 2, "out_hidden": 6, "first_kernel": 5},
          "gated_pixelcnn": {"maps": 6, "layers": 4, "out_hidden": 6, "kernel": 5}}


def _model(name: str, shape: list[int], seed: int = 0):
    torch.manual_seed(seed)
    return archlab.create(name, image_shape=shape, **MODELS[name]).eval()


def _dependence(model, shape: list[int], draws: int = 4) -> torch.Tensor:
    """(C, H, W, C, H, W) bool: does output sub-pixel (c, i, j) change with input sub-pixel (c', i', j')?
    Summed |gradient| over a few random inputs (one input can hide a path behind a dead ReLU)."""
    c, h, w = shape
    dep = torch.zeros(c, h, w, c, h, w)
    for _ in range(draws):
        x = torch.rand(1, c, h, w, requires_grad=True)
        out = model(x)
        for k, i, j in itertools.product(range(c), range(h), range(w)):
            (g,) = torch.autograd.grad(out[0, k, i, j], x, retain_graph=True)
            dep[k, i, j] += g[0].abs()
    return dep > 0


def _before(shape: list[int]) -> torch.Tensor:
    """(C, H, W, C, H, W) bool: input (c', i', j') comes before output (c, i, j) in raster-then-colour order."""
    c, h, w = shape
    order = torch.arange(h * w).view(1, h, w).expand(c, h, w) * c + torch.arange(c).view(c, 1, 1)
    return order.view(c, h, w, 1, 1, 1) > order.view(1, 1, 1, c, h, w)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("colors", [1, 3])
def test_no_output_depends_on_its_own_or_a_later_input(name, colors):
    shape = [colors, 5, 5]
    dep = _dependence(_model(name, shape), shape)
    leaks = dep & ~_before(shape)
    assert not leaks.any(), f"{int(leaks.sum())} forbidden dependencies, e.g. {leaks.nonzero()[:3].tolist()}"
    assert dep.any()


def test_gated_pixelcnn_sees_every_earlier_pixel_and_pixelcnn_has_a_blind_spot():
    shape = [1, 5, 5]
    before = _before(shape)
    assert not (before & ~_dependence(_model("gated_pixelcnn", shape), shape)).any()
    # The plain PixelCNN misses pixels up and to the right (van den Oord et al. 2016b, Fig. 1).
    dep = _dependence(_model("pixelcnn", shape), shape)
    assert (before & ~dep)[0, 4, 0].any()


@pytest.mark.parametrize("name,shape", [("pixelcnn", [1, 2, 2]), ("gated_pixelcnn", [1, 2, 2]),
                                        ("gated_pixelcnn", [2, 1, 2])])
def test_likelihood_sums_to_one_and_samples_follow_it(name, shape):
    model = _model(name, shape, seed=1)
    n = shape[0] * shape[1] * shape[2]
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n))).view(-1, *shape)
    with torch.no_grad():
        p = model.log_prob(images).double().exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-6)
    draws = model.sample(20000, torch.Generator().manual_seed(2))
    codes = (draws.flatten(1) * 2 ** torch.arange(n - 1, -1, -1)).sum(1).long()
    freq = torch.bincount(codes, minlength=2 ** n).double() / len(codes)
    stderr = (p * (1 - p) / len(codes)).sqrt()
    assert ((freq - p).abs() <= 5 * stderr + 1e-3).all(), (freq, p)


def _recipe(model: dict, steps: int = 40) -> dict:
    return {"name": "pixelcnn_tiny", "seed": 0, "model": model,
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 3e-3},
            "train": {"loop": "elbo", "steps": steps, "eval_every": 20, "log_every": 10, "checkpoint_every": 20},
            "loop": {"samples": 4}}


def test_pixelcnn_learns_digits_with_an_exact_test_nll(tmp_path):
    from archlab.engine.metrics import read_metrics
    from archlab.recipe import from_dict
    from archlab.runner import train

    out = tmp_path / "pcnn"
    train(from_dict(_recipe({"name": "gated_pixelcnn", "maps": 8, "layers": 3, "out_hidden": 8}, steps=60)),
          out=out, progress=False, log=lambda _m: None)
    vals = [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-1] < vals[0] - 2, vals
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["test_nll"] == metrics["test_loss"] < 64 * 0.6932  # below the uniform model's 64 log 2
    assert (out / "samples.png").stat().st_size > 0 and not (out / "interpolation.png").exists()
    model = archlab.load(out)
    assert set(model.sample(3).unique().tolist()) <= {0.0, 1.0}


def test_pixelcnn_run_resumes_exactly(assert_resume_exact):
    assert_resume_exact(_recipe({"name": "pixelcnn", "hidden": 4, "layers": 1, "out_hidden": 4}))
