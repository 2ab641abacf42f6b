"""What every self-supervised method shares: an encoder taken from the registry, MLP heads, the
interface the ``ssl`` loop and the probe protocol use.

The encoder is any registered classifier of the ``classic`` or ``transformers`` family (``cnn1d``,
``cnn2d``, ``resnet20``, ``vit`` ...) built with ``num_classes = feature_dim``: its output layer becomes
the representation ``h = f(x)`` (``[B, feature_dim]``) that probes read. A method adds heads on top
(projector ``g``, predictor ``q``), possibly slow "target" copies, and defines

- ``ssl_loss(view1, view2) -> scalar``: the training objective on two augmented views of one batch;
- ``after_step(progress) -> {name: value}``: what happens after each optimizer step (momentum
  updates), ``progress`` in (0, 1] being the fraction of the run done;
- ``trained_modules()``: the modules the optimizer updates (momentum copies are not among them);
- ``features(x)`` (encoder output) and ``projection(x)`` (projector output) for the probes.

``forward(x)`` is the online branch's full output (the projection, or BYOL's prediction), so every
trained parameter takes part in it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ArchlabError
from ...registry import build_config, create, get
from ..base import ArchModel

ENCODER_FAMILIES = ("classic", "transformers")


@dataclass
class EncoderConfig:
    """Fields every SSL method has: which registered model encodes, and its representation size."""

    feature_dim: int = 128
    """size of the representation h = f(x): the encoder's num_classes"""
    encoder: str = "cnn1d"
    """registered classic/transformers model used as the encoder f (its classifier output becomes h)"""
    encoder_config: dict[str, Any] = field(default_factory=dict)
    """config keys of the encoder (num_classes is set to feature_dim)"""

    def __post_init__(self) -> None:
        if not 1 <= self.feature_dim <= 65536:
            raise ValueError(f"feature_dim must be in [1, 65536], got {self.feature_dim}")
        if "num_classes" in self.encoder_config:
            raise ValueError("encoder_config.num_classes is set by feature_dim; remove it")


def encoder_config(cfg: EncoderConfig) -> Any:
    """The validated config of the encoder (``num_classes = feature_dim``)."""
    entry = get(cfg.encoder)
    if entry.family not in ENCODER_FAMILIES:
        raise ArchlabError(f"model.encoder: {cfg.encoder!r} is a {entry.family} model; the encoder must be one of "
                           f"the {' or '.join(ENCODER_FAMILIES)} families")
    return build_config(cfg.encoder, {**cfg.encoder_config, "num_classes": cfg.feature_dim}, "model.encoder_config")


def build_encoder(cfg: EncoderConfig) -> ArchModel:
    encoder_config(cfg)  # family and keys checked with the recipe's paths
    return create(cfg.encoder, **{**cfg.encoder_config, "num_classes": cfg.feature_dim})


def mlp(sizes: list[int], batch_norm: bool) -> nn.Sequential:
    """``Linear -> [BatchNorm] -> ReLU`` between consecutive sizes, a plain ``Linear`` last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(a, b, bias=last or not batch_norm))
        if not last:
            layers += [nn.BatchNorm1d(b) if batch_norm else nn.Identity(), nn.ReLU()]
    return nn.Sequential(*layers)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that the optimizer never sees and autograd never reaches (a momentum "target")."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class SSLModel(ArchModel):
    """Base of the ``ssl`` family: ``self.encoder`` and ``self.projector`` exist in every method."""

    encoder: ArchModel
    projector: nn.Module

    @classmethod
    def example_input(cls, config: Any, batch_size: int = 2) -> Tensor:
        return get(config.encoder).cls.example_input(encoder_config(config), batch_size)

    def features(self, x: Tensor) -> Tensor:
        """The representation ``h = f(x)``: ``[B, feature_dim]``."""
        return self.encoder(x)

    def projection(self, x: Tensor) -> Tensor:
        """``z = g(f(x))``: ``[B, proj_dim]``."""
        return self.projector(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(x)

    def ssl_loss(self, view1: Tensor, view2: Tensor) -> Tensor:
        raise NotImplementedError

    def after_step(self, progress: float) -> dict[str, float]:
        return {}

    def trained_modules(self) -> nn.Module:
        return self

    def check_encoder_output(self, x: Tensor) -> None:
        """One-line error when the encoder does not turn ``x`` into ``[B, feature_dim]``."""
        with torch.no_grad():
            h = self.eval().features(x)
        if not isinstance(h, Tensor) or h.shape != (len(x), self.config.feature_dim):
            shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ArchlabError(f"model.encoder {self.config.encoder!r} gives outputs of shape {shape}, "
                               f"need ({len(x)}, {self.config.feature_dim}) features")
