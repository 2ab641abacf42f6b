"""CPC: Representation Learning with Contrastive Predictive Coding (van den Oord et al. 2018).

A sequence is cut into ``T`` overlapping windows (as CPC cuts images into a grid of overlapping patches,
their Sec. 3.2); a registered encoder turns each window into a latent, an autoregressive GRU summarises
the latents so far into a context, and the context predicts the latents ``k = 1 .. K`` steps ahead,
scored against the latents of the other sequences of the batch at the same step (InfoNCE, their Eq. 4):

    z_t = g_enc(x[t s : t s + w])                  t = 0 .. T - 1        [B, T, F]
    c_t = GRU(z_0 .. z_t)                                                [B, T, H]
    f_k(x_{t+k}, c_t) = exp(z_{t+k}^T W_k c_t)    (log-bilinear score, Eq. 3)
    L_k = - mean_{b, t} log  f_k(z_{b,t+k}, c_{b,t}) / sum_{b'} f_k(z_{b',t+k}, c_{b,t})
    L   = mean_k L_k                               (negatives: the B - 1 other sequences at step t + k)

The representation the probes read (``features``) is the last context ``c_{T-1}`` (``[B, H]``, as CPC
probes ``c_t`` for speakers) or, with ``features_from = "latents"``, the latents of all windows
concatenated (``[B, T F]``); the projection is the mean latent ``mean_t z_t`` (``[B, F]``).

Shapes:
    x: ``[B, L]`` or ``[B, 1, L]`` -> ``forward`` gives the predictions ``W_k c_t`` ``[B, T, K, F]``
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ArchlabError
from ...registry import get, register
from .base import EncoderConfig, SSLModel, build_encoder, encoder_config


@dataclass
class CPCConfig(EncoderConfig):
    window: int = 16
    """samples per window; the encoder sees one window (a 1-D encoder's ``length`` defaults to it)"""
    stride: int = 4
    """samples between consecutive windows"""
    context_dim: int = 64
    """hidden size H of the autoregressive GRU (256 in the paper's audio model)"""
    prediction_steps: int = 3
    """K: how many steps ahead the context predicts (12 for audio, 5 rows for images in the paper)"""
    features_from: Literal["context", "latents"] = "context"
    """what the probes read: the last context c_{T-1} ([B, H]) or all latents z_0 .. z_{T-1} concatenated ([B, T F])"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.window, self.stride, self.context_dim, self.prediction_steps) < 1:
            raise ValueError("window, stride, context_dim and prediction_steps must be >= 1")

    def window_encoder(self) -> EncoderConfig:
        """The encoder's config with ``length = window`` when the encoder has a ``length`` key and it is unset."""
        keys = {f.name for f in fields(get(self.encoder).config_class)}
        if "length" in keys and "length" not in self.encoder_config:
            return EncoderConfig(self.encoder, {**self.encoder_config, "length": self.window})
        return EncoderConfig(self.encoder, dict(self.encoder_config))


def cpc_info_nce(prediction: Tensor, latents: Tensor) -> Tensor:
    """InfoNCE with the batch as negatives, per step: ``prediction`` ``[B, P, F]`` (``W_k c_t`` for ``P``
    positions t), ``latents`` ``[B, P, F]`` (``z_{t+k}``) -> scalar, the mean over positions and the batch of
    ``-log softmax_{b'}(z_{b',t+k} . W_k c_{b,t})[b]``."""
    b, p, _ = prediction.shape
    logits = torch.einsum("bpf,cpf->pbc", prediction, latents)                  # [P, B, B']
    target = torch.arange(b, device=prediction.device).expand(p, b)
    return F.cross_entropy(logits.reshape(p * b, b), target.reshape(-1))


@register("cpc", family="ssl")
class CPC(SSLModel):
    """CPC (van den Oord et al. 2018): windows -> encoder latents -> GRU context -> predict K future latents."""

    config_class = CPCConfig
    num_views = 1

    def __init__(self, config: CPCConfig) -> None:
        super().__init__(config)
        self.encoder, latent = build_encoder(config.window_encoder())
        self.latent_dim = latent
        self.gru = nn.GRU(latent, config.context_dim, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(config.context_dim, latent, bias=False)
                                        for _ in range(config.prediction_steps))            # W_k
        self.projector = nn.Identity()
        self.feature_dim = config.context_dim

    @classmethod
    def example_input(cls, config: CPCConfig, batch_size: int = 2) -> Tensor:
        """Sequences long enough for ``prediction_steps + 1`` windows (the encoder's own example is one window)."""
        one = get(config.encoder).cls.example_input(encoder_config(config.window_encoder()), batch_size)
        length = config.window + config.stride * config.prediction_steps
        return torch.randn(batch_size, *one.shape[1:-1], length)

    def windows(self, x: Tensor) -> Tensor:
        """``[B, L]`` / ``[B, C, L]`` -> ``[B, T, C, window]`` with ``T = (L - window) // stride + 1``."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        w, s = self.config.window, self.config.stride
        if x.shape[-1] < w:
            raise ArchlabError(f"model.window {w} is longer than the sequences ({x.shape[-1]} samples)")
        return x.unfold(-1, w, s).transpose(1, 2)                                     # [B, T, C, w]

    def latents(self, x: Tensor) -> Tensor:
        """``z``: ``[B, T, F]``."""
        win = self.windows(x)
        b, t = win.shape[:2]
        return self.encoder(win.reshape(b * t, *win.shape[2:])).view(b, t, -1)

    def contexts(self, z: Tensor) -> Tensor:
        """``c``: ``[B, T, H]``."""
        return self.gru(z)[0]

    def features(self, x: Tensor) -> Tensor:
        z = self.latents(x)
        return z.flatten(1) if self.config.features_from == "latents" else self.contexts(z)[:, -1]

    def projection(self, x: Tensor) -> Tensor:
        """The mean latent ``[B, F]``."""
        return self.latents(x).mean(1)

    def forward(self, x: Tensor) -> Tensor:
        """The predicted future latents ``W_k c_t`` for every step and horizon: ``[B, T, K, F]``."""
        c = self.contexts(self.latents(x))
        return torch.stack([w(c) for w in self.predictors], dim=2)

    def ssl_loss(self, view: Tensor, *_: Tensor) -> Tensor:
        z = self.latents(view).float()
        c = self.contexts(z)
        t = z.shape[1]
        if t <= self.config.prediction_steps:
            raise ArchlabError(f"the sequences give {t} windows; predicting {self.config.prediction_steps} steps ahead "
                               f"needs more (lower model.window / model.stride or model.prediction_steps)")
        losses = [cpc_info_nce(w(c[:, :t - k]), z[:, k:]) for k, w in enumerate(self.predictors, start=1)]
        return torch.stack(losses).mean()

    def check_encoder_output(self, x: Tensor) -> None:
        win = self.windows(x)
        with torch.no_grad():
            h = self.eval().encoder(win[:, 0])
        if not isinstance(h, Tensor) or h.shape != (len(x), self.latent_dim):
            raise ArchlabError(f"model.encoder {self.config.encoder!r} gives window features of shape "
                               f"{tuple(h.shape)}, need ({len(x)}, {self.latent_dim}): set encoder_config.length = "
                               f"model.window ({self.config.window})")
        if win.shape[1] <= self.config.prediction_steps:
            raise ArchlabError(f"the sequences give {win.shape[1]} windows; predicting {self.config.prediction_steps} "
                               "steps ahead needs more (lower model.window / model.stride or model.prediction_steps)")
