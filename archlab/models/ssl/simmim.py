"""SimMIM: a Simple Framework for Masked Image Modeling (Xie et al. 2022), on archlab's ViT.

Unlike MAE, the encoder sees *every* position: the embeddings of the hidden patches are replaced by
one learned mask token, and a single linear layer predicts raw pixels (their Sec. 3):

    e_p = E x_p                       for visible patches p
    e_p = m                           for hidden patches (m: the learned mask token, [D])
    z   = ViT layers([cls; e] + E_pos) ; LN           (encoder over all N + 1 tokens)
    x^_p = W z_p + b                  (linear prediction head, P * P * C raw pixel values per patch)
    L   = sum_{p hidden} || x^_p - x_p ||_1 / (#hidden * P * P * C)   (l1 on the hidden patches only)

Masking is random over square blocks of ``mask_patch_size`` pixels (the paper masks 32x32 blocks of a
ViT with 16x16 patches, ratio 0.6; on 28x28 MNIST with 7x7 patches the default block is one patch).
Targets are the input's pixels as the data gives them (archlab's MNIST is standardised); SimMIM
regresses raw pixels with an l1 loss (their ablations find l1, smooth-l1 and l2 about equal).

The representation the probes read is the encoder on the unmasked image, pooled as the ViT config says.

Shapes:
    x: ``[B, C, S, S]`` -> ``forward`` gives the prediction ``[B, N, P * P * C]`` (under a fixed mask);
    ``features`` ``[B, dim]``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import ArchlabError
from ...registry import create, register
from .base import EncoderConfig, SSLModel, encoder_config
from .mae import MaskedViT, patchify, random_masking


@dataclass
class SimMIMConfig(EncoderConfig):
    encoder: str = "vit"
    """the encoder: a registered ViT (its head is not used)"""
    mask_ratio: float = 0.6
    """share of mask blocks replaced by the mask token (0.6 in the paper)"""
    mask_patch_size: int = 0
    """side of the square blocks masked together, a multiple of the ViT patch (32 px for 16 px patches in the
    paper); 0: the ViT patch"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if "head" in self.encoder_config:
            raise ValueError("encoder_config.head is set by SimMIM (no classifier); remove it")
        if self.mask_patch_size < 0:
            raise ValueError(f"mask_patch_size must be >= 0, got {self.mask_patch_size}")


@register("simmim", family="ssl")
class SimMIM(MaskedViT, SSLModel):
    """SimMIM (Xie et al. 2022): mask token in place of hidden patch embeddings, ViT over all tokens,
    linear pixel head, l1 loss on the hidden patches."""

    config_class = SimMIMConfig
    export_blocker = ("its forward draws a random patch mask from the model's own torch.Generator: the output "
                      "is not a function of the input alone")
    num_views = 1

    def __init__(self, config: SimMIMConfig) -> None:
        super().__init__(config)
        encoder_config(config)
        self.encoder = create(config.encoder, **self._vit_keys(config))
        if not hasattr(self.encoder, "patch_embed"):
            raise ArchlabError(f"model.encoder: SimMIM needs a ViT encoder, got {config.encoder!r}")
        vit = self.encoder.config
        self.patch, self.channels, self.feature_dim = vit.patch_size, vit.in_channels, vit.dim
        self.grid = vit.image_size // vit.patch_size
        block = config.mask_patch_size or vit.patch_size
        if block % vit.patch_size or vit.image_size % block:
            raise ArchlabError(f"model.mask_patch_size {block} must be a multiple of the ViT patch ({vit.patch_size}) "
                               f"that divides the image ({vit.image_size})")
        self.block = block // vit.patch_size          # ViT patches per mask block side
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.dim))
        self.head = nn.Linear(vit.dim, self.patch * self.patch * self.channels)
        self.projector = nn.Identity()
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.mask_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))


    def predict(self, x: Tensor, mask: Tensor) -> Tensor:
        """Pixels of every patch from the encoder over all tokens, hidden ones (``mask`` ``[B, N]`` = 1) replaced
        by the mask token: ``[B, N, P * P * C]``."""
        vit = self.encoder
        size = vit.config.image_size
        if x.shape[-2:] != (size, size):
            raise ValueError(f"expected {size}x{size} images, got {tuple(x.shape[-2:])}")
        e = vit.patch_embed(x).flatten(2).transpose(1, 2)                          # [B, N, D]
        m = mask.unsqueeze(-1).to(e.dtype)
        e = e * (1 - m) + self.mask_token.to(e.dtype) * m
        h = torch.cat([vit.cls_token.expand(len(x), -1, -1), e], dim=1) + vit.pos_embed
        for layer in vit.layers:
            h = layer(h)
        return self.head(vit.norm(h)[:, 1:])

    def masked_loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Mean absolute error per pixel over the hidden patches only (``mask`` = 1)."""
        per_patch = (prediction - target).abs().mean(-1)                          # [B, N]
        return (per_patch * mask).sum() / mask.sum()

    def _mask(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``[B, N]`` (1 = hidden): ``round(ratio * G^2)`` of the ``G x G`` mask blocks, each covering
        ``block x block`` ViT patches."""
        g = self.grid // self.block
        blocks = random_masking(len(x), g * g, self.config.mask_ratio, generator, x.device)[2].view(-1, g, g)
        return blocks.repeat_interleave(self.block, 1).repeat_interleave(self.block, 2).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """The prediction under a fixed (seed 0) mask, so the same input gives the same output."""
        return self.predict(x, self._mask(x, torch.Generator().manual_seed(0)))

    def ssl_loss(self, view: Tensor, *_: Tensor) -> Tensor:
        """Training loss; masks come from the model's own generator (its state is in the loop's checkpoint)."""
        mask = self._mask(view, self.mask_gen)
        return self.masked_loss(self.predict(view, mask).float(), patchify(view.float(), self.patch), mask)
