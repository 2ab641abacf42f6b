"""What every self-supervised method shares: an encoder taken from the registry, MLP heads, the
interface the ``ssl`` loop and the probe protocol use.

The encoder is any registered classifier of the ``classic`` or ``transformers`` family (``cnn1d``,
``cnn2d``, ``resnet20``, ``vit`` ...) with its final ``nn.Linear`` (the classifier) replaced by the
identity: the representation ``h = f(x)`` the probes read is what that classifier would have read
(``[B, feature_dim]``, ``feature_dim`` its input size -- 125 conv features for MNIST-1D's ``cnn1d``,
the pooled 64 channels of ``resnet20``, the class token of ``vit``), as in SimCLR, where ``h`` is the
ResNet's average-pooled output. A method adds heads on top
(projector ``g``, predictor ``q``), possibly slow "target" copies, and defines

- ``ssl_loss(*views) -> scalar``: the training objective on ``num_views`` augmented views of one
  batch (two for the contrastive and distillation methods, one for masked image modelling);
- ``after_step(progress) -> {name: value}``: what happens after each optimizer step (momentum
  updates), ``progress`` in (0, 1] being the fraction of the run done;
- ``trained_modules()``: the modules the optimizer updates (momentum copies are not among them);
- ``rng_state()`` / ``load_rng_state()``: private generators (MAE's masks) for bit-exact resume;
- ``features(x)`` (encoder output) and ``projection(x)`` (projector output) for the probes.

``forward(x)`` is the online branch's full output (the projection, or BYOL's prediction), so every
trained parameter takes part in it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...errors import ArchlabError
from ...registry import build_config, create, get
from ..base import ArchModel

ENCODER_FAMILIES = ("classic", "transformers")


@dataclass
class EncoderConfig:
    """Fields every SSL method has: which registered model encodes."""

    encoder: str = "cnn1d"
    """registered classic/transformers classifier used as the encoder f (its final Linear is removed)"""
    encoder_config: dict[str, Any] = field(default_factory=dict)
    """config keys of the encoder (num_classes does not apply: the classifier is removed)"""

    def __post_init__(self) -> None:
        if "num_classes" in self.encoder_config:
            raise ValueError("encoder_config.num_classes does not apply: the encoder's classifier is removed; "
                             "remove it")


def encoder_config(cfg: EncoderConfig) -> Any:
    """The validated config of the encoder (keys checked with the recipe's paths)."""
    entry = get(cfg.encoder)
    if entry.family not in ENCODER_FAMILIES:
        raise ArchlabError(f"model.encoder: {cfg.encoder!r} is a {entry.family} model; the encoder must be one of "
                           f"the {' or '.join(ENCODER_FAMILIES)} families")
    return build_config(cfg.encoder, dict(cfg.encoder_config), "model.encoder_config")


def build_encoder(cfg: EncoderConfig) -> tuple[ArchModel, int]:
    """The encoder with its last ``nn.Linear`` (the classifier) replaced by the identity, and the size
    of the features that classifier read (``feature_dim``)."""
    encoder_config(cfg)
    encoder = create(cfg.encoder, **cfg.encoder_config)
    linears = [name for name, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ArchlabError(f"model.encoder: {cfg.encoder!r} has no final Linear classifier to remove")
    *path, last = linears[-1].split(".")
    parent = encoder.get_submodule(".".join(path))
    feature_dim = getattr(parent, last).in_features
    setattr(parent, last, nn.Identity())
    return encoder, feature_dim


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
    num_views: ClassVar[int] = 2
    """augmented views of each batch that :meth:`ssl_loss` takes"""

    @classmethod
    def example_input(cls, config: Any, batch_size: int = 2) -> Tensor:
        return get(config.encoder).cls.example_input(encoder_config(config), batch_size)

    feature_dim: int
    """size of the representation h (set by :func:`build_encoder`)"""

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

    def rng_state(self) -> dict[str, Tensor]:
        return {}

    def load_rng_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`rng_state` returned."""

    def check_encoder_output(self, x: Tensor) -> None:
        """One-line error when the encoder does not turn ``x`` into ``[B, feature_dim]``."""
        with torch.no_grad():
            h = self.eval().features(x)
        if not isinstance(h, Tensor) or h.shape != (len(x), self.feature_dim):
            shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ArchlabError(f"model.encoder {self.config.encoder!r} gives features of shape {shape}, "
                               f"need ({len(x)}, {self.feature_dim})")
