"""A learned compatibility function for zero-shot classification: the bilinear form of ALE (Akata, Perronnin,
Harchaoui & Schmid 2016, "Label-Embedding for Image Classification", TPAMI, Eq. 1-2; DeViSE, Frome et al. 2013,
uses the same form with word vectors) on top of an image embedding that is trained end to end.

    theta(x)     = conv4(x)                                   image embedding      (B, D)
    phi(s_z)     = s_z                                        class description    (a,)  -- fixed, not learned
    F(x, z)      = theta(x)^T W phi(s_z)                       compatibility        W: (D, a)
    scores(x)    = theta(x) W S                               every class at once  (B, Z), S: (a, Z)
    predict(x)   = argmax_{z in candidates} F(x, z)

Training sees the seen classes only (:meth:`seen_loss`): a softmax cross-entropy over the seen classes'
compatibilities, -log softmax_{z in seen}(F(x, z))[y]. ALE itself uses a weighted ranking loss; the softmax
version trains the same bilinear model and is the common choice once theta is learned too. An unseen class
needs only its description s_z: its column of S gives its scores without any training image.

The descriptions are the seven-segment display patterns of the digits (:func:`archlab.meta.zeroshot.
seven_segment_attributes`, +-1 coded when ``centred``), so ``W^T theta(x)`` is a 7-vector of learned "segment
detectors" whose agreement with a pattern scores that digit. theta is the 4-block convolutional network of
:mod:`archlab.meta.conv4` (28 -> 14 -> 7 -> 3 -> 1: a ``hidden``-dim vector on 28x28 MNIST).

Shapes: ``forward(x)`` (B, C, H, W) -> (B, Z) compatibilities with every described class; ``embed(x)`` -> (B, D).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import ArchModel
from ..registry import register
from .base import Conv4Config
from .conv4 import conv4, embedding_dim
from .zeroshot import seven_segment_attributes


def class_attributes(name: str, centred: bool) -> torch.Tensor:
    """(a, Z) description matrix by name (one column per class, float32)."""
    if name == "seven_segment":
        return seven_segment_attributes(centred).float()
    raise ValueError(f"unknown attributes {name!r}; known: 'seven_segment'")


@dataclass
class CompatibilityConfig(Conv4Config):
    """The embedding network (``Conv4Config``: channels, image size, filters) and the class descriptions."""

    attributes: Literal["seven_segment"] = "seven_segment"
    """Class descriptions phi(s_z): the seven segments a-g lit for each digit 0-9."""
    centred: bool = True
    """Code the descriptions +-1 (else 0/1)."""
    init_std: float = 0.01
    """Standard deviation of the initial W."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.init_std <= 10.0:
            raise ValueError(f"init_std must be in (0, 10], got {self.init_std}")


@register("compat_zsl", family="meta")
class CompatibilityZSL(ArchModel):
    """Bilinear compatibility theta(x)^T W s_z between a conv embedding and fixed class descriptions (ALE)."""

    config_class = CompatibilityConfig

    def __init__(self, config: CompatibilityConfig) -> None:
        super().__init__(config)
        self.encoder = conv4(config.in_channels, config.hidden)
        attributes = class_attributes(config.attributes, config.centred)
        self.register_buffer("class_attributes", attributes, persistent=False)  # S: (a, Z), from the config
        dim = embedding_dim(config.hidden, config.image_size)
        self.W = nn.Parameter(config.init_std * torch.randn(dim, attributes.shape[0]))

    @property
    def num_classes(self) -> int:
        """Z: the classes that have a description (seen and unseen)."""
        return self.class_attributes.shape[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """theta(x): (B, C, H, W) -> (B, D)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F(x, z) for every described class z: (B, C, H, W) -> (B, Z)."""
        return self.embed(x) @ self.W @ self.class_attributes

    def seen_loss(self, x: torch.Tensor, y: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax cross-entropy over the seen classes' compatibilities. ``y`` (B,) class ids, all in ``seen`` (k,);
        returns (loss, logits (B, k))."""
        logits = self(x)[:, seen]
        target = (y[:, None] == seen[None, :]).float().argmax(1)  # position of each label among the seen classes
        return F.cross_entropy(logits, target), logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The candidate class (an id from ``candidates``) of highest compatibility, per example: (B,)."""
        return candidates[self(x)[:, candidates].argmax(1)]

    @classmethod
    def example_input(cls, config: CompatibilityConfig, batch_size: int = 2) -> torch.Tensor:
        return torch.rand(batch_size, config.in_channels, config.image_size, config.image_size)
