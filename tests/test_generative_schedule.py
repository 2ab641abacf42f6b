"""The diffusion noise schedule against diffusers' DDPMScheduler / DDIMScheduler: betas, cumulative
alphas, add_noise, and DDPM / DDIM sampler steps given the same model outputs and noise (1e-6)."""

from __future__ import annotations

import pytest
import torch

from archlab.models.generative.schedule import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

PEER_NAME = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
T = 1000


def _pair(schedule: str, kind: str = "ddpm", clip: bool = True):
    ours = NoiseSchedule(T, schedule, 1e-4, 0.02, clip_sample=clip)
    cls = diffusers.DDPMScheduler if kind == "ddpm" else diffusers.DDIMScheduler
    peer = cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule=PEER_NAME[schedule],
               clip_sample=clip)
    return ours, peer


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_and_forward_process_equal_diffusers(schedule):
    ours, peer = _pair(schedule)
    torch.testing.assert_close(ours.betas, peer.betas, rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod, peer.alphas_cumprod, rtol=0, atol=1e-7)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1, torch.randn(6, 1, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), peer.add_noise(x0, noise, t), rtol=0, atol=1e-6)


def test_forward_process_moments():
    """x_t has mean sqrt(abar_t) x_0 and variance 1 - abar_t (many draws, one x_0)."""
    s = NoiseSchedule(T, "linear")
    x0 = torch.full((200_000, 1), 0.7)
    for step in (10, 300, 900):
        xt = s.add_noise(x0, torch.randn_like(x0), torch.full((len(x0),), step))
        abar = s.alphas_cumprod[step]
        assert abs(xt.mean() - abar.sqrt() * 0.7) < 0.01
        assert abs(xt.var() - (1 - abar)) < 0.01


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1000, 50])
@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_steps_equal_diffusers(schedule, steps, clip):
    ours, peer = _pair(schedule, "ddpm", clip)
    peer.set_timesteps(steps)
    assert ours.timesteps(steps) == peer.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    for t in ours.timesteps(steps)[:3] + ours.timesteps(steps)[-3:]:
        x, eps = torch.randn(4, 1, 6, 6, generator=g), torch.randn(4, 1, 6, 6, generator=g)
        expected = peer.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours.ddpm_step(eps, t, x, noise, steps), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_steps_equal_diffusers(schedule, eta):
    ours, peer = _pair(schedule, "ddim")
    steps = 50
    peer.set_timesteps(steps)
    assert ours.timesteps(steps) == peer.timesteps.tolist()
    g = torch.Generator().manual_seed(2)
    for t in ours.timesteps(steps):
        x, eps, z = (torch.randn(3, 1, 5, 5, generator=g) for _ in range(3))
        expected = peer.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(ours.ddim_step(eps, t, x, steps, eta, z), expected, rtol=0, atol=1e-6)


def test_posterior_is_the_gaussian_product():
    """q(x_{t-1} | x_t, x_0) from Bayes: prior N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) times the
    likelihood N(x_t; sqrt(alpha_t) x_{t-1}, beta_t), checked at one t in float64."""
    s = NoiseSchedule(T, "cosine")
    t = 400
    ab_p, a_t = s.alphas_cumprod[t - 1].double(), s.alphas[t].double()
    x0, xt = torch.tensor([0.3], dtype=torch.float64), torch.tensor([-0.8], dtype=torch.float64)
    prec = 1 / (1 - ab_p) + a_t / (1 - a_t)
    mean = (ab_p.sqrt() * x0 / (1 - ab_p) + a_t.sqrt() * xt / (1 - a_t)) / prec
    s.alphas_cumprod = s.alphas_cumprod.double()
    got_mean, got_var = s.posterior(x0, xt, t, t - 1)
    torch.testing.assert_close(got_mean, mean)
    torch.testing.assert_close(got_var, 1 / prec)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        NoiseSchedule(10, "quadratic")
    with pytest.raises(ValueError, match="steps"):
        NoiseSchedule(10).timesteps(11)
    with pytest.raises(ValueError, match="noise"):
        NoiseSchedule(10).ddim_step(torch.zeros(1), 5, torch.zeros(1), 10, eta=1.0)
