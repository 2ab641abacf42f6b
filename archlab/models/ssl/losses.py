"""Self-supervised objectives, written as the papers state them (vectorised over the batch).

- :func:`info_nce` (van den Oord et al. 2018, Eq. 4): one positive among candidates, cross-entropy over
  cosine similarities divided by a temperature. MoCo's loss (He et al. 2020, Eq. 1) is this with the
  queue as negatives; CLIP's (Radford et al. 2021, Fig. 3) is it twice, rows and columns.
- :func:`nt_xent` (Chen et al. 2020, SimCLR Eq. 1): ``2N`` views of ``N`` examples; each view's
  positive is its partner, its negatives the other ``2N - 2`` views.
- :func:`byol_loss` (Grill et al. 2020, Eq. 2): ``2 - 2 cos(p, z')`` between the online prediction and
  the target projection.
- :func:`momentum_update` (MoCo Eq. 2, BYOL Sec. 3.1): ``theta_target <- m theta_target + (1 - m) theta_online``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Mean over the batch of ``-log exp(q.k+ / T) / (exp(q.k+ / T) + sum_j exp(q.k_j / T))``.

    Vectors are L2-normalised first (so dot products are cosines).

    Shapes:
        query, positive: ``[N, D]``; negatives: ``[K, D]`` shared by every query -> scalar
    """
    q, k = F.normalize(query, dim=1), F.normalize(positive, dim=1)
    neg = F.normalize(negatives, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.T], dim=1) / temperature   # [N, 1 + K]
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Normalised temperature-scaled cross-entropy over the ``2N`` views ``[z1; z2]``:

        l(i, j) = -log exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T)
        L = 1 / 2N  sum_{n} [ l(n, n + N) + l(n + N, n) ]

    Shapes:
        z1, z2: ``[N, D]`` (views 1 and 2 of the same N examples) -> scalar
    """
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)                       # [2N, D]
    sim = z @ z.T / temperature                                       # [2N, 2N]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # k != i
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)


def clip_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE over a batch of matched pairs: ``(CE(rows) + CE(columns)) / 2`` of
    ``scale * cos(image_i, text_j)``; the i-th image and i-th text are the positive pair.

    Shapes:
        image, text: ``[N, D]`` -> scalar
    """
    logits = logit_scale * F.normalize(image, dim=1) @ F.normalize(text, dim=1).T
    target = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``mean_n || p_n / |p_n| - z_n / |z_n| ||^2 = mean_n (2 - 2 cos(p_n, z_n))``; no gradient to ``target``.

    Shapes:
        prediction, target: ``[N, D]`` -> scalar
    """
    return (2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=1)).mean()


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """``theta_t <- m theta_t + (1 - m) theta_o`` for every parameter; buffers (BatchNorm statistics)
    are copied from the online network, as in the MoCo and BYOL reference code."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(m).add_(o.detach(), alpha=1 - m)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)
