"""The 4-block convolutional network of the few-shot literature (Vinyals et al. 2016, Sec. 4.1;
Snell et al. 2017, Sec. 3.1; Finn et al. 2017, Sec. 5.2), shared by every method of this family.

Each block: 3x3 convolution with ``hidden`` filters (padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool.
A 28x28 Omniglot image shrinks 28 -> 14 -> 7 -> 3 -> 1, so four blocks give a ``hidden``-dim vector.

Shapes: (B, in_channels, H, W) -> (B, hidden * (H // 16) * (W // 16)).
"""

from __future__ import annotations

from torch import nn


def conv4(in_channels: int, hidden: int, blocks: int = 4, running_stats: bool = True) -> nn.Sequential:
    """The embedding network; ``running_stats=False`` makes BatchNorm always use the batch's statistics
    (MAML's transductive setting: the inner loop adapts on exactly the examples it normalises)."""
    layers: list[nn.Module] = []
    for b in range(blocks):
        layers += [nn.Conv2d(in_channels if b == 0 else hidden, hidden, 3, padding=1),
                   nn.BatchNorm2d(hidden, track_running_stats=running_stats),
                   nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten())


def embedding_dim(hidden: int, image_size: int, blocks: int = 4) -> int:
    """Output width of :func:`conv4` on square images of side ``image_size``."""
    side = image_size
    for _ in range(blocks):
        side //= 2
    if side < 1:
        raise ValueError(f"{blocks} pooling blocks need images of at least {2 ** blocks} pixels, got {image_size}")
    return hidden * side * side


def conv4_classifier(in_channels: int, hidden: int, image_size: int, ways: int) -> nn.Sequential:
    """:func:`conv4` (batch statistics always, as MAML and Reptile adapt on them) followed by a ``ways``-way linear
    head: the network the optimization-based methods meta-learn an initialisation of."""
    return nn.Sequential(conv4(in_channels, hidden, running_stats=False),
                         nn.Linear(embedding_dim(hidden, image_size), ways))
