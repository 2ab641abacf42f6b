"""Datasets, downloads and batch transforms.

    from archlab.data import load_dataset, make_transform
    ds = load_dataset("mnist1d", {"seed": 42}, val_fraction=0.1, split_seed=0)
    ds.train.x.shape, ds.input_shape, ds.num_classes     # (3600, 40), (40,), 10
    augment = make_transform(["shift:2"])
    x = augment(ds.train.x[:128], torch.Generator().manual_seed(0))

Registered datasets: ``digits`` (bundled), ``mnist1d`` (generated), ``mnist`` (files under
``data_root() / "mnist"``, downloaded and verified when missing). Files live under
:func:`data_root`: ``$ARCHLAB_DATA`` or the user cache directory.
"""

from __future__ import annotations

from .download import data_root
from .registry import Dataset, Split, dataset_names, load_dataset
from .transforms import make_transform

__all__ = ["Dataset", "Split", "data_root", "dataset_names", "load_dataset", "make_transform"]
