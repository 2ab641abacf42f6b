"""Splitting one labelled training set among ``K`` federated clients.

Four schemes, each a deterministic function of the labels, ``K`` and a seed (one
``numpy.random.Generator`` from ``np.random.default_rng(seed)``); each returns ``K`` sorted int64 index
arrays that together cover the dataset exactly once (a *partition*):

- ``iid``: a random permutation cut into ``K`` nearly equal parts (sizes differ by at most one).
- ``pathological`` (McMahan et al. 2017, Sec. 3, "pathological non-IID"): sort the examples by label
  (stable, so ties keep their order), cut the sorted list into ``K * s`` equal shards and give each
  client ``s`` shards drawn at random without replacement. With ``s = 2`` most clients see two digits.
- ``dirichlet`` (label skew; Hsu, Qi & Brown 2019, Sec. 3): for every class ``c`` draw client shares
  ``p_c ~ Dir(alpha * 1_K)`` and deal the class's examples (shuffled) in those proportions. Small
  ``alpha`` (0.1) gives each client a few dominant classes; ``alpha -> inf`` tends to IID. The draw is
  repeated (same generator, so still deterministic) until every client has ``min_size`` examples.
- ``quantity`` (quantity skew; Li, Diao, Chen & He 2022, Sec. 4.3): client sizes ``min_size`` plus a
  ``q ~ Dir(alpha * 1_K)`` share of the remaining examples, contents IID.

:func:`class_counts` gives the ``(K, classes)`` matrix the loop plots into every run
(:func:`plot_counts`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ArchlabError
from ..io import pyplot

Scheme = Literal["iid", "pathological", "dirichlet", "quantity"]
SCHEMES: tuple[str, ...] = ("iid", "pathological", "dirichlet", "quantity")
MAX_DRAWS = 1000
"""Redraws of a Dirichlet split before giving up on ``min_size``."""


def iid(n: int, clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation of ``range(n)`` cut into ``clients`` parts of size ``n // K`` or one more."""
    return [np.sort(part) for part in np.array_split(rng.permutation(n), clients)]


def pathological(labels: np.ndarray, clients: int, shards_per_client: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Sort by label, cut into ``clients * shards_per_client`` equal shards, deal each client that many
    random shards (McMahan et al. 2017: 60,000 MNIST digits, 200 shards of 300, 2 per client)."""
    shards = clients * shards_per_client
    by_label = np.argsort(labels, kind="stable")
    pieces = np.array_split(by_label, shards)  # sizes N // shards or one more
    order = rng.permutation(shards)
    return [np.sort(np.concatenate([pieces[j] for j in order[k * shards_per_client:(k + 1) * shards_per_client]]))
            for k in range(clients)]


def _deal(indices: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    """Cut ``indices`` into ``len(shares)`` consecutive parts in proportion to ``shares`` (sum 1)."""
    cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(np.int64)
    return np.split(indices, cuts)


def dirichlet(labels: np.ndarray, clients: int, alpha: float, min_size: int,
              rng: np.random.Generator) -> list[np.ndarray]:
    """Label skew: every class dealt to the clients in proportions ``Dir(alpha * 1_K)``."""
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            for k, piece in enumerate(_deal(members, rng.dirichlet(np.full(clients, alpha)))):
                parts[k].append(piece)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ArchlabError(f"loop.alpha: a Dirichlet({alpha}) label split of {len(labels)} examples over {clients} "
                       f"clients left some client below loop.min_size={min_size} in {MAX_DRAWS} draws; "
                       f"raise alpha or lower clients/min_size")


def quantity(n: int, clients: int, alpha: float, min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Quantity skew: every client gets ``min_size`` examples plus a ``Dir(alpha * 1_K)`` share of the rest;
    which examples is random (so the label mix of every client is the global one, up to sampling)."""
    shares = rng.dirichlet(np.full(clients, alpha))
    extra = np.floor(shares * (n - clients * min_size)).astype(np.int64)
    extra[: n - clients * min_size - int(extra.sum())] += 1  # hand out what flooring left over
    return [np.sort(p) for p in np.split(rng.permutation(n), np.cumsum(min_size + extra)[:-1])]


def partition(labels: np.ndarray, clients: int, scheme: Scheme = "iid", seed: int = 0, alpha: float = 0.5,
              shards_per_client: int = 2, min_size: int = 1) -> list[np.ndarray]:
    """Indices of each client's examples: ``clients`` sorted int64 arrays partitioning ``range(len(labels))``.

    ``labels``: (N,) integer class labels (only ``pathological`` and ``dirichlet`` look at them).
    """
    labels = np.asarray(labels)
    n = len(labels)
    if clients < 1 or (scheme == "pathological" and clients * shards_per_client > n) or clients * min_size > n:
        raise ArchlabError(f"loop.clients: cannot split {n} examples among {clients} clients with scheme "
                           f"{scheme!r} (shards_per_client={shards_per_client}, min_size={min_size})")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = iid(n, clients, rng)
    elif scheme == "pathological":
        parts = pathological(labels, clients, shards_per_client, rng)
    elif scheme == "dirichlet":
        parts = dirichlet(labels, clients, alpha, min_size, rng)
    elif scheme == "quantity":
        parts = quantity(n, clients, alpha, min_size, rng)
    else:
        raise ArchlabError(f"loop.partition: unknown scheme {scheme!r}; schemes: {', '.join(SCHEMES)}")
    return [p.astype(np.int64) for p in parts]


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """``(clients, num_classes)`` matrix: examples of each class held by each client."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def plot_counts(counts: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Stacked bars, one per client, coloured by class: how the partition distributes the labels."""
    plt = pyplot()
    k, classes = counts.shape
    fig, ax = plt.subplots(figsize=(min(16, 4 + 0.12 * k), 4))
    bottom = np.zeros(k)
    cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20")
    for c in range(classes):
        ax.bar(np.arange(k), counts[:, c], bottom=bottom, width=1.0, color=cmap(c % cmap.N), label=str(c))
        bottom += counts[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_title(title or f"{k} clients x {classes} classes")
    if classes <= 20:
        ax.legend(title="class", fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
