"""The transformer layer every model of the family is built from.

One layer = self-attention, optional cross-attention (decoders of encoder-decoder models), and a
position-wise feed-forward network, each wrapped in a residual connection with normalization:

    post-norm (original Transformer, BERT, BART):   x = Norm(x + Dropout(Sublayer(x)))
    pre-norm  (GPT-2, ViT, T5):                     x = x + Dropout(Sublayer(Norm(x)))

Pre-norm keeps an identity path from input to output, which is what lets deep stacks train without
warm-up tricks (Xiong et al. 2020); post-norm is kept because the pretrained BERT/BART weights use it.

Feed-forward (Vaswani et al. 2017, eq. 2), or its gated form (Shazeer 2020, T5 v1.1):

    FFN(x) = W_2 act(W_1 x + b_1) + b_2            gated:  W_2 (act(W_g x) * W_1 x)

Norm is LayerNorm or RMSNorm (T5: scale only, no mean subtraction, no bias).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .activation import activation_layer
from .attention import AttentionOptions, KVCache, MultiHeadAttention

NormKind = Literal["layer", "rms"]


def make_norm(kind: NormKind, dim: int, eps: float, bias: bool = True) -> nn.Module:
    """LayerNorm (with or without bias) or RMSNorm over the last dimension."""
    if kind == "rms":
        return nn.RMSNorm(dim, eps=eps)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    raise ValueError(f"unknown norm {kind!r}; choose 'layer' or 'rms'")


class FeedForward(nn.Module):
    """Position-wise feed-forward network (module docstring). Parameters ``fc1`` (d -> d_ff), ``fc2``
    (d_ff -> d) and, when gated, ``gate`` (d -> d_ff).

    Shapes: ``[..., d_model]`` -> ``[..., d_model]``"""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", *, bias: bool = True,
                 gated: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.act = activation_layer(activation)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x)) if self.gate is None else self.act(self.gate(x)) * self.fc1(x)
        return self.fc2(self.dropout(h))


class TransformerLayer(nn.Module):
    """Self-attention [+ cross-attention] + feed-forward, pre- or post-norm (module docstring).

    Submodules: ``attn`` / ``norm1``, ``cross_attn`` / ``norm_cross`` (with ``cross_attention``),
    ``ffn`` / ``norm2``.

    Shapes:
        x: ``[B, T, d_model]``; memory: ``[B, S, d_memory]``; masks bool (True = attend) broadcastable
        to ``[B, H, T, T]`` / ``[B, H, T, S]``; biases float, same -> ``[B, T, d_model]``
        (plus self-attention weights ``[B, H, T, T]`` with ``need_weights``)
    """

    def __init__(self, d_model: int, n_head: int, d_ff: int, *, norm_first: bool = True, norm: NormKind = "layer",
                 eps: float = 1e-5, bias: bool = True, activation: str = "gelu", gated: bool = False,
                 dropout: float = 0.0, attn_dropout: float = 0.0, act_dropout: float = 0.0,
                 cross_attention: bool = False, d_memory: int | None = None, n_kv_head: int | None = None,
                 head_dim: int | None = None, scale: float | None = None,
                 attn_options: AttentionOptions | None = None, rotary: nn.Module | None = None) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(d_model, n_head, n_kv_head=n_kv_head, head_dim=head_dim, bias=bias,
                                       dropout=attn_dropout, scale=scale, options=attn_options, rotary=rotary)
        self.norm1 = make_norm(norm, d_model, eps, bias)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(d_model, n_head, n_kv_head=n_kv_head, head_dim=head_dim,
                                                 cross=True, d_memory=d_memory, bias=bias, dropout=attn_dropout,
                                                 scale=scale)
            self.norm_cross = make_norm(norm, d_model, eps, bias)
        else:
            self.cross_attn = None
        self.ffn = FeedForward(d_model, d_ff, activation, bias=bias, gated=gated, dropout=act_dropout)
        self.norm2 = make_norm(norm, d_model, eps, bias)
        self.dropout = nn.Dropout(dropout)

    def _residual(self, x: torch.Tensor, norm: nn.Module, fn) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(fn(norm(x)))
        return norm(x + self.dropout(fn(x)))

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                causal: bool = False, memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                memory_bias: torch.Tensor | None = None, cache: KVCache | None = None,
                cross_cache: KVCache | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        weights = None

        def self_attn(h: torch.Tensor) -> torch.Tensor:
            nonlocal weights
            out = self.attn(h, mask=mask, bias=bias, causal=causal, cache=cache, need_weights=need_weights)
            if need_weights:
                out, weights = out
            return out

        x = self._residual(x, self.norm1, self_attn)
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(
                h, memory, mask=memory_mask, bias=memory_bias, cache=cross_cache))
        x = self._residual(x, self.norm2, self.ffn)
        return (x, weights) if need_weights else x
