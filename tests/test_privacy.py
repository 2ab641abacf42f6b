"""Differential privacy against Opacus: per-example gradients, their clipping, a whole noisy DP-SGD step
(same noise draws; the vmap reference and the fast path) and the RDP accountant's epsilon over a grid of
(q, sigma, steps, delta)."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import dpsgd_tiny
from torch import nn

from archlab import privacy
from archlab.privacy import DPSGD, clip_per_sample, per_sample_grads, poisson_batch

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore:Full backward hook is firing")]  # Opacus' hooks on input x


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.Tanh(),
                         nn.Linear(16, 5))


def _batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_per_sample_grads_are_the_gradients_of_each_example():
    model, (x, y) = _model(), _batch(4)
    grads = per_sample_grads(model, F.cross_entropy, x, y)
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(grads[n][i], p.grad, rtol=1e-5, atol=1e-6)
    clipped, norms = clip_per_sample(grads, max_norm=0.1)
    after = torch.stack([g.flatten(1).norm(dim=1) for g in clipped.values()], 1).norm(dim=1)
    assert (norms > 0.1).all() and torch.allclose(after, torch.full_like(after, 0.1), atol=1e-5)
    big, _ = clip_per_sample(grads, max_norm=1e6)  # no clipping: unchanged up to the 1e-6 guard
    for n in grads:
        torch.testing.assert_close(big[n], grads[n])


def test_poisson_batch_keeps_each_example_with_probability_q():
    g = torch.Generator().manual_seed(0)
    sizes = [len(poisson_batch(1000, 0.05, g)) for _ in range(200)]
    assert abs(sum(sizes) / len(sizes) - 50) < 2 and len(set(sizes)) > 5


@pytest.fixture
def opacus():
    return pytest.importorskip("opacus", reason="opacus (test extra) is the DP-SGD peer")


def test_clipped_per_sample_grads_equal_opacus(opacus):
    from opacus import GradSampleModule

    model, (x, y) = _model(), _batch()
    ours, _ = clip_per_sample(per_sample_grads(model, F.cross_entropy, x, y), max_norm=0.5)
    gsm = GradSampleModule(_model(), loss_reduction="sum")
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    theirs = {n.removeprefix("_module."): p.grad_sample for n, p in gsm.named_parameters()}
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in theirs.values()], 1).norm(dim=1)
    factor = (0.5 / (norms + 1e-6)).clamp(max=1.0)  # Opacus' DPOptimizer.clip_and_accumulate
    for n, g in theirs.items():
        torch.testing.assert_close(ours[n], g * factor.view(-1, *[1] * (g.dim() - 1)), rtol=1e-5, atol=1e-6)


def test_fast_clipped_sum_equals_opacus(opacus):
    from opacus import GradSampleModule

    from archlab.privacy.dpsgd_fast import clipped_grad_sum

    model, (x, y) = _model(), _batch()
    ours, ours_norms, _ = clipped_grad_sum(model, F.cross_entropy, x, y, max_norm=0.5)
    gsm = GradSampleModule(_model(), loss_reduction="sum")
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    theirs = {n.removeprefix("_module."): p.grad_sample for n, p in gsm.named_parameters()}
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in theirs.values()], 1).norm(dim=1)
    factor = (0.5 / (norms + 1e-6)).clamp(max=1.0)
    torch.testing.assert_close(ours_norms, norms, rtol=1e-5, atol=1e-6)
    for n, g in theirs.items():
        torch.testing.assert_close(ours[n], torch.einsum("b,b...->...", factor, g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("sigma", [0.0, 1.1])
def test_dpsgd_step_equals_opacus_dpoptimizer_with_the_same_noise(sigma, fast, opacus):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    x, y = _batch()
    ours = _model()
    dp = DPSGD(ours, torch.optim.SGD(ours.parameters(), lr=0.1), F.cross_entropy, noise_multiplier=sigma,
               max_grad_norm=0.7, expected_batch_size=16, fast=fast)
    torch.manual_seed(123)
    dp.step(x, y)

    gsm = GradSampleModule(_model(), loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.1), noise_multiplier=sigma, max_grad_norm=0.7,
                      expected_batch_size=16, loss_reduction="mean")
    opt.zero_grad()
    F.cross_entropy(gsm(x), y).backward()
    torch.manual_seed(123)
    opt.step()
    for (n, a), (_, b) in zip(ours.named_parameters(), gsm._module.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=n)
    assert not torch.equal(ours[0].weight, _model()[0].weight)


GRID = list(itertools.product([0.001, 0.01, 0.06, 1.0], [0.8, 1.3, 3.0], [1, 100, 10_000], [1e-5, 1e-3]))


def test_epsilon_equals_opacus_rdp_accountant(opacus):
    from opacus.accountants import RDPAccountant

    worst = 0.0
    for q, sigma, steps, delta in GRID:
        acc = RDPAccountant()
        acc.history = [(sigma, q, steps)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns when the best order is an end of its range
            ref = acc.get_epsilon(delta)
        ours = privacy.epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=delta)
        worst = max(worst, abs(ours - ref) / max(1.0, ref))
        assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6), (q, sigma, steps, delta)
    assert worst < 1e-6


def test_epsilon_properties():
    eps = privacy.epsilon
    assert eps(sample_rate=0.01, noise_multiplier=0.0, steps=10, delta=1e-5) == math.inf
    assert eps(sample_rate=0.0, noise_multiplier=1.0, steps=10, delta=1e-5) < 1.0  # only the conversion's slack
    a = eps(sample_rate=0.01, noise_multiplier=1.0, steps=100, delta=1e-5)
    assert a < eps(sample_rate=0.01, noise_multiplier=1.0, steps=1000, delta=1e-5)  # composition grows
    assert a > eps(sample_rate=0.01, noise_multiplier=2.0, steps=100, delta=1e-5)   # more noise, less epsilon
    assert a < eps(sample_rate=0.05, noise_multiplier=1.0, steps=100, delta=1e-5)   # larger batches cost more
    with pytest.raises(ValueError):
        eps(sample_rate=1.5, noise_multiplier=1.0, steps=1, delta=1e-5)


DP_RECIPE = dpsgd_tiny("dpsgd_tiny")


def test_dpsgd_loop_learns_reports_epsilon_and_resumes_exactly(tmp_path, assert_resume_exact):
    from archlab.recipe import from_dict
    from archlab.runner import evaluate, train

    summary = train(from_dict(DP_RECIPE), out=tmp_path / "run", progress=False, log=lambda _m: None)
    m = summary["metrics"]
    assert m["epsilon"] == privacy.epsilon(sample_rate=0.05, noise_multiplier=1.0, steps=30, delta=1e-5)
    assert m["test_acc"] > 0.5  # 10 classes: chance is 0.1
    again = evaluate(tmp_path / "run", device="cpu")
    assert again["test_acc"] == m["test_acc"] and "epsilon" not in again
    assert_resume_exact(DP_RECIPE)


def test_dpsgd_loop_refuses_batchnorm(tmp_path):
    from archlab.errors import ArchlabError
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = {**DP_RECIPE, "model": {"name": "mlp", "in_features": 64, "hidden": [16], "norm": "batch"}}
    with pytest.raises(ArchlabError, match="has BatchNorm, which mixes the examples"):
        train(from_dict(raw), out=tmp_path / "bad", progress=False, log=lambda _m: None)
