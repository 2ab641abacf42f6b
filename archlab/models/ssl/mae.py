"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al. 2022), on archlab's ViT.

Most patches of each image are hidden; the ViT encoder sees only the visible ones (no mask tokens in
the encoder -- the paper's main efficiency point), and a light transformer decoder reconstructs the
pixels of the hidden ones:

    shuffle the N patches per image (argsort of uniform noise); keep the first V = N - round(r N)
    e   = ViT layers([cls; E x_visible] + E_pos)            (encoder, visible patches only; Sec. 3)
    d   = Linear(e) ; insert a learned mask token at every hidden position ; unshuffle ; + D_pos
    x^  = Linear(decoder layers(d))                           (P * P * C pixel values per patch)
    L   = mean over hidden patches of || x^_p - t_p ||^2 / (P P C)   (the loss sees hidden patches only)

with ``t_p`` the patch's pixels, standardised per patch when ``norm_pix_loss`` (their Table 1d).
The representation the probes read is the full encoder on the unmasked image, ``LN(z_L)`` pooled as
the ViT config says (class token or mean of the patch tokens).

Shapes:
    x: ``[B, C, S, S]`` -> ``forward`` gives the reconstruction ``[B, N, P * P * C]`` (under a fixed
    mask); ``features`` ``[B, dim]`` (the ViT's width)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ArchlabError
from ...nn.transformer import TransformerLayer
from ...registry import build_config, create, register
from .base import EncoderConfig, SSLModel, encoder_config


@dataclass
class MAEConfig(EncoderConfig):
    encoder: str = "vit"
    """the encoder: a registered ViT (its head is not used)"""
    mask_ratio: float = 0.75
    """share of patches hidden from the encoder (75% in the paper)"""
    decoder_dim: int = 64
    """width of the decoder (512 in the paper)"""
    decoder_depth: int = 2
    """decoder transformer layers (8 in the paper; 1 already works, their Table 1a)"""
    decoder_heads: int = 4
    """attention heads of the decoder layers"""
    norm_pix_loss: bool = True
    """regress per-patch standardised pixels (their Table 1d: better representations)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if min(self.decoder_dim, self.decoder_depth, self.decoder_heads) < 1 or self.decoder_dim % self.decoder_heads:
            raise ValueError("decoder_dim, decoder_depth, decoder_heads >= 1 and decoder_dim divisible by heads")
        if "head" in self.encoder_config:
            raise ValueError("encoder_config.head is set by MAE (no classifier); remove it")


def patchify(x: Tensor, p: int) -> Tensor:
    """``[B, C, S, S]`` -> ``[B, N, P * P * C]`` in the ViT's row-major patch order."""
    b, c, s, _ = x.shape
    g = s // p
    return x.view(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * c)


def unpatchify(patches: Tensor, p: int, c: int) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, N, P * P * C]`` -> ``[B, C, S, S]``."""
    b, n, _ = patches.shape
    g = int(round(n ** 0.5))
    return patches.view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)


def random_masking(b: int, n: int, ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Per-image random subset of ``V = n - round(ratio n)`` visible patches.

    Returns ``keep`` ``[B, V]`` (indices of the visible patches), ``restore`` ``[B, N]`` (undoes the
    shuffle) and ``mask`` ``[B, N]`` (1 = hidden, in the original patch order).
    """
    hidden = int(round(ratio * n))
    if not 0 < hidden < n:
        raise ArchlabError(f"mask_ratio {ratio} hides {hidden} of {n} patches: at least one must be hidden "
                           "and one visible")
    noise = torch.rand(b, n, generator=generator).to(device)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    keep = shuffle[:, :n - hidden]
    mask = torch.ones(b, n, device=device)
    mask[:, :n - hidden] = 0
    return keep, restore, mask.gather(1, restore)


class MaskedViT:
    """What the masked-image models (MAE, SimMIM) share: a ViT encoder without head (``self.encoder``),
    its example input, the class-token (or mean-pooled) features a probe reads, and the state of the model's
    own mask generator ``self.mask_gen`` (saved in the loop's checkpoint)."""

    encoder: nn.Module
    mask_gen: torch.Generator

    @staticmethod
    def _vit_keys(config: EncoderConfig) -> dict[str, Any]:
        return {**config.encoder_config, "head": "none"}

    @classmethod
    def example_input(cls, config: EncoderConfig, batch_size: int = 2) -> Tensor:
        from ...registry import get

        vit = build_config(config.encoder, cls._vit_keys(config), "model.encoder_config")
        return get(config.encoder).cls.example_input(vit, batch_size)

    def features(self, x: Tensor) -> Tensor:
        h = self.encoder.features(x).last_hidden_state                         # [B, N + 1, D]
        return h[:, 0] if self.encoder.config.pool == "cls" else h[:, 1:].mean(1)

    def projection(self, x: Tensor) -> Tensor:
        return self.features(x)

    def check_encoder_output(self, x: Tensor) -> None:
        with torch.no_grad():
            self.eval().features(x)

    def rng_state(self) -> dict[str, Tensor]:
        return {"mask_gen": self.mask_gen.get_state()}

    def load_rng_state(self, state: dict[str, Tensor]) -> None:
        self.mask_gen.set_state(state["mask_gen"])


@register("mae", family="ssl")
class MAE(MaskedViT, SSLModel):
    """MAE (He et al. 2022): ViT encoder on the visible 25% of patches, light decoder, pixel loss on the rest."""

    config_class = MAEConfig
    export_blocker = ("its forward draws a random patch mask from the model's own torch.Generator: the output "
                      "is not a function of the input alone")
    num_views = 1

    def __init__(self, config: MAEConfig) -> None:
        super().__init__(config)
        encoder_config(config)  # family and keys checked with the recipe's paths
        self.encoder = create(config.encoder, **self._vit_keys(config))
        vit = self.encoder.config
        if not hasattr(self.encoder, "patch_embed"):
            raise ArchlabError(f"model.encoder: MAE needs a ViT encoder, got {config.encoder!r}")
        self.patch, self.channels, self.feature_dim = vit.patch_size, vit.in_channels, vit.dim
        n = (vit.image_size // vit.patch_size) ** 2
        self.decoder_embed = nn.Linear(vit.dim, config.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, n + 1, config.decoder_dim))
        self.decoder = nn.ModuleList(
            TransformerLayer(config.decoder_dim, config.decoder_heads, 4 * config.decoder_dim, norm_first=True,
                             eps=1e-6, activation="gelu")
            for _ in range(config.decoder_depth))
        self.decoder_norm = nn.LayerNorm(config.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(config.decoder_dim, self.patch * self.patch * self.channels)
        self.projector = nn.Identity()
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        self.mask_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))


    def reconstruct(self, x: Tensor, keep: Tensor, restore: Tensor) -> Tensor:
        """Encoder on the patches ``keep`` only, decoder on all positions: ``[B, N, P * P * C]``."""
        vit = self.encoder
        size = vit.config.image_size
        if x.shape[-2:] != (size, size):
            raise ValueError(f"expected {size}x{size} images, got {tuple(x.shape[-2:])}")
        b = len(x)
        tokens = vit.patch_embed(x).flatten(2).transpose(1, 2) + vit.pos_embed[:, 1:]   # [B, N, D]
        visible = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # [B, V, D]
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(b, -1, -1)
        h = torch.cat([cls, visible], dim=1)
        for layer in vit.layers:
            h = layer(h)
        h = self.decoder_embed(vit.norm(h))                                     # [B, V + 1, Dd]
        n = restore.shape[1]
        filled = torch.cat([h[:, 1:], self.mask_token.expand(b, n - keep.shape[1], -1)], dim=1)
        filled = filled.gather(1, restore.unsqueeze(-1).expand(-1, -1, h.shape[-1]))     # original order
        d = torch.cat([h[:, :1], filled], dim=1) + self.decoder_pos
        for layer in self.decoder:
            d = layer(d)
        return self.decoder_pred(self.decoder_norm(d))[:, 1:]

    def targets(self, x: Tensor) -> Tensor:
        t = patchify(x, self.patch)
        if self.config.norm_pix_loss:
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        return t

    def masked_loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error per pixel, averaged over the hidden patches only (``mask`` = 1)."""
        per_patch = (prediction - target).pow(2).mean(-1)                        # [B, N]
        return (per_patch * mask).sum() / mask.sum()

    def _mask(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        n = (self.encoder.config.image_size // self.patch) ** 2
        return random_masking(len(x), n, self.config.mask_ratio, generator, x.device)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction under a fixed (seed 0) mask, so the same input gives the same output."""
        keep, restore, _ = self._mask(x, torch.Generator().manual_seed(0))
        return self.reconstruct(x, keep, restore)

    def ssl_loss(self, view: Tensor, *_: Tensor) -> Tensor:
        """Training loss; masks come from the model's own generator (its state is in the loop's checkpoint)."""
        keep, restore, mask = self._mask(view, self.mask_gen)
        return self.masked_loss(self.reconstruct(view, keep, restore).float(), self.targets(view.float()), mask)
