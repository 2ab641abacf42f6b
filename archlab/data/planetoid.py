"""Planetoid citation graphs (Yang, Cohen & Salakhutdinov 2016): ``cora``, ``citeseer``, ``pubmed``.

Nodes are papers with bag-of-words (Cora, Citeseer) or TF-IDF (Pubmed) features, edges are citations,
labels are topics. The graph is built from the authors' eight files per dataset,
``ind.<name>.{x,y,tx,ty,allx,ally,graph,test.index}``, kept under ``data_root() / "planetoid"`` and
downloaded from https://github.com/kimiyoung/planetoid (folder ``data/``) when missing. Every file is
verified by its sha256; the digests are the ones pinned by independent projects that load these
files (all three agree, and their Cora digests equal those of archlab's local copies). The files
are Python 2 pickles, read with :mod:`archlab.data.safe_pickle` (no arbitrary code, no scipy).

Construction (as Kipf & Welling's ``gcn/utils.py`` ``load_data`` and PyG's ``Planetoid``):

* ``allx`` / ``ally``: the first ``len(allx)`` nodes (labelled and unlabelled training nodes);
  ``x`` / ``y`` are their first ``len(y)`` rows.
* ``tx`` / ``ty``: the test nodes; row ``k`` belongs to node ``test.index[k]``. The test indices
  cover ``len(allx) .. N - 1``; where that range has gaps (Citeseer: 15 nodes that are isolated and
  unlabelled), the gap nodes get zero features and a zero label row, as the reference pads them.
* labels: argmax of the one-hot rows (so a zero row gives class 0; such nodes are in no split).
* ``edge_index``: every adjacency-list entry in both directions, duplicates merged, self-loops
  removed (Cora: 2708 nodes, 10556 directed edges).
* public split: train = the first ``len(y)`` nodes (Cora 140, Citeseer 120, Pubmed 60), val = the
  next 500, test = the 1000 ``test.index`` nodes.

After parsing, each dataset is also checked against its known size (nodes, features, classes and
split counts), so a file that verifies but parses into something else cannot slip through.

Features are row-normalised (``normalize_features=True``, Kipf & Welling's preprocessing). License of
the files: MIT (planetoid repository).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ArchlabError
from ..graph import Graph
from ..graph.ops import remove_self_loops, to_undirected
from . import safe_pickle
from .download import RemoteFile, data_root, ensure_files
from .graphs import GraphDataset, row_normalize
from .registry import register_dataset

#: Where missing files are downloaded from, tried in order (read at call time).
MIRRORS = (
    "https://github.com/kimiyoung/planetoid/raw/master/data/",
    "https://raw.githubusercontent.com/kimiyoung/planetoid/master/data/",
)
PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
NUM_VAL = 500

# sha256 of each file. Cora: equal to ../shared/datasets/SHA256SUMS. Citeseer and Pubmed: pinned
# identically by several public projects that download these files from the planetoid repository.
SHA256 = {
    "cora": {
        "x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
        "y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
        "tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
        "ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
        "allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
        "ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
        "graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
        "test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    },
    "citeseer": {
        "x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
        "y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
        "tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
        "ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
        "allx": "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
        "ally": "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
        "graph": "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
        "test.index": "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    },
    "pubmed": {
        "x": "fbe9cb5c47200d1b7769a26e579be3b7130b556831f9d850e77c4c74f2599b33",
        "y": "e6c807633307a07ed659249006536a147c7999c797f11a2560752990181b41b3",
        "tx": "4eb5f5d0f30f26497eb0ac6ac9719d09c67e284f1ed0385c93f3ef27a671da3d",
        "ty": "ee2e0d4819d9fbcc403689c3bf2e49face401b605932f093bc58ab6461130fdd",
        "allx": "508e538e2abdccdd54c4d3e9f49d638b4af7107d85845f66ddea5a5152658b7e",
        "ally": "0c37bbe3b5014ec365e9d393cf4791925e5ed94fb194305d74f064a8d7b50f0e",
        "graph": "5b89f0036ca22909471f1e6558eb42fa06e0c730a577bde5b058b40638f81dc9",
        "test.index": "b101d421688bbaecbd82e8a18f1e282378d6830f3a37666f28ebc47f844341b5",
    },
}


@dataclass(frozen=True)
class Expected:
    """Known size of a Planetoid dataset (public split)."""

    nodes: int
    features: int
    classes: int
    train: int


EXPECTED = {
    "cora": Expected(nodes=2708, features=1433, classes=7, train=140),
    "citeseer": Expected(nodes=3327, features=3703, classes=6, train=120),
    "pubmed": Expected(nodes=19717, features=500, classes=3, train=60),
}


def planetoid_files(name: str) -> tuple[RemoteFile, ...]:
    """The eight verified files of dataset ``name`` (``cora``, ``citeseer`` or ``pubmed``)."""
    return tuple(
        RemoteFile(f"ind.{name}.{part}", tuple(base + f"ind.{name}.{part}" for base in MIRRORS), SHA256[name][part])
        for part in PARTS
    )


def _matrix(obj: object, path: Path) -> np.ndarray:
    """A feature (sparse) or label (dense) matrix from a pickle, as a dense 2-d numeric array."""
    if isinstance(obj, safe_pickle.CSRMatrix):
        return obj.toarray()
    if isinstance(obj, np.ndarray) and obj.ndim == 2 and obj.dtype.kind in "biuf":
        return obj
    raise ArchlabError(f"{path}: expected a 2-d numeric matrix, got {type(obj).__name__}")


def _adjacency(obj: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(sources, targets) of the adjacency dict ``{node: [neighbours]}``."""
    if not isinstance(obj, dict):
        raise ArchlabError(f"{path}: expected a dict of adjacency lists, got {type(obj).__name__}")
    sources, targets = [], []
    for node, neighbours in obj.items():
        if not (isinstance(node, int) and isinstance(neighbours, list) and all(isinstance(j, int) for j in neighbours)):
            raise ArchlabError(f"{path}: adjacency entries must be int -> list of int (node {node!r})")
        sources.append(np.full(len(neighbours), node, dtype=np.int64))
        targets.append(np.asarray(neighbours, dtype=np.int64))
    empty = [np.zeros(0, dtype=np.int64)]
    return np.concatenate(sources + empty), np.concatenate(targets + empty)


def _test_index(path: Path) -> np.ndarray:
    try:
        return np.array([int(line) for line in path.read_text().split()], dtype=np.int64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchlabError(f"{path}: expected one node index per line ({exc})") from None


def read_planetoid(folder: Path, name: str) -> GraphDataset:
    """Build the graph of dataset ``name`` from ``folder / ind.<name>.*`` (no checksums, no size check).

    Returns a node-task GraphDataset with one Graph: raw float32 features (not normalised), int64
    labels, the public masks and the undirected ``edge_index`` (see the module docstring).
    ``info["padded_nodes"]``: nodes with no test row (gaps in ``test.index``). Files that do not fit
    together raise ArchlabError naming the file.
    """
    folder = Path(folder)
    path = {part: folder / f"ind.{name}.{part}" for part in PARTS}
    matrices = ("x", "y", "tx", "ty", "allx", "ally")
    x, y, tx, ty, allx, ally = (_matrix(safe_pickle.load(path[p]), path[p]) for p in matrices)
    sources, targets = _adjacency(safe_pickle.load(path["graph"]), path["graph"])
    test_index = _test_index(path["test.index"])

    def check(ok: bool, part: str, what: str) -> None:
        if not ok:
            raise ArchlabError(f"{path[part]}: {what}")

    check(len(x) == len(y) and x.shape[1] == allx.shape[1], "x", f"x {x.shape} does not fit y {y.shape} / allx")
    check(len(allx) == len(ally), "ally", f"{len(ally)} label rows for {len(allx)} allx rows")
    check(len(tx) == len(ty) == len(test_index), "test.index",
          f"{len(test_index)} test indices for {len(tx)} tx and {len(ty)} ty rows")
    check(tx.shape[1] == allx.shape[1] and y.shape[1] == ty.shape[1] == ally.shape[1], "tx",
          "feature or class counts differ between x / tx / allx or y / ty / ally")
    check(len(y) + NUM_VAL <= len(allx), "allx", f"needs at least {len(y)} train + {NUM_VAL} val rows, has {len(allx)}")
    check(len(test_index) > 0 and len(np.unique(test_index)) == len(test_index), "test.index",
          "test indices must be present and distinct")
    # The reference stacks allx over the test rows, so the test nodes must start right after allx.
    check(test_index.min() == len(allx), "test.index",
          f"test indices start at {test_index.min()}, expected {len(allx)} (after allx)")

    num_nodes = int(test_index.max()) + 1
    features = np.zeros((num_nodes, allx.shape[1]), dtype=np.float32)
    labels = np.zeros((num_nodes, ally.shape[1]), dtype=ally.dtype)
    features[: len(allx)], labels[: len(allx)] = allx, ally
    # Row k of tx / ty is node test_index[k]; nodes of the range never named stay zero (Citeseer).
    features[test_index], labels[test_index] = tx, ty

    ends = np.concatenate([sources, targets])
    check(len(ends) == 0 or (ends.min() >= 0 and ends.max() < num_nodes), "graph",
          f"adjacency names nodes outside 0..{num_nodes - 1}")
    edge_index = torch.from_numpy(np.stack([sources, targets]))
    edge_index = to_undirected(remove_self_loops(edge_index)[0], num_nodes)

    def mask(index: np.ndarray) -> torch.Tensor:
        out = torch.zeros(num_nodes, dtype=torch.bool)
        out[torch.from_numpy(index)] = True
        return out

    graph = Graph(
        x=torch.from_numpy(features),
        edge_index=edge_index,
        y=torch.from_numpy(labels.argmax(1).astype(np.int64)),
        train_mask=mask(np.arange(len(y))),
        val_mask=mask(np.arange(len(y), len(y) + NUM_VAL)),
        test_mask=mask(test_index),
    )
    padded = num_nodes - len(allx) - len(test_index)
    return GraphDataset(name, [graph], num_classes=ally.shape[1], num_features=allx.shape[1],
                        info={"padded_nodes": padded})


@dataclass(frozen=True)
class PlanetoidConfig:
    """Options of the ``cora``, ``citeseer`` and ``pubmed`` datasets."""

    normalize_features: bool = True
    """Divide each feature row by its sum (Kipf & Welling); False keeps the raw values."""
    download: bool = True
    """Download missing files; False never touches the network (missing files -> DataUnavailable)."""


def load_planetoid(name: str, cfg: PlanetoidConfig) -> GraphDataset:
    """Dataset ``name`` from verified files under ``data_root() / "planetoid"``, checked against its known size."""
    folder = data_root() / "planetoid"
    ensure_files("planetoid", planetoid_files(name), folder, download=cfg.download)
    ds = read_planetoid(folder, name)
    g, want = ds.graph, EXPECTED[name]
    got = (g.num_nodes, ds.num_features, ds.num_classes, int(g.train_mask.sum()), int(g.val_mask.sum()),
           int(g.test_mask.sum()))
    expected = (want.nodes, want.features, want.classes, want.train, NUM_VAL, 1000)
    if got != expected:
        raise ArchlabError(f"dataset {name!r}: files in {folder} give (nodes, features, classes, train, val, test) "
                           f"= {got}, expected {expected}")
    if cfg.normalize_features:
        ds.graphs[0] = g.replace(x=row_normalize(g.x))
    return ds


@register_dataset("cora", PlanetoidConfig, num_classes=7, kind="graph")
def load_cora(cfg: PlanetoidConfig) -> GraphDataset:
    """Cora: 2708 papers, 1433 binary word features, 7 classes, 10556 directed edges."""
    return load_planetoid("cora", cfg)


@register_dataset("citeseer", PlanetoidConfig, num_classes=6, kind="graph")
def load_citeseer(cfg: PlanetoidConfig) -> GraphDataset:
    """Citeseer: 3327 papers (15 isolated padding nodes), 3703 binary word features, 6 classes."""
    return load_planetoid("citeseer", cfg)


@register_dataset("pubmed", PlanetoidConfig, num_classes=3, kind="graph")
def load_pubmed(cfg: PlanetoidConfig) -> GraphDataset:
    """Pubmed: 19717 papers, 500 TF-IDF features, 3 classes."""
    return load_planetoid("pubmed", cfg)
