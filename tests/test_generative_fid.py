"""FID and Inception score: the Fréchet distance against the closed form on Gaussians, scipy's sqrtm
route and torchmetrics' FrechetInceptionDistance fed the same features; the classifier feature hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archlab
from archlab.models.generative.fid import (
    ClassifierFeatures,
    frechet_distance,
    frechet_from_stats,
    gaussian_stats,
    inception_score,
)


def _random_spd(d: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_closed_form_for_diagonal_covariances():
    """Commuting covariances: FID = |mu_a - mu_b|^2 + sum (sqrt(s_a) - sqrt(s_b))^2."""
    gen = torch.Generator().manual_seed(0)
    s_a, s_b = (torch.rand(6, generator=gen, dtype=torch.float64) + 0.1 for _ in range(2))
    mu_a, mu_b = (torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(2))
    expected = float((mu_a - mu_b).pow(2).sum() + (s_a.sqrt() - s_b.sqrt()).pow(2).sum())
    assert frechet_from_stats(mu_a, torch.diag(s_a), mu_b, torch.diag(s_b)) == pytest.approx(expected, rel=1e-10)


def test_equals_scipy_sqrtm_on_random_gaussians():
    linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(1)
    for d in (2, 10, 40):
        s_a, s_b = _random_spd(d, gen), _random_spd(d, gen)
        mu_a, mu_b = (torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2))
        covmean = linalg.sqrtm(s_a.numpy() @ s_b.numpy()).real
        expected = float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * covmean.trace())
        assert frechet_from_stats(mu_a, s_a, mu_b, s_b) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_sample_fid_is_zero_on_itself_and_grows_with_a_shift():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(500, 8, generator=gen)
    assert abs(frechet_distance(x, x)) < 1e-8
    assert frechet_distance(x, x + 1.0) == pytest.approx(8.0, rel=1e-6)  # only the means move
    mu, sigma = gaussian_stats(x)
    torch.testing.assert_close(sigma, torch.cov(x.double().T))


def test_equals_torchmetrics_frechet_inception_distance_on_the_same_features():
    tm = pytest.importorskip("torchmetrics.image.fid")
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(400, 12, generator=gen)
    fake = 0.8 * torch.randn(300, 12, generator=gen) @ torch.randn(12, 12, generator=gen) / 4 + 0.3

    class Identity(nn.Module):
        num_features = 12

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    metric = tm.FrechetInceptionDistance(feature=Identity())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(metric.compute()), rel=1e-3)


def test_inception_score_bounds():
    assert inception_score(torch.zeros(50, 10)) == pytest.approx(1.0)
    confident_even = torch.full((100, 10), -30.0)
    confident_even[torch.arange(100), torch.arange(100) % 10] = 30.0
    assert inception_score(confident_even) == pytest.approx(10.0, rel=1e-6)


def test_classifier_features_are_the_penultimate_layer():
    torch.manual_seed(0)
    net = archlab.create("lenet5", in_channels=1, image_size=28, num_classes=10).eval()
    x = torch.randn(5, 1, 28, 28)
    feats, logits = ClassifierFeatures(net)(x, batch=2)
    assert feats.shape == (5, 84)
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    torch.testing.assert_close(last(feats), logits)
