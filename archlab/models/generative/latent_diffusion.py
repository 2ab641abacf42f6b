"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"):
a DDPM that lives in the code space of a separately trained, frozen autoencoder.

Two stages (their Sec. 3):

1. an autoencoder E, D trained on images alone -- here a finished ``conv_autoencoder`` run, copied into
   ``autoencoder`` by ``train.init_from`` (with ``train.init_rename = {"" = "autoencoder"}``);
2. a diffusion model on its codes, E and D fixed:

       z_0 = s E(x),          s = 1 / std(E(x) over the first training batch)      (``scale_factor``)
       t ~ U{0 .. T-1},  eps ~ N(0, I),  z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps
       loss = || eps - eps_theta(z_t, t) ||^2                                         (Ho et al.'s simple loss)

   Sampling runs the same DDPM / DDIM steps (:class:`~.schedule.NoiseSchedule`) from z_T ~ N(0, I) down
   to z_0 and decodes once: x = D(z_0 / s).

The scale factor is Rombach et al.'s: the noise schedule assumes data of about unit variance, and an
autoencoder's codes can be scaled arbitrarily, so the codes are divided by their standard deviation (one
scalar over every component, as their released code's ``scale_by_std``), measured on the first training
batch and kept as a buffer (0 until measured; saved with the model, restored on resume). Predicted z_0 is
not clipped (``clip_sample = False``): the codes are unbounded, unlike images in [-1, 1].

The autoencoder is frozen by the model itself (``requires_grad = False`` at construction, codes computed
under ``no_grad``): the diffusion loss would otherwise pull the encoder towards codes that are easy to
denoise -- ever smaller ones once s is fixed -- instead of codes that decode to images.

The denoiser. The conv autoencoder's code is a flat vector (16 numbers, no spatial grid), so a U-Net has
nothing to convolve; eps_theta is a residual MLP with the DDPM's sinusoidal time embedding:

    e = MLP(sin/cos(t)),  h_0 = W_in z_t,
    h_{l+1} = h_l + W_2 dropout(SiLU(W_1 SiLU(LN(h_l)) + W_e e)),     eps = W_out SiLU(LN(h_L))

the same block as the U-Net's residual block with linear layers instead of 3x3 convolutions.

The diffusion loop calls this model as it calls a DDPM: ``loss(x_0)`` takes images in [-1, 1] (the loop's
scaling) and encodes them, ``sample(n, ...)`` returns decoded images in [0, 1]; ``schedule`` and
``config.image_shape`` / ``config.num_steps`` are what the loop checks.

Shapes: ``forward(z_t, t)``: z_t (B, latent_dim), t (B,) integer steps -> eps (B, latent_dim);
``encode(x)``: x (B, C, H, W) in [-1, 1] -> z_0 (B, latent_dim); ``decode(z_0)`` -> (B, C, H, W) in [0, 1];
``sample(n, ...)`` -> (n, C, H, W) in [0, 1]; ``latent(x)`` / ``decode_images(z)`` the same with images in
[0, 1] (``archlab interpolate`` walks the scaled codes of test images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ArchlabError
from ...nn.unet import timestep_embedding
from ...registry import register
from ..base import ArchModel
from .conv_autoencoder import ConvAutoencoder, ConvAutoencoderConfig, check_image_shape
from .schedule import NoiseScheduleConfig


class ResMLPBlock(nn.Module):
    """h + W_2 dropout(SiLU(W_1 SiLU(LN(h)) + W_e e)): the U-Net's residual block on vectors.

    Shapes: h (B, width), e (B, t_dim) -> (B, width)."""

    def __init__(self, width: int, t_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm, self.fc1 = nn.LayerNorm(width), nn.Linear(width, width)
        self.time = nn.Linear(t_dim, width)
        self.fc2, self.dropout = nn.Linear(width, width), nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.dropout(F.silu(self.fc1(F.silu(self.norm(h))) + self.time(e))))


@dataclass
class LatentDiffusionConfig(NoiseScheduleConfig):
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); H and W divisible by 4 (the autoencoder's)."""
    ae_channels: int = 32
    """The autoencoder's ``channels`` (must match the run ``train.init_from`` names)."""
    latent_dim: int = 16
    """The autoencoder's ``latent_dim``: the size of the codes the diffusion runs on."""
    width: int = 256
    """Hidden width of the denoiser MLP."""
    depth: int = 4
    """Residual blocks of the denoiser."""
    time_dim: int = 64
    """Size of the sinusoidal time code (the embedding MLP maps it to ``width``)."""
    dropout: float = 0.0
    clip_sample: bool = False
    """Clip the predicted z_0 to [-1, 1] in every sampler step (off: codes are unbounded)."""

    def __post_init__(self) -> None:
        check_image_shape(self.image_shape)
        if not 1 <= self.ae_channels <= 4096 or not 1 <= self.latent_dim <= 65536:
            raise ValueError("need 1 <= ae_channels <= 4096 and 1 <= latent_dim <= 65536")
        if not 1 <= self.width <= 65536 or not 1 <= self.depth <= 64 or not 0 <= self.dropout < 1:
            raise ValueError("need 1 <= width <= 65536, 1 <= depth <= 64 and 0 <= dropout < 1")
        if not 2 <= self.time_dim <= 4096 or self.time_dim % 2:
            raise ValueError(f"time_dim must be even and in [2, 4096], got {self.time_dim}")
        NoiseScheduleConfig.__post_init__(self)


@register("latent_diffusion", family="generative")
class LatentDiffusion(ArchModel):
    """DDPM on the scaled codes of a frozen conv autoencoder, with a residual-MLP noise predictor."""

    config_class = LatentDiffusionConfig
    can_sample: ClassVar[bool] = True

    def __init__(self, config: LatentDiffusionConfig) -> None:
        super().__init__(config)
        c = config
        self.schedule = c.noise_schedule()
        self.autoencoder = ConvAutoencoder(ConvAutoencoderConfig(list(c.image_shape), c.ae_channels, c.latent_dim))
        self.autoencoder.requires_grad_(False)
        self.register_buffer("scale_factor", torch.zeros(()))
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.inp = nn.Linear(c.latent_dim, c.width)
        self.blocks = nn.ModuleList(ResMLPBlock(c.width, c.width, c.dropout) for _ in range(c.depth))
        self.norm_out, self.out = nn.LayerNorm(c.width), nn.Linear(c.width, c.latent_dim)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_theta(z_t, t): (B, latent_dim), (B,) -> (B, latent_dim)."""
        e = self.time_mlp(timestep_embedding(t, self.config.time_dim))
        h = self.inp(z)
        for block in self.blocks:
            h = block(h, e)
        return self.out(F.silu(self.norm_out(h)))

    # ---------------------------------------------------------------- codes <-> images

    @torch.no_grad()
    def measure_scale(self, x: torch.Tensor) -> float:
        """Set ``scale_factor`` = 1 / std(E(x)) over every component of a batch x in [-1, 1]; return it."""
        z = self.autoencoder.latent(((x + 1) / 2).float()).float()
        std = float(z.std())
        if not std > 0:
            raise ArchlabError("latent_diffusion: the autoencoder's codes of the first batch do not vary "
                               "(std 0); cannot scale them to unit variance")
        self.scale_factor.fill_(1 / std)
        return 1 / std

    def _scale(self) -> torch.Tensor:
        if not float(self.scale_factor) > 0:
            raise ArchlabError("latent_diffusion: the latent scale factor is not measured yet (the first training "
                               "batch measures it); train the model before sampling or scoring it")
        return self.scale_factor

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) -> scaled codes z_0 = s E(x) (B, latent_dim)."""
        return self.latent((x + 1) / 2)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled codes (B, latent_dim) -> images D(z / s) in [0, 1] (B, C, H, W)."""
        return self.autoencoder.decode_images(z.float() / self._scale())

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> scaled codes s E(x) (what ``archlab interpolate`` walks between)."""
        return self.autoencoder.latent(x).float() * self._scale()

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    # ---------------------------------------------------------------- what the diffusion loop calls

    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ho et al.'s simple loss on the codes of a batch of images x0 (B, C, H, W) in [-1, 1]; the first
        batch seen in training mode measures the scale factor."""
        if self.training and not float(self.scale_factor) > 0:
            self.measure_scale(x0)
        z0 = self.encode(x0)
        b = len(z0)
        t = torch.randint(self.config.num_steps, (b,), generator=generator).to(z0.device)
        eps = torch.randn(z0.shape, generator=generator).to(z0.device)
        return F.mse_loss(self(self.schedule.to(z0.device).add_noise(z0, eps, t), t).float(), eps)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, steps: int | None = 50,
               sampler: Literal["ddim", "ddpm"] = "ddim", eta: float = 0.0, batch: int = 500) -> torch.Tensor:
        """``n`` images in [0, 1] (n, C, H, W): z_T ~ N(0, I), DDIM with ``steps`` steps and ``eta`` (or DDPM
        ancestral sampling over ``steps``, None: all T) in code space, then D(z_0 / s); ``batch`` at a time."""
        device = next(self.parameters()).device
        s = self.schedule.to(device)
        self._scale()
        out = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            z = torch.randn(m, self.config.latent_dim, generator=generator).to(device)
            for t in s.timesteps(steps):
                eps = self(z, torch.full((m,), t, device=device, dtype=torch.long)).float()
                noise = torch.randn(z.shape, generator=generator).to(device) if (sampler == "ddpm" or eta > 0) else None
                if sampler == "ddpm":
                    z = s.ddpm_step(eps, t, z, noise, steps)
                else:
                    z = s.ddim_step(eps, t, z, steps or s.num_steps, eta, noise)
            out.append(self.decode(z))
        return torch.cat(out)

    @classmethod
    def example_input(cls, config: LatentDiffusionConfig, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, config.latent_dim), torch.randint(config.num_steps, (batch_size,))
