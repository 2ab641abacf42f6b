"""The diffusion noise schedule: betas, the forward process q(x_t | x_0), the posterior, and the DDPM
and DDIM sampler steps (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"; Song et al. 2021,
"Denoising Diffusion Implicit Models"). One object, shared by the diffusion models and the diffusion
loop; every number follows the conventions of ``diffusers``' ``DDPMScheduler``/``DDIMScheduler`` (the
tests check them equal to 1e-6 given the same model output and noise).

Notation (T = ``num_steps``, t = 0 .. T-1):

    linear:  beta_t = beta_start + (beta_end - beta_start) t / (T - 1)              (Ho et al. Sec. 4)
    cosine:  abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2),
             beta_t = min(1 - abar((t + 1) / T) / abar(t / T), 0.999)                (Nichol & Dhariwal 2021, eq. 17)
    alpha_t = 1 - beta_t,      abar_t = prod_{s <= t} alpha_s

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)       add_noise: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps

A sampler walks a decreasing list of timesteps t_S > ... > t_1 (``timesteps(S)``: every T/S-th step,
"leading" spacing). Between t and its predecessor p (abar_p = 1 before the first step) the model's
noise prediction eps gives x_0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped to [-1, 1]
when ``clip_sample``, and

    DDPM (ancestral):  x_p = mu + sigma z,  the posterior q(x_p | x_t, x_0_hat) = N(mu, sigma^2):
        a = abar_t / abar_p,
        mu = sqrt(abar_p) (1 - a) / (1 - abar_t) x_0_hat + sqrt(a) (1 - abar_p) / (1 - abar_t) x_t,
        sigma^2 = (1 - abar_p) / (1 - abar_t) (1 - a)                             (Ho et al. eq. 7, "fixed small")
    DDIM:  sigma = eta sqrt((1 - abar_p) / (1 - abar_t) (1 - a)),
        x_p = sqrt(abar_p) x_0_hat + sqrt(1 - abar_p - sigma^2) eps + sigma z      (Song et al. eq. 12)

eta = 0 is the deterministic DDIM sampler; eta = 1 with every step is DDPM's variance. As in diffusers'
defaults, DDIM's direction term uses the model's eps even when x_0_hat was clipped.

Shapes: ``t`` is a (B,) long tensor for ``add_noise`` (one timestep per example) and a Python int for
the sampler steps (the whole batch is at the same step); images are (B, C, H, W) or any (B, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Schedule = Literal["linear", "cosine"]


def _cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta)
                         for i in range(num_steps)], dtype=torch.float32)


@dataclass
class NoiseScheduleConfig:
    """The schedule's settings, shared by the configs of the diffusion models (DDPM, latent diffusion)."""

    num_steps: int = 1000
    """T, the diffusion steps of training."""
    schedule: Schedule = "linear"
    """Noise schedule: Ho et al.'s linear betas or Nichol & Dhariwal's cosine."""
    beta_start: float = 1e-4
    beta_end: float = 0.02
    clip_sample: bool = True
    """Clip the predicted x_0 to [-1, 1] in every sampler step."""

    def noise_schedule(self) -> NoiseSchedule:
        """The :class:`NoiseSchedule` these settings describe (raises ValueError on bad settings)."""
        return NoiseSchedule(self.num_steps, self.schedule, self.beta_start, self.beta_end, self.clip_sample)

    def __post_init__(self) -> None:
        self.noise_schedule()  # validates the settings


class NoiseSchedule:
    """Betas and cumulative alphas of a T-step diffusion, with the forward process and sampler steps.

    ``NoiseSchedule(num_steps=1000, schedule="linear", beta_start=1e-4, beta_end=0.02)`` is Ho et al.'s;
    ``schedule="cosine"`` is Nichol & Dhariwal's (``beta_start``/``beta_end`` unused) and equals
    diffusers' ``"squaredcos_cap_v2"``.
    """

    def __init__(self, num_steps: int = 1000, schedule: Schedule = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, clip_sample: bool = True) -> None:
        if not 2 <= num_steps <= 100_000:
            raise ValueError(f"num_steps must be in [2, 100000], got {num_steps}")
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.num_steps, self.schedule, self.clip_sample = num_steps, schedule, clip_sample
        if schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float32)
        else:
            self.betas = _cosine_betas(num_steps)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Move the tables to ``device`` (in place; returns self)."""
        self.betas, self.alphas, self.alphas_cumprod = (v.to(device) for v in
                                                        (self.betas, self.alphas, self.alphas_cumprod))
        return self

    # -- forward process ------------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, one timestep per example: x0, noise (B, ...), t (B,)."""
        abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    # -- reverse process -------------------------------------------------------------------------------
    def timesteps(self, steps: int | None = None) -> list[int]:
        """The decreasing timesteps a sampler of ``steps`` steps visits (default: all T): 0, T/S, 2T/S ... reversed."""
        steps = steps or self.num_steps
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"sampling steps must be in [1, {self.num_steps}], got {steps}")
        ratio = self.num_steps // steps
        return [i * ratio for i in reversed(range(steps))]

    def previous(self, t: int, steps: int | None = None) -> int:
        """The timestep after ``t`` in a sampler of ``steps`` steps (-1 past the last)."""
        return t - self.num_steps // (steps or self.num_steps)

    def _abar(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else torch.ones((), dtype=self.alphas_cumprod.dtype)

    def predict_x0(self, eps: torch.Tensor, t: int, x_t: torch.Tensor) -> torch.Tensor:
        """x_0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped to [-1, 1] when ``clip_sample``."""
        abar = self._abar(t)
        x0 = (x_t - (1 - abar) ** 0.5 * eps) / abar ** 0.5
        return x0.clamp(-1, 1) if self.clip_sample else x0

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: int, prev: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_prev | x_t, x_0) (Ho et al. eqs. 6-7, generalised to a stride t -> prev)."""
        abar_t, abar_p = self._abar(t), self._abar(prev)
        a = abar_t / abar_p
        mean = (abar_p ** 0.5 * (1 - a) / (1 - abar_t)) * x0 + (a ** 0.5 * (1 - abar_p) / (1 - abar_t)) * x_t
        variance = ((1 - abar_p) / (1 - abar_t) * (1 - a)).clamp(min=1e-20)
        return mean, variance

    def ddpm_step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, noise: torch.Tensor,
                  steps: int | None = None) -> torch.Tensor:
        """One ancestral step t -> previous(t): the posterior mean at x_0_hat plus sigma * noise (none at t = 0)."""
        prev = self.previous(t, steps)
        mean, variance = self.posterior(self.predict_x0(eps, t, x_t), x_t, t, prev)
        return mean + variance ** 0.5 * noise if t > 0 else mean

    def ddim_step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, steps: int, eta: float = 0.0,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
        """One DDIM step t -> previous(t) (Song et al. eq. 12); ``noise`` is needed when ``eta > 0``."""
        prev = self.previous(t, steps)
        abar_t, abar_p = self._abar(t), self._abar(prev)
        x0 = self.predict_x0(eps, t, x_t)
        sigma = eta * ((1 - abar_p) / (1 - abar_t) * (1 - abar_t / abar_p)) ** 0.5
        x_prev = abar_p ** 0.5 * x0 + (1 - abar_p - sigma ** 2) ** 0.5 * eps
        if eta > 0:
            if noise is None:
                raise ValueError("ddim_step with eta > 0 needs noise")
            x_prev = x_prev + sigma * noise
        return x_prev
