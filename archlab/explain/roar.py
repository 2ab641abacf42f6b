"""ROAR: remove and retrain (Hooker, Erhan, Kindermans & Kim 2019, "A Benchmark for Interpretability
Methods in Deep Neural Networks", Sec. 3).

Deletion curves (faithfulness.py) judge a map by the *same* model on images it never saw with holes in
them, so part of the drop is distribution shift. ROAR instead replaces the top ``t``% of every training
and test image's pixels (ranked by the map) with an uninformative value, **retrains** a fresh model of
the same architecture on the degraded training set and measures its test accuracy. A map whose top
pixels carry the class information makes that accuracy fall fastest; a random ranking is the reference.

Here the fill value is the training set's per-channel mean (as in the paper), ranks are of the map
summed over channels, and the retraining is a plain Adam loop (``epochs`` over the given training
images) so that every fraction and method is retrained identically from the same seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchlabError

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def remove_top(images: torch.Tensor, attributions: torch.Tensor, fraction: float, fill: torch.Tensor) -> torch.Tensor:
    """``images`` ``[N, C, H, W]`` with the ``fraction`` highest-attributed positions set to ``fill`` ``[C]``."""
    n, c, h, w = images.shape
    a = attributions.sum(1) if attributions.dim() == 4 else attributions
    k = round(fraction * h * w)
    if k == 0:
        return images.clone()
    top = a.flatten(1).topk(k, dim=1).indices
    mask = torch.zeros(n, h * w, dtype=torch.bool, device=images.device).scatter_(1, top, True).view(n, 1, h, w)
    return torch.where(mask, fill.view(1, c, 1, 1).to(images.dtype), images)


def in_batches(explain: Explain, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``explain`` applied batch by batch: ``[N, ...]`` maps."""
    return torch.cat([explain(x[s:s + batch], y[s:s + batch]) for s in range(0, len(x), batch)])


def retrain_accuracy(build: Callable[[], nn.Module], train_x: torch.Tensor, train_y: torch.Tensor,
                     test_x: torch.Tensor, test_y: torch.Tensor, epochs: int = 3, batch: int = 128,
                     lr: float = 2e-3, seed: int = 0) -> float:
    """Train a fresh ``build()`` with Adam on ``(train_x, train_y)``; its accuracy on ``(test_x, test_y)``."""
    torch.manual_seed(seed)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train_x), generator=gen)
        for s in range(0, len(perm) - batch + 1, batch):
            idx = perm[s:s + batch]
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(test_x[s:s + 512]).argmax(-1) for s in range(0, len(test_x), 512)])
    return float((pred == test_y).double().mean())


def roar(build: Callable[[], nn.Module], explain: Explain, train_x: torch.Tensor, train_y: torch.Tensor,
         test_x: torch.Tensor, test_y: torch.Tensor, fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
         epochs: int = 3, seed: int = 0, reference: float | None = None) -> dict[float, float]:
    """Test accuracy of a model retrained after removing each ``fraction`` of the top-ranked pixels
    (``explain(x, y)`` gives the maps; 0.0 = nothing removed). The 0.0 cell does not depend on the map:
    pass its accuracy as ``reference`` (from an earlier call with the same data, epochs and seed) to skip
    that retraining."""
    if not all(0.0 <= f <= 1.0 for f in fractions):
        raise ArchlabError(f"fractions must be in [0, 1], got {fractions}")
    fill = train_x.mean(dim=(0, 2, 3))
    maps_train, maps_test = in_batches(explain, train_x, train_y), in_batches(explain, test_x, test_y)
    out = {} if reference is None else {0.0: reference}
    for f in ((0.0,) if reference is None else ()) + tuple(fractions):
        out[f] = retrain_accuracy(build, remove_top(train_x, maps_train, f, fill), train_y,
                                  remove_top(test_x, maps_test, f, fill), test_y, epochs=epochs, seed=seed)
    return out
