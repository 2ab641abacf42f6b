"""CLIP: Learning Transferable Visual Models From Natural Language Supervision (Radford et al. 2021).

An image encoder and a text encoder are trained so that matching (image, caption) pairs of a batch
have the highest cosine similarity among the ``N x N`` pairings (their Fig. 3, pseudocode):

    I_e = normalize(W_i f(image))                  f: a registered classic/transformers encoder, [N, d_e]
    T_e = normalize(W_t LN(text transformer)[eot])  causal transformer over characters, [N, d_e]
    logits = exp(t) * I_e T_e^T                    t learned, initialised to log(1 / 0.07)
    L = (CE(logits, arange N) + CE(logits^T, arange N)) / 2    (symmetric InfoNCE)

The text transformer (Sec. 2.4) is causal, and the caption is read at its last token (CLIP's [EOS]
position; here the last character, padding comes after it and is never attended to). The temperature
is clipped so the logits are scaled by at most 100 (Sec. 2.5): ``t`` is clamped to ``[0, log 100]``
after each optimizer step, as in the reference code.

Zero-shot classification (Sec. 3.1.2): embed a prompt per class ("a handwritten seven"), average the
normalised embeddings over several templates (prompt ensembling, Sec. 3.1.4), and give each image the
class of the nearest text embedding.

Shapes:
    images: the encoder's input ``[B, ...]``; tokens: ``[B, context_length]`` int64 (0 pads) ->
    ``encode_image`` / ``encode_text`` ``[B, embed_dim]`` (unnormalised); ``forward(images, tokens)`` the
    scaled similarities ``[B_img, B_txt]``; ``features`` the encoder output ``[B, feature_dim]`` and
    ``projection`` the image embedding (what ``archlab probe`` reads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ArchlabError
from ...nn.transformer import TransformerLayer
from ...registry import register
from .base import EncoderConfig, SSLModel, build_encoder
from .losses import clip_loss


@dataclass
class CLIPConfig(EncoderConfig):
    encoder: str = "cnn2d"
    """the image encoder (a registered classic/transformers classifier, its classifier removed)"""
    embed_dim: int = 64
    """size of the joint embedding space (512 in the paper's smallest models)"""
    vocab_size: int = 40
    """text vocabulary (the caption character set of archlab.data.captions has 40 symbols; id 0 pads)"""
    context_length: int = 56
    """text positions (76 BPE tokens in the paper; characters here)"""
    text_width: int = 64
    """width of the text transformer"""
    text_depth: int = 2
    """text transformer layers (12 in the paper)"""
    text_heads: int = 4
    """attention heads of the text transformer"""
    init_temperature: float = 0.07
    """initial tau: the logit scale starts at 1 / tau (0.07 in the paper)"""
    max_logit_scale: float = 100.0
    """the logit scale exp(t) is clipped to at most this (100 in the paper)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.embed_dim, self.vocab_size, self.context_length, self.text_width, self.text_depth,
               self.text_heads) < 1 or self.text_width % self.text_heads:
            raise ValueError("embed_dim, vocab_size, context_length, text_width, text_depth, text_heads >= 1 and "
                             "text_width divisible by text_heads")
        if not 1.0 / self.max_logit_scale <= self.init_temperature <= 1.0 or self.max_logit_scale < 1.0:
            raise ValueError("need max_logit_scale >= 1 and 1 / max_logit_scale <= init_temperature <= 1")


class TextEncoder(nn.Module):
    """Causal character transformer; the text's feature is the final LayerNorm at its last token.

    Shapes: tokens ``[B, T]`` (0 pads, on the right) -> ``[B, width]``"""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        w = config.text_width
        self.token_embed = nn.Embedding(config.vocab_size, w)
        self.pos_embed = nn.Parameter(torch.empty(1, config.context_length, w))
        self.layers = nn.ModuleList(TransformerLayer(w, config.text_heads, 4 * w, norm_first=True, activation="gelu")
                                    for _ in range(config.text_depth))
        self.norm = nn.LayerNorm(w)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        if t > self.pos_embed.shape[1]:
            raise ArchlabError(f"text of {t} tokens; the model's context_length is {self.pos_embed.shape[1]}")
        h = self.token_embed(tokens) + self.pos_embed[:, :t]
        for layer in self.layers:
            h = layer(h, causal=True)
        last = (tokens != 0).sum(1).clamp_min(1) - 1                     # index of each text's last token
        return self.norm(h[torch.arange(len(tokens), device=tokens.device), last])


@register("clip", family="ssl")
class CLIP(SSLModel):
    """CLIP (Radford et al. 2021): image encoder + causal text transformer, symmetric InfoNCE, learned temperature."""

    config_class = CLIPConfig
    paired_text: ClassVar[bool] = True
    """trained on (image, caption) pairs by the ``clip`` loop, not on augmented views"""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        self.encoder, self.feature_dim = build_encoder(config)
        self.projector = nn.Linear(self.feature_dim, config.embed_dim, bias=False)     # W_i
        self.text = TextEncoder(config)
        self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)  # W_t
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    def encode_image(self, images: Tensor) -> Tensor:
        return self.projector(self.encoder(images))

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.text_projection(self.text(tokens))

    def scale(self) -> Tensor:
        """``exp(t)``, the logit scale (clipped at ``max_logit_scale`` by :meth:`after_step`)."""
        return self.logit_scale.exp()

    def logits(self, images: Tensor, tokens: Tensor) -> Tensor:
        """``[B_img, B_txt]`` scaled cosine similarities."""
        i = F.normalize(self.encode_image(images).float(), dim=1)
        t = F.normalize(self.encode_text(tokens).float(), dim=1)
        return self.scale() * i @ t.T

    def ssl_loss(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Symmetric InfoNCE of the batch's pairs (the i-th caption describes the i-th image)."""
        return clip_loss(self.encode_image(images).float(), self.encode_text(tokens).float(), self.scale())

    def after_step(self, progress: float) -> dict[str, float]:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, math.log(self.config.max_logit_scale))
        return {"logit_scale": float(self.logit_scale.detach().exp())}

    @torch.no_grad()
    def class_embeddings(self, prompts: Tensor) -> Tensor:
        """Prompt ensembling: ``prompts`` ``[C, P, T]`` (P templates per class) -> ``[C, embed_dim]``, the
        renormalised mean of each class's normalised prompt embeddings."""
        c, p, t = prompts.shape
        e = F.normalize(self.encode_text(prompts.reshape(c * p, t)).float(), dim=1).view(c, p, -1)
        return F.normalize(e.mean(1), dim=1)

    @torch.no_grad()
    def zero_shot(self, images: Tensor, class_embeddings: Tensor) -> Tensor:
        """Predicted class of each image: the most similar class embedding ``[B]``."""
        return (F.normalize(self.encode_image(images).float(), dim=1) @ class_embeddings.T).argmax(1)

    @classmethod
    def example_input(cls, config: CLIPConfig, batch_size: int = 2) -> tuple[Tensor, Tensor]:
        """``(images, tokens)``: the encoder's example images and ``batch_size`` texts of 8 random symbols."""
        images = super().example_input(config, batch_size)
        tokens = torch.zeros(batch_size, min(config.context_length, 16), dtype=torch.long)
        tokens[:, :8] = torch.randint(1, config.vocab_size, (batch_size, 8),
                                      generator=torch.Generator().manual_seed(0))
        return images, tokens

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """``logits_per_image`` ``[B_img, B_txt]`` (the reference model's output); the text logits are its transpose."""
        return self.logits(images, tokens)
