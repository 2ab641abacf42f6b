"""Score-based model (NCSN / VE SDE): the denoising score-matching loss against its formula, the noise
levels, both samplers driven by the analytic score of Gaussian data, the probability-flow ODE against its
closed-form flow (and torchdiffeq), and the score loop end to end on the 8x8 digits (learning, samples,
exact resume, refusals)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import archlab
from archlab.models.generative.score import annealed_langevin, geometric_sigmas, probability_flow

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"channels": 8, "channel_mult": [1, 2], "groups": 4, "image_shape": [1, 8, 8],
        "sigma_min": 0.01, "sigma_max": 8.0}
MU, STD = 0.3, 0.5  # the Gaussian data of the analytic tests: every coordinate ~ N(MU, STD^2)


def gaussian_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Score of N(MU, STD^2) smoothed by N(0, sigma^2): -(x - MU) / (STD^2 + sigma^2)."""
    var = STD**2 + sigma.to(x.dtype).view(-1, *[1] * (x.dim() - 1)) ** 2
    return -(x - MU) / var


@pytest.mark.parametrize("preconditioning", ["ncsn", "skip"])
def test_dsm_loss_equals_the_direct_formula(preconditioning):
    """sigma^2 / 2 || s(x~, sigma) - grad_x~ log N(x~; x, sigma^2 I) ||^2, the gradient taken by autograd."""
    torch.manual_seed(0)
    model = archlab.create("score", **TINY, preconditioning=preconditioning)
    x0, z = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8)
    sigma = torch.tensor([0.02, 0.7, 5.0])
    noisy = (x0 + sigma.view(-1, 1, 1, 1) * z).requires_grad_()
    log_q = torch.distributions.Normal(x0, sigma.view(-1, 1, 1, 1)).log_prob(noisy).sum()
    (grad_log_q,) = torch.autograd.grad(log_q, noisy)
    with torch.no_grad():
        s = model(noisy.detach(), sigma)
    direct = (0.5 * sigma**2 * (s - grad_log_q).pow(2).sum((1, 2, 3))).mean()
    torch.testing.assert_close(model.dsm_loss(x0, sigma, z), direct, rtol=1e-5, atol=0)
    # loss() draws sigma, then z, from its generator
    gen, replay = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    drawn = model.draw_sigmas(3, replay)
    torch.testing.assert_close(model.loss(x0, gen), model.dsm_loss(x0, drawn, torch.randn(x0.shape, generator=replay)))


def test_sigma_weighting_makes_the_target_the_noise():
    """With lambda = sigma^2 the loss is 1/2 || sigma s + z ||^2: an oracle returning -z / sigma scores 0."""
    model = archlab.create("score", **TINY)
    x0, z, sigma = torch.zeros(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.tensor([0.1, 3.0])
    model.forward = lambda x, s: -(x - x0) / s.view(-1, 1, 1, 1) ** 2
    assert float(model.dsm_loss(x0, sigma, z)) < 1e-9
    model.forward = lambda x, s: torch.zeros_like(x)
    torch.testing.assert_close(model.dsm_loss(x0, sigma, z), 0.5 * z.pow(2).sum((1, 2, 3)).mean())


def test_skip_preconditioning_is_a_gaussian_score_plus_a_correction():
    """With F = 0 the skip parametrisation is the score of N(0, sigma_data^2 I) data, -x / (sigma^2 + sigma_data^2);
    in general D = x + sigma^2 s = c_skip x + c_out F with the same F as the ncsn parametrisation's sigma s."""
    torch.manual_seed(0)
    skip = archlab.create("score", **TINY, preconditioning="skip").eval()
    ncsn = archlab.create("score", **TINY).eval()
    ncsn.load_state_dict(skip.state_dict())
    x, sigma = torch.randn(3, 1, 8, 8) * 4, torch.tensor([0.05, 1.0, 7.0])
    sig, var = sigma.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1) ** 2 + 0.25
    with torch.no_grad():
        f = ncsn(x, sigma) * sig
        denoised = x + sig**2 * skip(x, sigma)
        torch.testing.assert_close(denoised, 0.25 / var * x + sig * 0.5 / var.sqrt() * f, rtol=1e-4, atol=1e-5)
        torch.nn.init.zeros_(skip.conv_out.weight)
        torch.nn.init.zeros_(skip.conv_out.bias)
        torch.testing.assert_close(skip(x, sigma), -x / var)


def test_noise_levels():
    model = archlab.create("score", **TINY, num_scales=5, noise_sampling="ladder")
    ladder = model.ladder()
    torch.testing.assert_close(ladder, torch.tensor([8.0, 8 * 800**-0.25, 8 * 800**-0.5, 8 * 800**-0.75, 0.01],
                                                    dtype=torch.float64))
    drawn = model.draw_sigmas(2000, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == set(ladder.float().tolist())
    cont = archlab.create("score", **TINY).draw_sigmas(20000, torch.Generator().manual_seed(0))
    u = torch.log(cont / 0.01) / math.log(800)  # log-uniform: u ~ U(0, 1)
    assert 0 <= float(u.min()) and float(u.max()) <= 1 and abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.var()) - 1 / 12) < 0.005


def test_score_network_shapes_and_sigma_conditioning():
    model = archlab.create("score", **TINY).eval()
    x = torch.randn(4, 1, 8, 8)
    out = model(x, torch.tensor([0.01, 0.1, 1.0, 8.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    a, b = model(x[:1], torch.tensor([0.5])), model(x[:1], torch.tensor([2.0]))
    assert not torch.allclose(a * 0.5, b * 2.0)  # sigma enters beyond the 1 / sigma output scale


def test_annealed_langevin_reaches_the_gaussian():
    """Driven by the exact score, Algorithm 1 from N(0, sigma_1^2) ends at N(MU, STD^2) (40,000 draws)."""
    gen = torch.Generator().manual_seed(0)
    sigmas = geometric_sigmas(10.0, 0.01, 10)
    x = 10.0 * torch.randn(40000, 1, generator=gen)
    out = annealed_langevin(gaussian_score, x, sigmas, steps=100, eps=2e-5, generator=gen)
    assert abs(float(out.mean()) - MU) < 0.01, float(out.mean())
    assert abs(float(out.std()) - STD) < 0.025, float(out.std())
    # Without annealing (T = 0 steps) the samples stay at the prior: the steps did the work.
    assert float(annealed_langevin(gaussian_score, x, sigmas, steps=0, eps=2e-5, denoise=False).std()) > 9


def test_probability_flow_reaches_the_gaussian_and_is_deterministic():
    gen = torch.Generator().manual_seed(1)
    x_t = 20.0 * torch.randn(40000, 1, generator=gen)
    sigmas = geometric_sigmas(20.0, 0.01, 30)
    out = probability_flow(gaussian_score, x_t, sigmas, "heun")
    assert abs(float(out.mean()) - MU) < 0.01, float(out.mean())
    assert abs(float(out.std()) - STD) < 0.01, float(out.std())
    assert torch.equal(out, probability_flow(gaussian_score, x_t.clone(), sigmas, "heun"))
    model = archlab.create("score", **TINY).eval()
    one = model.sample(3, torch.Generator().manual_seed(5), steps=4)
    assert torch.equal(one, model.sample(3, torch.Generator().manual_seed(5), steps=4))
    assert not torch.equal(one, model.sample(3, torch.Generator().manual_seed(6), steps=4))


def test_probability_flow_follows_the_exact_flow():
    """For Gaussian data the ODE moves x along x(sigma) - MU = (x_T - MU) sqrt((STD^2 + sigma^2) / (STD^2 +
    sigma_max^2)); the last step (Euler to 0) is Tweedie's denoiser, exact factor STD^2 / (STD^2 + sigma_min^2)."""
    x_t = torch.linspace(-40, 40, 101, dtype=torch.float64).view(-1, 1)
    s_max, s_min = 20.0, 0.01
    at_min = MU + (x_t - MU) * math.sqrt((STD**2 + s_min**2) / (STD**2 + s_max**2))
    exact = MU + (at_min - MU) * STD**2 / (STD**2 + s_min**2)
    def error(method: str, levels: int) -> float:
        return float((probability_flow(gaussian_score, x_t, geometric_sigmas(s_max, s_min, levels), method)
                      - exact).abs().max())

    # first order: twice the levels halve the error; Heun (second order): they quarter it
    euler, heun = [error("euler", n) for n in (40, 80)], [error("heun", n) for n in (40, 80)]
    assert 1.8 < euler[0] / euler[1] < 2.2 and 3.6 < heun[0] / heun[1] < 4.4, (euler, heun)
    assert heun[1] < 2e-3 and heun[1] < euler[1] / 10


def test_probability_flow_matches_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq", reason="torchdiffeq (test extra) checks the integrator")
    x_t = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 20

    def field(log_sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # dx / d log sigma = -sigma^2 s
        sigma = log_sigma.exp()
        return -sigma**2 * gaussian_score(x, sigma.expand(len(x)))

    t = torch.tensor([math.log(20.0), math.log(0.01)], dtype=torch.float64)
    at_min = torchdiffeq.odeint(field, x_t, t, method="dopri5", rtol=1e-10, atol=1e-10)[-1]
    sigma_min = torch.full((len(x_t),), 0.01, dtype=torch.float64)
    reference = at_min + 0.01**2 * gaussian_score(at_min, sigma_min)  # probability_flow's last Euler step to 0
    ours = probability_flow(gaussian_score, x_t, geometric_sigmas(20.0, 0.01, 400), "heun")
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- the score loop


def _recipe(steps: int = 40, **loop) -> dict:
    model = {"name": "score", **{k: v for k, v in TINY.items() if k != "image_shape"}, "num_scales": 4}
    return {"name": "score_tiny", "seed": 0, "model": model,
            "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.1},
            "optim": {"name": "adam", "lr": 2e-3},
            "train": {"loop": "score", "steps": steps, "eval_every": 20, "log_every": 10, "checkpoint_every": 20},
            "loop": {"eval_examples": 64, "samples": 8, "ode_steps": 4, "langevin_steps": 2, **loop}}


def test_score_loop_learns_digits_and_samples(tmp_path):
    from archlab.engine.metrics import read_metrics
    from archlab.recipe import from_dict
    from archlab.runner import train

    out = tmp_path / "score"
    train(from_dict(_recipe(steps=60, ema_decay=0.9)), out=out, progress=False, log=lambda _m: None)
    vals = [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "val"]
    # s = 0 scores 1/2 E||z||^2 = D / 2 = 32; the optimum is well above 0 (small sigma: z is unpredictable)
    assert vals == sorted(vals, reverse=True) and vals[-1] < 0.7 * 32, vals
    for name in ("samples.png", "samples_ode.png", "samples_langevin.png"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["test_loss"] < 0.7 * 32
    model = archlab.load(out)
    for sampler in ("ode", "langevin"):
        images = model.sample(2, steps=3, sampler=sampler)
        assert images.shape == (2, 1, 8, 8) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_score_loop_resumes_exactly(assert_resume_exact):
    assert_resume_exact(_recipe(steps=40))


def test_score_loop_refuses_a_model_without_noise_levels(tmp_path):
    from archlab.recipe import from_dict
    from archlab.runner import train

    raw = _recipe(steps=2)
    raw["model"] = {"name": "ddpm", "channels": 8, "channel_mult": [1, 2], "groups": 4, "num_steps": 10}
    with pytest.raises(archlab.ArchlabError, match="no noise levels"):
        train(from_dict(raw), out=tmp_path / "bad", progress=False, log=lambda _m: None)
    with pytest.raises(archlab.ArchlabError, match="sampler"):
        from_dict(_recipe(steps=2, sampler="euler"))


def test_archlab_sample_draws_from_a_saved_score_model(tmp_path):
    from archlab.cli import main

    archlab.create("score", **TINY).save_pretrained(tmp_path / "score")
    assert main(["sample", str(tmp_path / "score"), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
