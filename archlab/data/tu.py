"""TU graph-classification benchmarks (Morris et al. 2020, "TUDataset"): ``mutag`` and ``proteins``.

One zip per dataset, ``<NAME>.zip`` from https://www.chrsmrrs.com/graphkerneldatasets/ (the TU
Dortmund collection), kept under ``data_root() / "tu"``, downloaded when missing and verified by its
sha256 (MUTAG: pinned identically by several public projects, 24,550 bytes; PROTEINS: as pinned by
the Julia package GraphDatasets.jl, whose MUTAG digest agrees with the others). After parsing, each
dataset is also checked against its known size (MUTAG: 188 graphs, 2 classes; PROTEINS: 1113
graphs, 2 classes). The zip is read in memory with :mod:`zipfile`; nothing is extracted.

The format (https://chrsmrrs.github.io/datasets/docs/format/), over all ``N`` nodes and ``E``
directed edges of the collection, one line per item:

* ``<NAME>_A.txt``: ``i, j`` -- an edge from node ``i`` to node ``j`` (1-based; undirected graphs
  list both directions);
* ``<NAME>_graph_indicator.txt``: the graph (1-based) of each node, nodes of a graph contiguous;
* ``<NAME>_graph_labels.txt``: one class label per graph (any integers; MUTAG uses -1 / 1), mapped
  to ``0 .. C - 1`` in increasing order;
* ``<NAME>_node_labels.txt`` (optional): integer node labels, one-hot encoded;
* ``<NAME>_node_attributes.txt`` (optional): comma-separated real node attributes;
* ``<NAME>_edge_labels.txt`` (optional, MUTAG: bond type): integer edge labels, one-hot encoded.

Node features ``x`` = [attributes, one-hot labels] (PyG's ``TUDataset`` column order); one-hot
codes take ``label - min`` as the index, per column, over the whole collection. Edges keep the
file's order within each graph. Every graph gets ``y`` of shape (1,).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import ArchlabError
from ..graph import Graph
from .download import RemoteFile, data_root, ensure_files
from .graphs import GraphDataset
from .registry import register_dataset

#: Where missing zips are downloaded from, tried in order (read at call time).
MIRRORS = (
    "https://www.chrsmrrs.com/graphkerneldatasets/",
    "https://ls11-www.cs.tu-dortmund.de/people/morris/graphkerneldatasets/",
)


@dataclass(frozen=True)
class TUSpec:
    """One TU dataset: the archive's name (``<name>.zip``, file prefix ``<name>_``), its sha256 and
    its known size."""

    name: str
    sha256: str
    num_graphs: int
    num_classes: int


#: Registered name -> spec (read at call time).
SPECS = {
    "mutag": TUSpec("MUTAG", "c419bdc853c367d2d83da4973c45100954ae15e10f5ae2cddde6ca431f8207f6", 188, 2),
    "proteins": TUSpec("PROTEINS", "2da8de15284b88edabca2888ce5444d62f364ed41159260977088c4e53d4d848", 1113, 2),
}


def tu_file(spec: TUSpec) -> RemoteFile:
    return RemoteFile(f"{spec.name}.zip", tuple(f"{base}{spec.name}.zip" for base in MIRRORS), spec.sha256)


def _members(archive: zipfile.ZipFile, source: str) -> dict[str, zipfile.ZipInfo]:
    """Files of the archive by base name (the official zips put them in a ``<NAME>/`` folder)."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        base = PurePosixPath(info.filename).name
        if base in members:
            raise ArchlabError(f"{source}: two members are named {base}")
        members[base] = info
    return members


def _table(archive: zipfile.ZipFile, member: zipfile.ZipInfo, dtype: type, source: str) -> np.ndarray:
    """A comma-separated numeric table as a 2-d array (one row per line)."""
    where = f"{source}: {member.filename}"
    try:
        text = archive.read(member).decode("ascii")
    except (zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ArchlabError(f"{where}: unreadable ({exc})") from None
    if not text.strip():
        return np.zeros((0, 1), dtype=dtype)
    try:
        return np.loadtxt(io.StringIO(text), delimiter=",", dtype=dtype, ndmin=2)
    except ValueError as exc:
        raise ArchlabError(f"{where}: {exc}") from None


def _one_hot(labels: np.ndarray) -> np.ndarray:
    """(n, k) integer labels -> the one-hot codes of each column, side by side (index = label - column min)."""
    if len(labels) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    index = labels - labels.min(axis=0)
    return np.concatenate([np.eye(int(column.max()) + 1, dtype=np.float32)[column] for column in index.T], axis=1)


def read_tu_zip(path: Path, name: str) -> GraphDataset:
    """Parse the TU archive at ``path`` whose files are prefixed ``<name>_`` (no checksum, no size check).

    Returns a graph-task GraphDataset: one Graph per graph (x float32, edge_index int64 with local
    node ids, edge_attr float32 when the archive has edge labels, y int64 of shape (1,)). Files that
    are missing, malformed or inconsistent raise ArchlabError naming the archive.
    """
    source = str(path)
    try:
        archive = zipfile.ZipFile(Path(path))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchlabError(f"{source}: not a readable zip file ({exc})") from None
    with archive:
        members = _members(archive, source)

        def table(suffix: str, dtype: type, required: bool = False) -> np.ndarray | None:
            member = members.get(f"{name}_{suffix}.txt")
            if member is None:
                if required:
                    raise ArchlabError(f"{source}: no {name}_{suffix}.txt in the archive")
                return None
            return _table(archive, member, dtype, source)

        edges = table("A", np.int64, required=True)
        indicator = table("graph_indicator", np.int64, required=True)
        graph_labels = table("graph_labels", np.int64, required=True)
        node_labels = table("node_labels", np.int64)
        node_attributes = table("node_attributes", np.float32)
        edge_labels = table("edge_labels", np.int64)

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise ArchlabError(f"{source}: {what}")

    check(indicator.shape[1] == 1 and graph_labels.shape[1] == 1, "graph_indicator and graph_labels need one column")
    indicator, graph_labels = indicator[:, 0] - 1, graph_labels[:, 0]
    num_nodes, num_graphs = len(indicator), len(graph_labels)
    check(num_nodes > 0 and num_graphs > 0, "no nodes or no graphs")
    check(indicator.min() >= 0 and indicator.max() < num_graphs and bool(np.all(np.diff(indicator) >= 0)),
          f"graph_indicator must list graphs 1..{num_graphs} in order, nodes of a graph contiguous")
    edges = edges.reshape(-1, 2) - 1 if edges.size else np.zeros((0, 2), np.int64)
    check(edges.size == 0 or (edges.min() >= 0 and edges.max() < num_nodes), f"A lists nodes outside 1..{num_nodes}")
    edge_graph = indicator[edges[:, 0]]
    check(bool(np.all(edge_graph == indicator[edges[:, 1]])), "A has an edge between two graphs")

    features = []
    for part, rows in (("node_attributes", node_attributes), ("node_labels", node_labels)):
        if rows is not None:
            check(len(rows) == num_nodes, f"{part} has {len(rows)} rows for {num_nodes} nodes")
            features.append(rows.astype(np.float32) if part == "node_attributes" else _one_hot(rows))
    check(bool(features), "no node_labels or node_attributes to use as node features")
    x = torch.from_numpy(np.concatenate(features, axis=1))
    edge_attr = None
    if edge_labels is not None:
        check(len(edge_labels) == len(edges), f"edge_labels has {len(edge_labels)} rows for {len(edges)} edges")
        edge_attr = torch.from_numpy(_one_hot(edge_labels))
    classes, y = np.unique(graph_labels, return_inverse=True)

    node_start = np.concatenate([[0], np.cumsum(np.bincount(indicator, minlength=num_graphs))])
    order = np.argsort(edge_graph, kind="stable")  # group edges by graph, file order within each
    edge_start = np.concatenate([[0], np.cumsum(np.bincount(edge_graph, minlength=num_graphs))])
    local = torch.from_numpy((edges - node_start[edge_graph][:, None])[order].T.copy())
    order_t = torch.from_numpy(order)
    graphs = []
    for g in range(num_graphs):
        e0, e1 = int(edge_start[g]), int(edge_start[g + 1])
        graphs.append(Graph(
            x=x[node_start[g]:node_start[g + 1]],
            edge_index=local[:, e0:e1],
            edge_attr=None if edge_attr is None else edge_attr[order_t[e0:e1]],
            y=torch.tensor([int(y[g])]),
        ))
    info = {"num_node_attributes": 0 if node_attributes is None else node_attributes.shape[1],
            "num_edge_features": 0 if edge_attr is None else edge_attr.shape[1]}
    return GraphDataset(name, graphs, num_classes=len(classes), num_features=x.shape[1], task="graph", info=info)


@dataclass(frozen=True)
class TUConfig:
    """Options of the ``mutag`` and ``proteins`` datasets."""

    download: bool = True
    """Download a missing zip; False never touches the network (missing file -> DataUnavailable)."""


def load_tu(key: str, cfg: TUConfig) -> GraphDataset:
    """Registered TU dataset ``key`` from its verified zip under ``data_root() / "tu"``, size-checked."""
    spec = SPECS[key]
    folder = data_root() / "tu"
    (path,) = ensure_files("tu", [tu_file(spec)], folder, download=cfg.download)
    ds = read_tu_zip(path, spec.name)
    if (len(ds.graphs), ds.num_classes) != (spec.num_graphs, spec.num_classes):
        raise ArchlabError(f"dataset {key!r}: {path} gives {len(ds.graphs)} graphs and {ds.num_classes} classes, "
                           f"expected {spec.num_graphs} and {spec.num_classes}")
    ds.name = key
    return ds


@register_dataset("mutag", TUConfig, num_classes=2, kind="graph")
def load_mutag(cfg: TUConfig) -> GraphDataset:
    """MUTAG: 188 nitro compounds (mutagenic or not); 7 one-hot atom types, 4 one-hot bond types."""
    return load_tu("mutag", cfg)


@register_dataset("proteins", TUConfig, num_classes=2, kind="graph")
def load_proteins(cfg: TUConfig) -> GraphDataset:
    """PROTEINS: 1113 proteins (enzyme or not); 1 node attribute + 3 one-hot secondary-structure types."""
    return load_tu("proteins", cfg)
