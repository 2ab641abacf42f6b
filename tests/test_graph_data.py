"""Tests of the graph datasets: the restricted unpickler, Planetoid (cora, citeseer, pubmed) and TU
(mutag, proteins) -- parsing, checks, downloads from a local HTTP server, offline errors."""

from __future__ import annotations

import builtins
import hashlib
import os
import pickle
import shlex
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import closed_port_url

from archlab.data import data_root, load_dataset, planetoid, safe_pickle, tu
from archlab.data.graphs import graph_dataset_names, load_graph_dataset
from archlab.data.planetoid import EXPECTED, PlanetoidConfig, load_planetoid, read_planetoid
from archlab.data.safe_pickle import CSRMatrix
from archlab.data.tu import TUConfig, TUSpec, load_tu, read_tu_zip
from archlab.errors import ArchlabError, DataUnavailable
from archlab.graph.ops import is_undirected

# ----------------------------------------------------------------------------- helpers


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def csr_pickle(dense: np.ndarray) -> bytes:
    """A pickle that reads like one of a ``scipy.sparse.csr.csr_matrix`` (as the Planetoid files were
    written), made without scipy: the class reference, NEWOBJ, then the pickled ``__dict__`` applied
    by BUILD. The state is pickled by the real ``pickle``; the opcodes put in front store nothing in
    the memo, so the state's memo references stay valid."""
    rows, cols = np.nonzero(dense)
    state = {
        "_shape": dense.shape,
        "data": dense[rows, cols],
        "indices": cols.astype(np.int32),
        "indptr": np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))]).astype(np.int32),
        "format": "csr",
        "maxprint": 50,
    }
    return csr_state_pickle(state)


def csr_state_pickle(state: dict) -> bytes:
    # Protocol 3: Python 3 writes array bytes at protocol 2 through ``_codecs.encode``, which the
    # restricted unpickler rightly refuses (the real files, from Python 2, hold plain strings).
    body = pickle.dumps(state, protocol=3)
    assert body[:2] == b"\x80\x03" and body[-1:] == pickle.STOP
    return body[:2] + b"cscipy.sparse.csr\ncsr_matrix\n" + pickle.EMPTY_TUPLE + pickle.NEWOBJ + body[2:-1] + \
        pickle.BUILD + pickle.STOP


def shared_planetoid(name: str = "cora") -> Path:
    """``data_root()/planetoid`` when it has dataset ``name``'s eight files, else skip."""
    folder = data_root() / "planetoid"
    if not all((folder / f.name).exists() for f in planetoid.planetoid_files(name)):
        pytest.skip(f"{name} files not in {folder}")
    return folder


# ----------------------------------------------------------------------------- restricted unpickler


class _Evil:
    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple:
        return self.func, (self.arg,)


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "builtins.exec"])
def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, protocol: int, target: str) -> None:
    marker = tmp_path / "pwned"
    if target == "os.system":
        evil = _Evil(os.system, f"touch {shlex.quote(str(marker))}")
        refused = f"{os.system.__module__}.system"  # posix.system
    else:
        evil = _Evil(getattr(builtins, target.split(".")[1]), f"open({str(marker)!r}, 'w').write('x')")
        refused = target if protocol > 2 else target.replace("builtins", "__builtin__")
    path = tmp_path / "ind.evil.graph"
    # Wrapped in allowed containers, as a crafted Planetoid file would be.
    path.write_bytes(pickle.dumps(defaultdict(list, {0: [1], 1: [evil]}), protocol=protocol))
    with pytest.raises(ArchlabError) as info:
        safe_pickle.load(path)
    assert refused in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the control: the plain unpickler does run it
    assert marker.exists()


@pytest.mark.parametrize("name", ["numpy.load", "numpy.core.multiarray.scalar", "collections.OrderedDict",
                                  "scipy.sparse.csr.csr_array", "torch.load"])
def test_names_near_the_allowed_ones_are_refused(name: str) -> None:
    module, attr = name.rsplit(".", 1)
    data = b"\x80\x02c" + f"{module}\n{attr}\n".encode() + b")R."
    with pytest.raises(ArchlabError, match=f"refusing to unpickle {name}"):
        safe_pickle.loads(data, "crafted")


def test_numpy_arrays_and_adjacency_dicts_round_trip() -> None:
    labels = np.eye(3, dtype=np.int32)[[0, 2, 1, 2]]
    features = np.random.RandomState(0).rand(3, 5).astype(np.float32)
    graph = defaultdict(list, {0: [1, 2], 1: [0], 2: []})
    for obj in (labels, features):
        out = safe_pickle.loads(pickle.dumps(obj, protocol=3))  # protocol 2: see csr_state_pickle
        assert out.dtype == obj.dtype and np.array_equal(out, obj)
    out = safe_pickle.loads(pickle.dumps(graph, protocol=2))
    assert isinstance(out, defaultdict) and out == graph and out.default_factory is list


def test_a_csr_matrix_pickle_needs_no_scipy() -> None:
    dense = np.zeros((4, 6), dtype=np.float32)
    dense[0, 1], dense[2, 5], dense[2, 0], dense[3, 3] = 1.0, 2.5, -1.0, 4.0
    out = safe_pickle.loads(csr_pickle(dense))
    assert isinstance(out, CSRMatrix) and out.shape == (4, 6) and out.nnz == 4
    assert np.array_equal(out.toarray(), dense) and out.toarray().dtype == np.float32
    assert torch.equal(out.to_tensor(), torch.from_numpy(dense))


def test_csr_duplicates_are_summed_like_scipy() -> None:
    state = {"_shape": (2, 3), "data": np.array([1.0, 2.0, 5.0]), "indices": np.array([1, 1, 0]),
             "indptr": np.array([0, 2, 3])}
    m = CSRMatrix.__new__(CSRMatrix)
    m.__setstate__(state)
    assert np.array_equal(m.toarray(), [[0.0, 3.0, 0.0], [5.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "change",
    [{"indices": np.array([0, 7])}, {"indptr": np.array([0, 1])}, {"_shape": (2, -3)}, {"data": "xx"},
     {"indices": np.array([0.0, 1.0])}],
    ids=["index-out-of-range", "indptr-length", "negative-shape", "data-not-array", "float-indices"],
)
def test_inconsistent_csr_state_is_refused(change: dict) -> None:
    state = {"_shape": (2, 3), "data": np.array([1.0, 2.0]), "indices": np.array([0, 2]), "indptr": np.array([0, 1, 2])}
    state.update(change)
    data = csr_state_pickle(state)
    with pytest.raises(ArchlabError, match="crafted.*csr_matrix"):
        safe_pickle.loads(data, "crafted")


def test_a_real_scipy_csr_pickle_loads() -> None:
    sparse = pytest.importorskip("scipy.sparse", reason="peer `scipy` not installed")
    dense = np.random.RandomState(1).rand(5, 7) * (np.random.RandomState(2).rand(5, 7) > 0.6)
    out = safe_pickle.loads(pickle.dumps(sparse.csr_matrix(dense), protocol=3))  # scipy.sparse._csr
    assert isinstance(out, CSRMatrix) and np.array_equal(out.toarray(), dense)


def test_a_truncated_pickle_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ind.toy.y"
    path.write_bytes(pickle.dumps(np.eye(3), protocol=3)[:-10])
    with pytest.raises(ArchlabError, match="not a valid pickle") as info:
        safe_pickle.load(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- Planetoid: synthetic files


def write_planetoid(folder: Path, name: str, test_index: list[int], num_train: int, num_allx: int,
                    graph: dict[int, list[int]], num_features: int = 6, num_classes: int = 3,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Write the eight files of a Planetoid-format dataset; returns the arrays written."""
    rng = np.random.RandomState(seed)
    n_test = len(test_index)
    allx = (rng.rand(num_allx, num_features) < 0.4).astype(np.float32)
    tx = (rng.rand(n_test, num_features) < 0.4).astype(np.float32) + 2  # + 2: tell test rows apart
    ally = np.eye(num_classes, dtype=np.int32)[rng.randint(num_classes, size=num_allx)]
    ty = np.eye(num_classes, dtype=np.int32)[rng.randint(num_classes, size=n_test)]
    arrays = {"x": allx[:num_train], "y": ally[:num_train], "tx": tx, "ty": ty, "allx": allx, "ally": ally}
    folder.mkdir(parents=True, exist_ok=True)
    for part, array in arrays.items():
        data = csr_pickle(array) if part in ("x", "tx", "allx") else pickle.dumps(array, protocol=3)
        (folder / f"ind.{name}.{part}").write_bytes(data)
    (folder / f"ind.{name}.graph").write_bytes(pickle.dumps(defaultdict(list, graph), protocol=2))
    (folder / f"ind.{name}.test.index").write_text("".join(f"{i}\n" for i in test_index))
    return arrays


def test_planetoid_with_test_index_gaps_pads_like_the_reference(tmp_path: Path) -> None:
    """Citeseer's case: the test indices cover len(allx)..N-1 with gaps, listed in shuffled order."""
    num_train, num_allx = 4, 506
    test_index = [515, 506, 510, 517, 508, 507, 513, 512, 511, 514]  # 509 and 516 are missing
    graph = {0: [1, 1, 2], 1: [0], 2: [2, 3], 3: [506], 506: [3, 515], 515: [506], 514: [517]}  # 509, 516: no entry
    arrays = write_planetoid(tmp_path, "toy", test_index, num_train, num_allx, graph)
    ds = read_planetoid(tmp_path, "toy")
    g = ds.graph
    assert (g.num_nodes, ds.num_features, ds.num_classes, ds.task) == (518, 6, 3, "node")
    assert ds.info == {"padded_nodes": 2}
    x, y = g.x.numpy(), g.y.numpy()
    assert x.dtype == np.float32 and np.array_equal(x[:num_allx], arrays["allx"])
    assert np.array_equal(y[:num_allx], arrays["ally"].argmax(1))
    for k, node in enumerate(test_index):  # row k of tx / ty is node test_index[k]
        assert np.array_equal(x[node], arrays["tx"][k]) and y[node] == arrays["ty"][k].argmax()
    for gap in (509, 516):
        assert not x[gap].any() and y[gap] == 0
    assert torch.equal(g.train_mask.nonzero().flatten(), torch.arange(4))
    assert torch.equal(g.val_mask.nonzero().flatten(), torch.arange(4, 504))
    assert torch.equal(g.test_mask.nonzero().flatten(), torch.tensor(sorted(test_index)))
    # Both directions, duplicates merged, self-loops dropped.
    undirected = {(0, 1), (0, 2), (2, 3), (3, 506), (506, 515), (514, 517)}
    expected = undirected | {(b, a) for a, b in undirected}
    assert set(map(tuple, g.edge_index.t().tolist())) == expected
    assert g.edge_index.shape[1] == len(expected)


def test_planetoid_without_gaps_pads_nothing(tmp_path: Path) -> None:
    test_index = list(range(505, 512))[::-1]
    write_planetoid(tmp_path, "toy", test_index, 5, 505, {0: [1]}, num_features=4, num_classes=2, seed=3)
    ds = read_planetoid(tmp_path, "toy")
    assert ds.graph.num_nodes == 512 and ds.info == {"padded_nodes": 0} and ds.num_classes == 2


@pytest.mark.parametrize(
    ("kwargs", "part", "match"),
    [
        ({"test_index": [600, 601], "num_allx": 505}, "test.index", "start at 600, expected 505"),
        ({"test_index": [505, 505], "num_allx": 505}, "test.index", "distinct"),
        ({"test_index": [400, 401], "num_allx": 400}, "allx", "val rows"),
        ({"test_index": [505, 506], "num_allx": 505, "graph": {0: [999]}}, "graph", "outside"),
    ],
)
def test_planetoid_files_that_do_not_fit_together_are_refused(tmp_path: Path, kwargs: dict, part: str,
                                                              match: str) -> None:
    args = {"num_train": 3, "graph": {0: [1]}} | kwargs
    write_planetoid(tmp_path, "toy", **args)
    with pytest.raises(ArchlabError, match=match) as info:
        read_planetoid(tmp_path, "toy")
    assert str(tmp_path / f"ind.toy.{part}") in str(info.value)


def test_a_planetoid_file_with_a_foreign_object_is_refused(tmp_path: Path) -> None:
    write_planetoid(tmp_path, "toy", [505, 506], 3, 505, {0: [1]})
    (tmp_path / "ind.toy.ty").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ArchlabError, match="ind.toy.ty: expected a 2-d numeric matrix"):
        read_planetoid(tmp_path, "toy")


# ----------------------------------------------------------------------------- Planetoid: Cora


def test_cora_statistics() -> None:
    folder = shared_planetoid()
    ds = load_graph_dataset("cora")
    g = ds.graph
    assert (ds.name, ds.task, ds.num_features, ds.num_classes) == ("cora", "node", 1433, 7)
    assert (g.num_nodes, g.num_edges, g.x.shape) == (2708, 10556, (2708, 1433))
    assert g.y.dtype == torch.int64 and g.y.bincount().tolist() == [351, 217, 418, 818, 426, 298, 180]
    assert [int(m.sum()) for m in (g.train_mask, g.val_mask, g.test_mask)] == [140, 500, 1000]
    assert not (g.train_mask & g.val_mask).any() and not (g.train_mask & g.test_mask).any()
    assert not (g.val_mask & g.test_mask).any()
    assert torch.equal(g.train_mask.nonzero().flatten(), torch.arange(140))
    assert torch.equal(g.val_mask.nonzero().flatten(), torch.arange(140, 640))
    assert torch.equal(g.test_mask.nonzero().flatten(), torch.arange(1708, 2708))
    test_index = [int(v) for v in (folder / "ind.cora.test.index").read_text().split()]
    assert sorted(test_index) == list(range(1708, 2708))
    assert is_undirected(g.edge_index, g.num_nodes) and not (g.edge_index[0] == g.edge_index[1]).any()
    assert len(set(map(tuple, g.edge_index.t().tolist()))) == g.num_edges
    sums = g.x.sum(1)
    assert torch.allclose(sums[sums > 0], torch.ones(int((sums > 0).sum())))  # row-normalised
    raw = load_graph_dataset("cora", {"normalize_features": False}).graph.x
    assert set(raw.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(g.x, raw / raw.sum(1, keepdim=True))


def test_cora_equals_pyg_planetoid(tmp_path: Path) -> None:
    folder = shared_planetoid()
    pytest.importorskip("scipy.sparse", reason="peer `scipy` not installed (PyG unpickles with it)")
    datasets = pytest.importorskip("torch_geometric.datasets", reason="peer `torch_geometric` not installed")
    raw = tmp_path / "Cora" / "raw"
    raw.mkdir(parents=True)
    for file in planetoid.planetoid_files("cora"):
        shutil.copy(folder / file.name, raw / file.name)
    ref = datasets.Planetoid(str(tmp_path), "Cora", force_reload=True)[0]
    g = load_graph_dataset("cora", {"normalize_features": False}).graph
    assert torch.equal(g.x, ref.x) and torch.equal(g.y, ref.y)
    for name in ("train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(g, name), getattr(ref, name)), name
    assert g.num_edges == ref.edge_index.shape[1]
    assert set(map(tuple, g.edge_index.t().tolist())) == set(map(tuple, ref.edge_index.t().tolist()))


def test_cora_files_that_parse_to_the_wrong_size_are_refused(monkeypatch) -> None:
    shared_planetoid()
    monkeypatch.setitem(EXPECTED, "cora", planetoid.Expected(nodes=2708, features=1433, classes=7, train=141))
    with pytest.raises(ArchlabError, match=r"'cora'.*\(2708, 1433, 7, 140, 500, 1000\).*141"):
        load_planetoid("cora", PlanetoidConfig())


def test_cora_download_from_a_local_server(http_dir: tuple[str, Path], tmp_path: Path, monkeypatch) -> None:
    shared = shared_planetoid()
    url, served = http_dir
    for file in planetoid.planetoid_files("cora"):
        shutil.copy(shared / file.name, served / file.name)
    monkeypatch.setattr(planetoid, "MIRRORS", (url + "missing/", url))  # the first answers 404
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path / "data"))
    ds = load_graph_dataset("cora")
    folder = tmp_path / "data" / "planetoid"
    assert sorted(os.listdir(folder)) == sorted(f.name for f in planetoid.planetoid_files("cora"))
    assert (ds.graph.num_nodes, ds.graph.num_edges) == (2708, 10556)


def test_a_planetoid_download_with_a_bad_checksum_is_refused(http_dir: tuple[str, Path], tmp_path: Path,
                                                             monkeypatch) -> None:
    url, served = http_dir
    for file in planetoid.planetoid_files("cora"):
        (served / file.name).write_bytes(b"not the real file")
    monkeypatch.setattr(planetoid, "MIRRORS", (url,))
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path / "data"))
    with pytest.raises(DataUnavailable, match="checksum mismatch"):
        load_graph_dataset("cora")
    assert os.listdir(tmp_path / "data" / "planetoid") == []  # neither a file nor a temporary part


def test_planetoid_offline_gives_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(planetoid, "MIRRORS", (closed_port_url(),))
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path))
    for options in ({}, {"download": False}):
        with pytest.raises(DataUnavailable) as info:
            load_graph_dataset("citeseer", options)
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / "planetoid") in message and "ARCHLAB_DATA" in message
        assert all(f.name in message for f in planetoid.planetoid_files("citeseer"))


@pytest.mark.parametrize("name", ["citeseer", "pubmed"])
def test_citeseer_and_pubmed_statistics(name: str) -> None:
    shared_planetoid(name)
    ds = load_graph_dataset(name)
    want = EXPECTED[name]
    g = ds.graph
    assert (g.num_nodes, ds.num_features, ds.num_classes) == (want.nodes, want.features, want.classes)
    assert [int(m.sum()) for m in (g.train_mask, g.val_mask, g.test_mask)] == [want.train, 500, 1000]
    assert is_undirected(g.edge_index, g.num_nodes)
    assert ds.info["padded_nodes"] == (15 if name == "citeseer" else 0)


# ----------------------------------------------------------------------------- TU


def tu_zip(path: Path, name: str = "TOY", attributes: bool = True, edge_labels: bool = True,
           extra: dict[str, str] | None = None) -> Path:
    """A tiny TU archive: 3 graphs (nodes 1-3, 4-5, 6-8), members in a ``<name>/`` folder like the
    official zips; edges of graph 3 listed before and after graph 2's."""
    files = {
        "A": "1, 2\n2, 1\n2, 3\n3, 2\n6, 7\n4, 5\n5, 4\n7, 6\n8, 6\n6, 8\n",
        "graph_indicator": "1\n1\n1\n2\n2\n3\n3\n3\n",
        "graph_labels": "-1\n1\n-1\n",
        "node_labels": "1\n2\n1\n3\n3\n1\n2\n2\n",
    }
    if attributes:
        files["node_attributes"] = "".join(f"{i}.5, {-i}\n" for i in range(8))
    if edge_labels:
        files["edge_labels"] = "0\n0\n1\n1\n2\n0\n0\n2\n1\n1\n"
    files.update(extra or {})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/README.txt", "a tiny test archive")
        for suffix, text in files.items():
            archive.writestr(f"{name}/{name}_{suffix}.txt", text)
    return path


def test_tu_parse_is_exact(tmp_path: Path) -> None:
    ds = read_tu_zip(tu_zip(tmp_path / "TOY.zip"), "TOY")
    assert (ds.task, ds.num_classes, ds.num_features, len(ds.graphs)) == ("graph", 2, 5, 3)
    assert ds.info == {"num_node_attributes": 2, "num_edge_features": 3}
    onehot = np.eye(3, dtype=np.float32)
    attrs = np.array([[i + 0.5, -i] for i in range(8)], dtype=np.float32)
    x = np.concatenate([attrs, onehot[[0, 1, 0, 2, 2, 0, 1, 1]]], axis=1)  # labels 1..3 -> index label - 1
    expected = [  # (node rows, local edges in file order, edge labels, y)
        (slice(0, 3), [[0, 1], [1, 0], [1, 2], [2, 1]], [0, 0, 1, 1], 0),
        (slice(3, 5), [[0, 1], [1, 0]], [0, 0], 1),
        (slice(5, 8), [[0, 1], [1, 0], [2, 0], [0, 2]], [2, 2, 1, 1], 0),
    ]
    for g, (rows, edges, labels, y) in zip(ds.graphs, expected, strict=True):
        assert torch.equal(g.x, torch.from_numpy(x[rows])) and g.x.dtype == torch.float32
        assert torch.equal(g.edge_index, torch.tensor(edges).t()) and g.edge_index.dtype == torch.int64
        assert torch.equal(g.edge_attr, torch.from_numpy(onehot[labels]))
        assert torch.equal(g.y, torch.tensor([y]))


def test_tu_without_optional_files(tmp_path: Path) -> None:
    ds = read_tu_zip(tu_zip(tmp_path / "TOY.zip", attributes=False, edge_labels=False), "TOY")
    assert ds.num_features == 3 and all(g.edge_attr is None for g in ds.graphs)
    assert ds.info == {"num_node_attributes": 0, "num_edge_features": 0}


def test_tu_equals_pyg_tudataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("torch_geometric.datasets", reason="peer `torch_geometric` not installed")
    path = tu_zip(tmp_path / "TOY.zip")
    raw = tmp_path / "TOY" / "raw"
    raw.mkdir(parents=True)
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            (raw / Path(member.filename).name).write_bytes(archive.read(member))
    ref = datasets.TUDataset(str(tmp_path), "TOY", use_node_attr=True, use_edge_attr=True, force_reload=True)
    ours = read_tu_zip(path, "TOY")
    assert len(ours.graphs) == len(ref) and ours.num_features == ref.num_features
    for g, r in zip(ours.graphs, ref, strict=True):
        assert torch.equal(g.x, r.x) and torch.equal(g.y, r.y)

        def edges(edge_index: torch.Tensor, edge_attr: torch.Tensor) -> list:
            return sorted(zip(map(tuple, edge_index.t().tolist()), map(tuple, edge_attr.tolist()), strict=True))

        assert edges(g.edge_index, g.edge_attr) == edges(r.edge_index, r.edge_attr)  # PyG sorts edges


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"A": "1, 4\n"}, "between two graphs"),
        ({"A": "1, 9\n"}, "outside 1..8"),
        ({"graph_indicator": "1\n2\n1\n2\n2\n3\n3\n3\n"}, "contiguous"),
        ({"node_labels": "1\n2\n"}, "node_labels has 2 rows for 8 nodes"),
        ({"edge_labels": "0\n"}, "edge_labels has 1 rows for 10 edges"),
        ({"A": "1; 2\n"}, "TOY_A.txt"),
    ],
)
def test_malformed_tu_archives_are_refused(tmp_path: Path, extra: dict, match: str) -> None:
    path = tu_zip(tmp_path / "TOY.zip", extra=extra)
    with pytest.raises(ArchlabError, match=match) as info:
        read_tu_zip(path, "TOY")
    assert str(path) in str(info.value)


def test_tu_missing_member_or_not_a_zip(tmp_path: Path) -> None:
    path = tu_zip(tmp_path / "TOY.zip")
    with pytest.raises(ArchlabError, match="no OTHER_A.txt"):
        read_tu_zip(path, "OTHER")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK not really")
    with pytest.raises(ArchlabError, match="not a readable zip"):
        read_tu_zip(bad, "TOY")


def test_tu_download_from_a_local_server(http_dir: tuple[str, Path], tmp_path: Path, monkeypatch) -> None:
    url, served = http_dir
    data = tu_zip(served / "MUTAG.zip", name="MUTAG").read_bytes()
    monkeypatch.setattr(tu, "MIRRORS", (url + "missing/", url))
    monkeypatch.setitem(tu.SPECS, "mutag", TUSpec("MUTAG", sha256(data), num_graphs=3, num_classes=2))
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path / "data"))
    ds = load_graph_dataset("mutag")
    assert os.listdir(tmp_path / "data" / "tu") == ["MUTAG.zip"]
    assert (ds.name, ds.task, len(ds.graphs), ds.num_classes) == ("mutag", "graph", 3, 2)
    assert torch.equal(ds.graphs[1].y, torch.tensor([1]))
    monkeypatch.setitem(tu.SPECS, "mutag", TUSpec("MUTAG", sha256(data), num_graphs=188, num_classes=2))
    with pytest.raises(ArchlabError, match=r"'mutag'.*3 graphs.*expected 188"):  # verified but the wrong size
        load_tu("mutag", TUConfig())


def test_a_tu_download_with_a_bad_checksum_is_refused(http_dir: tuple[str, Path], tmp_path: Path,
                                                      monkeypatch) -> None:
    url, served = http_dir
    tu_zip(served / "PROTEINS.zip", name="PROTEINS")
    monkeypatch.setattr(tu, "MIRRORS", (url,))
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path / "data"))
    with pytest.raises(DataUnavailable, match="PROTEINS.zip.*checksum mismatch"):
        load_graph_dataset("proteins")
    assert os.listdir(tmp_path / "data" / "tu") == []


def test_tu_offline_gives_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tu, "MIRRORS", (closed_port_url(),))
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path))
    for options in ({}, {"download": False}):
        with pytest.raises(DataUnavailable) as info:
            load_graph_dataset("mutag", options)
        message = str(info.value)
        assert "\n" not in message and "MUTAG.zip" in message and str(tmp_path / "tu") in message


@pytest.mark.parametrize(("name", "graphs", "features"), [("mutag", 188, 7), ("proteins", 1113, 4)])
def test_real_tu_datasets(name: str, graphs: int, features: int) -> None:
    spec = tu.SPECS[name]
    if not (data_root() / "tu" / f"{spec.name}.zip").exists():
        pytest.skip(f"{spec.name}.zip not in {data_root() / 'tu'}")
    ds = load_graph_dataset(name)
    assert (len(ds.graphs), ds.num_classes, ds.num_features) == (graphs, 2, features)


# ----------------------------------------------------------------------------- registry


def test_graph_datasets_are_registered() -> None:
    assert {"cora", "citeseer", "pubmed", "mutag", "proteins"} <= set(graph_dataset_names())
    with pytest.raises(ArchlabError, match="graph dataset"):
        load_dataset("cora")
    with pytest.raises(ArchlabError, match=r"unknown key data\.options\.normalise"):
        load_graph_dataset("cora", {"normalise": True})
    with pytest.raises(ArchlabError, match=r"data\.options\.download"):
        load_graph_dataset("mutag", {"download": "yes"})
