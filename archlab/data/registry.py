"""Dataset registry: name -> loader, and :func:`load_dataset`, which turns a loader's output into
train / val / test splits.

A dataset module registers a loader with ``@register_dataset("digits", DigitsConfig, ...)``. The
loader takes a validated config (a frozen dataclass) and returns two :class:`Split`: the full
training set and the fixed test set. :func:`load_dataset` validates the options, caches the loader's
output in-process, and carves the validation set out of the training set.

Validation split: *stratified* by class (:func:`stratified_indices`): ``round(val_fraction * N)``
training examples, each class contributing in proportion to its size, chosen by
``np.random.RandomState(split_seed)``; the rest stay in train. Both keep the loader's example order.
The test set never depends on ``split_seed``, so test numbers are comparable across runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import config as _config
from ..errors import ArchlabError
from ..registry import Registry
from .download import data_root


@dataclass
class Split:
    """One split, in memory. ``x``: float32 (N, *input_shape); ``y``: int64 class labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"Split: {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """A dataset ready for training: three splits and what a model needs to know about them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    """One example's shape, e.g. (1, 8, 8) for digits, (40,) for mnist1d, (1, 28, 28) for mnist."""


Loader = Callable[[Any], "tuple[Split, Split]"]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    config_class: type
    loader: Loader
    num_classes: int
    kind: str = "arrays"
    """``arrays``: the loader returns (train, test) :class:`Split`; ``graph``: it returns a
    :class:`archlab.data.graphs.GraphDataset` (see :func:`archlab.data.graphs.load_graph_dataset`)."""


#: Every dataset by name (family: its kind). The dataset modules register themselves on import.
DATASETS: Registry[DatasetEntry] = Registry("dataset", tuple(f"archlab.data.{m}" for m in (
    "circle", "digits", "events", "graphs", "mnist", "mnist1d", "omniglot", "planetoid", "ring", "seq2seq", "text",
    "tu")))


def register_dataset(name: str, config_class: type, num_classes: int,
                     kind: str = "arrays") -> Callable[[Loader], Loader]:
    """Function decorator: make ``loader(cfg) -> (train, test)`` loadable as ``load_dataset(name)``
    (``kind="graph"``: ``loader(cfg) -> GraphDataset``, loadable as ``load_graph_dataset(name)``)."""

    def deco(loader: Loader) -> Loader:
        DATASETS.add(name, DatasetEntry(name, config_class, loader, num_classes, kind), family=kind,
                     description=(loader.__doc__ or "").strip().split("\n")[0])
        return loader

    return deco


def dataset_names() -> list[str]:
    """Names of the registered datasets, sorted."""
    return DATASETS.names()


def get_entry(name: str) -> DatasetEntry:
    """The registry entry of dataset ``name``; unknown names raise ArchlabError listing the known ones."""
    if name not in DATASETS:
        raise ArchlabError(f"unknown dataset {name!r}; available datasets: {', '.join(DATASETS.names())}")
    return DATASETS.get(name).obj


def stratified_indices(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into (kept, held out), stratified by class.

    ``y``: (N,) integer labels. Exactly ``round(fraction * N)`` examples are held out, each class
    contributing in proportion to its size (rounded down, then the classes that lost the most to
    rounding get one more, lower class first on ties). Which examples of a class are held out comes
    from one ``np.random.RandomState(seed)``, classes visited in increasing order. Both index arrays
    are sorted, so the examples keep their original order.
    """
    classes, counts = np.unique(y, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    short = int(round(fraction * len(y))) - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    rng = np.random.RandomState(seed)
    held = [np.zeros(0, dtype=np.int64)]
    for c, count in zip(classes, take, strict=True):
        members = np.flatnonzero(y == c)
        held.append(members[rng.permutation(len(members))[:count]])
    held_idx = np.sort(np.concatenate(held))
    keep = np.ones(len(y), dtype=bool)
    keep[held_idx] = False
    return np.flatnonzero(keep), held_idx


# (name, data root, config) -> (train, test) exactly as the loader returned them. Never handed out:
# load_dataset only returns tensors made by indexing or cloning, so callers cannot change the cache.
_CACHE: dict[tuple[str, str, Any], tuple[Split, Split]] = {}


def _take(split: Split, idx: np.ndarray) -> Split:
    index = torch.from_numpy(idx)
    return Split(split.x[index], split.y[index])  # advanced indexing copies


def load_dataset(
    name: str, options: dict[str, Any] | None = None, val_fraction: float = 0.1, split_seed: int = 0
) -> Dataset:
    """Load dataset ``name`` with its ``options`` (validated against its config dataclass).

    ``val_fraction`` of the training set (stratified, chosen by ``split_seed``; see the module
    docstring) becomes ``val``; ``val_fraction=0`` gives an empty ``val`` of shape (0, *input_shape).
    The same arguments always give equal tensors; each call returns fresh copies, so mutating them
    does not affect later calls. Unknown names and options raise ArchlabError.
    """
    entry = get_entry(name)
    if entry.kind != "arrays":
        raise ArchlabError(f"dataset {name!r} is a graph dataset: train it with a graph loop (train.loop = "
                           f"\"node\", \"link\" or \"graph\"), or load it with archlab.data.load_graph_dataset")
    cfg = _config.build(entry.config_class, options or {}, "data.options")
    if not 0.0 <= val_fraction < 1.0:
        raise ArchlabError(f"data.val_fraction: must be in [0, 1), got {val_fraction!r}")
    if not 0 <= split_seed < 2**32:  # the range np.random.RandomState accepts
        raise ArchlabError(f"data.split_seed: must be in [0, 2**32), got {split_seed!r}")
    # The data root is part of the key: pointing ARCHLAB_DATA elsewhere must reload the files.
    key = (name, str(data_root()), cfg)
    if key not in _CACHE:
        _CACHE[key] = entry.loader(cfg)
    full_train, test = _CACHE[key]
    train_idx, val_idx = stratified_indices(full_train.y.numpy(), val_fraction, split_seed)
    return Dataset(
        name=name,
        train=_take(full_train, train_idx),
        val=_take(full_train, val_idx),
        test=Split(test.x.clone(), test.y.clone()),
        num_classes=entry.num_classes,
        input_shape=tuple(full_train.x.shape[1:]),  # options may change it (mnist1d final_seq_length)
    )
