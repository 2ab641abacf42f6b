"""Score-based generative model: a noise-conditional score network s_theta(x, sigma) trained by denoising
score matching over noise levels (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the
Data Distribution", NCSN), sampled by annealed Langevin dynamics (their Algorithm 1) or by the
probability-flow ODE of the variance-exploding SDE (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations").

Noise levels. sigma_min = sigma_L < ... < sigma_1 = sigma_max, geometric; continuously
sigma(u) = sigma_min (sigma_max / sigma_min)^u, u in [0, 1] (the VE SDE's sigma(t)). ``ladder()`` is the L
levels sigma_1 > ... > sigma_L that annealed Langevin walks down.

Training: denoising score matching (Vincent 2011) at every level, weighted by lambda(sigma) = sigma^2
(Song & Ermon 2019, eqs. 5-6):

    x~ = x + sigma z,  z ~ N(0, I);   grad_x~ log q_sigma(x~ | x) = -(x~ - x) / sigma^2 = -z / sigma
    l(theta; sigma) = 1/2 E || s_theta(x~, sigma) + (x~ - x) / sigma^2 ||^2       (sum over the D pixels)
    L(theta) = E_sigma [ lambda(sigma) l(theta; sigma) ]

with sigma drawn per image: uniformly from the ladder (``noise_sampling = "ladder"``, NCSN) or as sigma(u),
u ~ U(0, 1) (``"continuous"``, the VE SDE; the probability-flow ODE needs the score between the levels).

Parametrisation: s_theta(x, sigma) = F(c_in(sigma) x, c_noise(sigma)) / sigma with the U-Net F of
:mod:`archlab.nn.unet`. Dividing by sigma is Song & Ermon 2020's Technique 3 (the true score's norm scales as
1 / sigma); c_in = 1 / sqrt(sigma^2 + sigma_data^2) keeps the U-Net's input at unit scale over the 10^3-fold
range of sigma (Karras et al. 2022's input preconditioning); c_noise = 999 ln(sigma / sigma_min) /
ln(sigma_max / sigma_min) places log sigma on the 0..999 range of the DDPM's sinusoidal time code. With
lambda = sigma^2 the loss becomes 1/2 || F + z ||^2: the network predicts -z, as a DDPM predicts its noise.

``preconditioning = "skip"`` instead builds the denoiser D = c_skip x + c_out F (Karras et al. 2022, Table 1:
c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)) and
s_theta = (D - x) / sigma^2 (Tweedie) = -x / (sigma^2 + sigma_data^2) + c_out F / sigma^2: the score of
N(0, sigma_data^2 I) data plus a learned correction, so an error delta of F costs c_out delta <= sigma_data delta
in D instead of sigma delta at large sigma. The loss keeps lambda = sigma^2 (= || D - x ||^2 / (2 sigma^2)).

Samplers (module functions driven by any score function, so the tests can run them on an analytic score):

- :func:`annealed_langevin` (Algorithm 1): for i = 1..L, alpha_i = eps sigma_i^2 / sigma_L^2, T steps
  x <- x + alpha_i / 2 s(x, sigma_i) + sqrt(alpha_i) z; then optionally one denoising step
  x <- x + sigma_L^2 s(x, sigma_L) (Tweedie's E[x_0 | x]; Jolicoeur-Martineau et al. 2021).
- :func:`probability_flow` : the VE SDE dx = sqrt(d sigma^2 / dt) dw has the probability-flow ODE
  dx/dt = -1/2 (d sigma^2 / dt) grad log p_t(x), i.e. dx / d sigma = -sigma grad_x log p(x; sigma). Integrated
  from x ~ N(0, sigma_max^2 I) over ``steps`` geometric levels down to sigma_min by Euler or Heun
  (Karras et al. 2022, Alg. 1), and a last Euler step from sigma_min to 0 (which is the denoising step above).

Shapes: ``forward(x, sigma)``: x (B, C, H, W), sigma (B,) > 0 -> score (B, C, H, W);
``sample(n, sampler=...)`` -> (n, C, H, W) in [0, 1] (data were scaled to [-1, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ...nn.unet import UNetConfig, UNetMixin, timestep_embedding
from ...registry import register
from ..base import ArchModel

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""s(x, sigma): x (B, ...), sigma (B,) -> the score of the data smoothed by N(0, sigma^2 I) at x, (B, ...)."""


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    """n levels from sigma_max down to sigma_min, equally spaced in log sigma (float64, (n,))."""
    if n == 1:
        return torch.tensor([float(sigma_max)], dtype=torch.float64)
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))


def _level(sigma: float, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n,), float(sigma), dtype=like.dtype, device=like.device)


@torch.no_grad()
def annealed_langevin(score: ScoreFn, x: torch.Tensor, sigmas: torch.Tensor, steps: int, eps: float,
                      generator: torch.Generator | None = None, denoise: bool = True) -> torch.Tensor:
    """Song & Ermon 2019, Algorithm 1, from ``x`` (B, ...) over the decreasing levels ``sigmas`` (L,):
    ``steps`` = T Langevin steps per level with step size alpha_i = eps sigma_i^2 / sigma_L^2; ``denoise``
    adds x + sigma_L^2 s(x, sigma_L). The noise z comes from ``generator`` (on the CPU)."""
    sigma_last = float(sigmas[-1])
    for sigma in sigmas.tolist():
        alpha = eps * sigma**2 / sigma_last**2
        level = _level(sigma, len(x), x)
        for _ in range(steps):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = x + alpha / 2 * score(x, level) + math.sqrt(alpha) * z
    if denoise:
        x = x + sigma_last**2 * score(x, _level(sigma_last, len(x), x))
    return x


@torch.no_grad()
def probability_flow(score: ScoreFn, x: torch.Tensor, sigmas: torch.Tensor,
                     method: Literal["euler", "heun"] = "heun") -> torch.Tensor:
    """Integrate dx / d sigma = -sigma s(x, sigma) from x at sigmas[0] through the decreasing ``sigmas``
    (N,), then one Euler step to sigma = 0. Heun: x' = x + h d(x, sigma_i), x <- x + h (d(x, sigma_i) +
    d(x', sigma_{i+1})) / 2 with h = sigma_{i+1} - sigma_i (2 score evaluations per step; Euler: 1).
    Deterministic: the same x gives the same output."""
    levels = sigmas.tolist() + [0.0]

    def slope(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return -sigma * score(x, _level(sigma, len(x), x))

    for sigma, nxt in zip(levels[:-1], levels[1:], strict=True):
        d = slope(x, sigma)
        x_next = x + (nxt - sigma) * d
        if method == "heun" and nxt > 0:
            x_next = x + (nxt - sigma) * (d + slope(x_next, nxt)) / 2
        x = x_next
    return x


@dataclass
class ScoreConfig(UNetConfig):
    sigma_min: float = 0.01
    """sigma_L, the smallest noise level (in the units of the data, scaled to [-1, 1])."""
    sigma_max: float = 32.0
    """sigma_1, the largest: about the largest distance between two training images (Song & Ermon 2020,
    Technique 1; 32.8 among 10,000 MNIST digits in [-1, 1])."""
    num_scales: int = 10
    """L, the levels of the ladder (annealed Langevin; training with ``noise_sampling = "ladder"``)."""
    noise_sampling: Literal["ladder", "continuous"] = "continuous"
    """Training noise levels: uniform over the L-level ladder (NCSN) or log-uniform on [sigma_min, sigma_max]
    (the VE SDE)."""
    sigma_data: float = 0.5
    """Data scale in c_in = 1 / sqrt(sigma^2 + sigma_data^2) (and in c_skip, c_out)."""
    preconditioning: Literal["ncsn", "skip"] = "ncsn"
    """s = F / sigma (Song & Ermon's output scaling) or s = (c_skip x + c_out F - x) / sigma^2 (Karras et al.)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.sigma_min < self.sigma_max <= 1e4:
            raise ValueError(f"need 0 < sigma_min < sigma_max <= 1e4, got {self.sigma_min}, {self.sigma_max}")
        if not 2 <= self.num_scales <= 10_000 or not 0 < self.sigma_data <= 100:
            raise ValueError("need 2 <= num_scales <= 10000 and 0 < sigma_data <= 100")


@register("score", family="generative")
class ScoreModel(UNetMixin, ArchModel):
    """Noise-conditional score network s_theta(x, sigma) (U-Net), its DSM loss and two samplers."""

    config_class = ScoreConfig
    can_sample: ClassVar[bool] = True

    def __init__(self, config: ScoreConfig) -> None:
        super().__init__(config)
        c = config
        emb_dim = 4 * c.channels
        self.noise_mlp = nn.Sequential(nn.Linear(c.channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.build_unet(c.image_shape[0], c.channels, c.channel_mult, c.num_res_blocks, c.groups, c.dropout, emb_dim)

    def ladder(self, n: int | None = None) -> torch.Tensor:
        """The n (default L) geometric levels sigma_max > ... > sigma_min, float64."""
        return geometric_sigmas(self.config.sigma_max, self.config.sigma_min, n or self.config.num_scales)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """s_theta(x, sigma) = F(c_in x, c_noise) / sigma (or with the skip, see the module docstring);
        x (B, C, H, W), sigma (B,) -> (B, C, H, W)."""
        c = self.config
        sigma = sigma.to(device=x.device, dtype=torch.float32)
        c_in = (sigma**2 + c.sigma_data**2).rsqrt().view(-1, 1, 1, 1)
        c_noise = 999 * torch.log(sigma / c.sigma_min) / math.log(c.sigma_max / c.sigma_min)
        emb = self.noise_mlp(timestep_embedding(c_noise, c.channels))
        f, sigma = self.unet(c_in * x, emb), sigma.view(-1, 1, 1, 1)
        if c.preconditioning == "ncsn":
            return f / sigma
        c_out = sigma * c.sigma_data * c_in
        return -x * c_in**2 + c_out * f / sigma**2  # ((c_skip - 1) x + c_out F) / sigma^2

    def draw_sigmas(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n training levels (n,): uniform over the ladder, or sigma(u) with u ~ U(0, 1) (``noise_sampling``)."""
        c = self.config
        if c.noise_sampling == "ladder":
            return self.ladder().float()[torch.randint(c.num_scales, (n,), generator=generator)]
        u = torch.rand(n, generator=generator)
        return c.sigma_min * (c.sigma_max / c.sigma_min) ** u

    def dsm_loss(self, x0: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of lambda(sigma) l = sigma^2 / 2 || s_theta(x0 + sigma z, sigma) + z / sigma ||^2
        (summed over pixels); x0, z (B, C, H, W), sigma (B,)."""
        s = sigma.to(x0.device).float().view(-1, 1, 1, 1)
        x_noisy = x0 + s * z
        target = -(x_noisy - x0) / s**2  # grad log N(x~; x0, sigma^2 I)
        per_image = 0.5 * s.flatten() ** 2 * (self(x_noisy, s.flatten()).float() - target).pow(2).flatten(1).sum(1)
        return per_image.mean()

    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The DSM loss of a batch x0 (B, C, H, W) in [-1, 1] with sigma and z drawn from ``generator``."""
        sigma = self.draw_sigmas(len(x0), generator)
        z = torch.randn(x0.shape, generator=generator).to(x0.device)
        return self.dsm_loss(x0, sigma, z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, sampler: Literal["ode", "langevin"] = "ode",
               steps: int | None = None, method: Literal["euler", "heun"] = "heun", eps: float = 2e-5,
               denoise: bool = True, batch: int = 500) -> torch.Tensor:
        """``n`` images in [0, 1] (n, C, H, W) from x ~ N(0, sigma_max^2 I), ``batch`` at a time.

        ``sampler = "ode"``: the probability-flow ODE over ``steps`` (default 30) geometric levels by ``method``;
        ``"langevin"``: annealed Langevin over the L-level ladder, ``steps`` (default 100) per level, step size
        ``eps`` (alpha_L), ``denoise`` the final Tweedie step (Song & Ermon 2019's T = 100, eps = 2e-5)."""
        device = next(self.parameters()).device
        c = self.config
        out = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            x = c.sigma_max * torch.randn(m, *c.image_shape, generator=generator).to(device)
            if sampler == "ode":
                x = probability_flow(self, x, self.ladder(steps or 30), method)
            else:
                x = annealed_langevin(self, x, self.ladder(), steps or 100, eps, generator, denoise)
            out.append(((x + 1) / 2).clamp(0, 1))
        return torch.cat(out)

    @classmethod
    def example_input(cls, config: ScoreConfig, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = config.sigma_min * (config.sigma_max / config.sigma_min) ** torch.rand(batch_size)
        return torch.randn(batch_size, *config.image_shape), sigma
