"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning"): a
convolutional autoencoder whose code is a grid of entries of a learned codebook.

    z_e = enc(x)                           (B, D, h, w): one D-vector per cell of the downsampled grid
    k   = argmin_j || z_e - e_j ||^2       nearest of the K codebook vectors e_1..e_K (D each)     (eq. 1)
    z_q = e_k;   x_hat = dec(z_q)
    loss = -log p(x | z_q) + || sg[z_e] - e ||^2 + beta || z_e - sg[e] ||^2                          (eq. 3)

The argmin has no gradient: the **straight-through estimator** copies the decoder's gradient from z_q to
z_e (``z_e + sg[z_q - z_e]``). The middle term moves the codebook towards the encoder outputs; with
``ema = true`` it is replaced by exponential moving averages (their Appendix A.1), updated in every
training forward pass:

    N_j <- g N_j + (1 - g) n_j,    m_j <- g m_j + (1 - g) sum_{i: k_i = j} z_e,i,    e_j = m_j / N~_j

(n_j: cells assigned to j in the batch; g = ``decay``; N~ is N with Laplace smoothing, so an unused
code does not divide by zero). ``beta`` weighs the **commitment loss** that keeps z_e near its code
(0.25 in the paper); ``restart_dead`` re-seeds codes that fell out of use (Jukebox's codebook
reset). Reconstruction is Bernoulli cross-entropy in nats per image (grey levels in [0, 1]
as targets), comparable with the autoencoder's.

The codebook starts as K encoder outputs of the first training batch. Codebook health:
``code_counts(x)`` (K,) counts of the codes the images use; the elbo loop turns them into ``usage``
(fraction of codes used) and ``perplexity`` exp(H(p)), p = counts / sum (K when every code is used
equally, 1 when one code takes everything).

Shapes: x (B, C, H, W) in [0, 1], H and W divisible by 2^downsample -> z_e, z_q (B, D, H / 2^s, W / 2^s),
logits (B, C, H, W); ``latent(x)`` -> (B, D h w) flattened z_e; ``decode_images(z)`` quantizes z and
decodes it -> (n, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import register
from ..base import ArchModel


class Residual(nn.Module):
    """x + 1x1(ReLU(3x3(ReLU(x)))) (the paper's residual block). Shapes: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@dataclass
class VQVAEConfig:
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """Shape of one image (C, H, W); H and W must be divisible by 2^downsample."""
    hidden: int = 64
    """Channels of the encoder and decoder."""
    downsample: int = 2
    """Stride-2 4x4 convolutions in the encoder (transposed ones in the decoder): 28 -> 14 -> 7."""
    res_blocks: int = 2
    """Residual blocks at the lowest resolution, in the encoder and in the decoder."""
    embed_dim: int = 16
    """D, the size of a codebook vector."""
    codebook_size: int = 64
    """K, the codebook's entries."""
    beta: float = 0.25
    """Weight of the commitment loss."""
    ema: bool = True
    """Update the codebook by moving averages (else by the codebook loss, with the optimizer)."""
    decay: float = 0.99
    """g, the moving averages' decay."""
    restart_dead: float = 0.0
    """EMA codebooks: a code used by fewer than this many cells per batch (moving average) restarts at a
    random encoder output of the batch (Dhariwal et al. 2020, "Jukebox", Sec. 2.3; not in the VQ-VAE
    paper); 0: never."""

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or not all(1 <= s <= 4096 for s in self.image_shape):
            raise ValueError(f"image_shape must be [C, H, W] with sizes in [1, 4096], got {self.image_shape}")
        if not 0 <= self.downsample <= 6 or any(s % 2 ** self.downsample for s in self.image_shape[1:]):
            raise ValueError(f"H and W of {self.image_shape} must be divisible by 2^downsample "
                             f"= {2 ** self.downsample}")
        if not 1 <= self.hidden <= 4096 or not 0 <= self.res_blocks <= 16 or not 1 <= self.embed_dim <= 4096:
            raise ValueError("need 1 <= hidden <= 4096, 0 <= res_blocks <= 16 and 1 <= embed_dim <= 4096")
        if not 2 <= self.codebook_size <= 65536 or not 0 <= self.beta <= 100 or not 0 < self.decay < 1:
            raise ValueError("need 2 <= codebook_size <= 65536, 0 <= beta <= 100 and 0 < decay < 1")
        if not 0 <= self.restart_dead <= 1e6:
            raise ValueError(f"restart_dead must be in [0, 1e6], got {self.restart_dead}")


@register("vqvae", family="generative")
class VQVAE(ArchModel):
    """Conv encoder, a K x D codebook (EMA or learned), conv decoder with Bernoulli outputs."""

    config_class = VQVAEConfig
    can_sample: ClassVar[bool] = False  # a VQ-VAE samples through a prior over codes, which is a second model

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__(config)
        c = config
        enc: list[nn.Module] = []
        ch = c.image_shape[0]
        for _ in range(c.downsample):
            enc += [nn.Conv2d(ch, c.hidden, 4, stride=2, padding=1), nn.ReLU()]
            ch = c.hidden
        enc += [nn.Conv2d(ch, c.hidden, 3, padding=1), *[Residual(c.hidden) for _ in range(c.res_blocks)], nn.ReLU(),
                nn.Conv2d(c.hidden, c.embed_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(c.embed_dim, c.hidden, 3, padding=1),
                                *[Residual(c.hidden) for _ in range(c.res_blocks)]]
        for i in range(c.downsample):
            last = i == c.downsample - 1
            dec += [nn.ReLU(), nn.ConvTranspose2d(c.hidden, c.image_shape[0] if last else c.hidden, 4, 2, 1)]
        if not c.downsample:
            dec += [nn.ReLU(), nn.Conv2d(c.hidden, c.image_shape[0], 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        codebook = torch.randn(c.codebook_size, c.embed_dim)
        if c.ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(c.codebook_size))
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def _init_codebook(self, z_e: torch.Tensor) -> None:
        """Before the first training step: the codebook becomes K random encoder outputs of the first batch
        (as k-means++ seeding would start), so every code begins where the data is."""
        flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, self.config.embed_dim)
        pick = flat[torch.randint(len(flat), (self.config.codebook_size,), device=flat.device)]
        self.codebook.copy_(pick)
        if self.config.ema:
            self.ema_sum.copy_(pick)
        self.initialized.fill_(True)

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codebook entries: z_e (B, D, h, w) -> (z_q (B, D, h, w), codes (B, h, w)), in float32."""
        flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])                        # (N, D)
        e = self.codebook.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.T + e.pow(2).sum(1)[None]          # (N, K)
        codes = dist.argmin(1)
        b, _, h, w = z_e.shape
        z_q = e[codes].view(b, h, w, -1).permute(0, 3, 1, 2)
        return z_q, codes.view(b, h, w)

    @torch.no_grad()
    def _ema_update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        c = self.config
        flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, c.embed_dim)
        onehot = F.one_hot(codes.flatten(), c.codebook_size).float()                             # (N, K)
        self.ema_count.lerp_(onehot.sum(0), 1 - c.decay)
        self.ema_sum.lerp_(onehot.T @ flat, 1 - c.decay)
        if c.restart_dead:  # codes whose average use fell below `restart_dead` cells per batch restart on data
            dead = self.ema_count < c.restart_dead
            if dead.any():
                pick = flat[torch.randint(len(flat), (int(dead.sum()),), device=flat.device)]
                self.ema_sum[dead] = pick
                self.ema_count[dead] = 1.0
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + c.codebook_size * 1e-5) * n                    # Laplace
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (logits, z_e, z_q, codes); z_q carries the straight-through gradient to z_e."""
        z_e = self.encoder(x.view(len(x), *self.config.image_shape))
        z_q, codes = self.quantize(z_e)
        z_st = z_e + (z_q - z_e.float()).detach().to(z_e.dtype)                                   # straight through
        return self.decoder(z_st), z_e, z_q, codes

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image terms (B,): ``loss``, ``rec`` (-log p(x | z_q), nats), ``commit`` (||z_e - sg e||^2,
        summed over the code grid). A training-mode call also moves the EMA codebook."""
        x = x.view(len(x), *self.config.image_shape)
        if self.training and not self.initialized:
            self._init_codebook(self.encoder(x))
        logits, z_e, z_q, codes = self(x)
        rec = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)
        commit = (z_e.float() - z_q.detach()).pow(2).flatten(1).sum(1)
        loss = rec + self.config.beta * commit
        if self.config.ema:
            if self.training:
                self._ema_update(z_e, codes)
        else:
            loss = loss + (z_e.float().detach() - z_q).pow(2).flatten(1).sum(1)                  # codebook loss
        return {"loss": loss, "rec": rec, "commit": commit}

    @torch.no_grad()
    def code_counts(self, x: torch.Tensor) -> torch.Tensor:
        """How often each codebook entry encodes the cells of images x: (K,) counts."""
        _, codes = self.quantize(self.encoder(x.view(len(x), *self.config.image_shape)))
        return torch.bincount(codes.flatten(), minlength=self.config.codebook_size)

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """z_e flattened (B, D h w): the continuous code interpolations walk between."""
        return self.encoder(x.view(len(x), *self.config.image_shape)).flatten(1)

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        """Quantize flattened codes (n, D h w) and decode them to Bernoulli means (n, C, H, W)."""
        c = self.config
        side = [s // 2 ** c.downsample for s in c.image_shape[1:]]
        z_q, _ = self.quantize(z.view(len(z), c.embed_dim, *side))
        return self.decoder(z_q).sigmoid()

    @classmethod
    def example_input(cls, config: VQVAEConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.rand(batch_size, *config.image_shape)

