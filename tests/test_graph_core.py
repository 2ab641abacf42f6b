"""The graph core: ops against dense references, batching, generators, readouts, GCN paths, the node loop."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import archlab
from archlab.data.graphs import load_graph_dataset
from archlab.engine.driver import Interrupted
from archlab.engine.metrics import read_metrics
from archlab.graph import (
    Graph,
    Set2Set,
    SparseAdj,
    add_self_loops,
    batch_graphs,
    coalesce,
    degree,
    gcn_norm,
    global_pool,
    is_undirected,
    laplacian_eigenvectors,
    random_walk_pe,
    remove_self_loops,
    scatter,
    segment_softmax,
    sparse_dropout,
    spmm,
    to_csr,
    to_dense_adj,
    to_undirected,
)
from archlab.graph.generators import sbm_for_edges, stochastic_block_model
from archlab.models.graph.base import random_graph
from archlab.recipe import from_dict
from archlab.runner import train
from archlab.train.node import NodeClassification

pytestmark = pytest.mark.usefixtures("single_thread")


def _graph(n: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return random_graph(n, 3, seed=seed)


# ------------------------------------------------------------------------------------------ ops


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_scatter_matches_a_python_loop(reduce):
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(20, 3, generator=gen)
    index = torch.randint(0, 6, (20,), generator=gen)
    index[index == 4] = 5  # bucket 4 stays empty -> 0
    out = scatter(src, index, 6, reduce)
    for k in range(6):
        rows = src[index == k]
        if len(rows) == 0:
            expected = torch.zeros(3)
        else:
            expected = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0).values,
                        "min": rows.min(0).values}[reduce]
        torch.testing.assert_close(out[k], expected)


def test_segment_softmax_normalizes_each_segment_and_is_stable():
    scores = torch.tensor([[1000.0], [1001.0], [-5.0], [0.0], [3.0]])
    index = torch.tensor([0, 0, 1, 2, 2])
    p = segment_softmax(scores, index, 4)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(scatter(p, index, 4)[:3], torch.ones(3, 1))
    torch.testing.assert_close(p[:2, 0], torch.softmax(torch.tensor([1000.0, 1001.0]), 0))


def test_gcn_norm_equals_the_dense_formula():
    x, ei = _graph()
    n = x.shape[0]
    ei_loops, w = gcn_norm(ei, n)
    a = to_dense_adj(ei, n) + torch.eye(n)
    d = a.sum(1).pow(-0.5)
    torch.testing.assert_close(to_dense_adj(ei_loops, n, w), d[:, None] * a * d[None, :])


def test_gcn_norm_keeps_exactly_one_self_loop():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 1, 1]])  # node 1 already has a loop
    ei_loops, _ = gcn_norm(ei, 3)
    loops = ei_loops[:, ei_loops[0] == ei_loops[1]]
    assert sorted(loops[0].tolist()) == [0, 1, 2]


def test_csr_equals_dense_adjacency_and_sums_duplicates():
    ei = torch.tensor([[0, 2, 2, 1], [1, 0, 0, 2]])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    dense = to_dense_adj(ei, 3, w)
    assert dense[0, 2] == 5.0 and dense[1, 0] == 1.0 and dense[2, 1] == 4.0
    torch.testing.assert_close(to_csr(ei, 3, w).to_dense(), dense)
    h = torch.randn(3, 4, requires_grad=True)
    (to_csr(ei, 3, w) @ h).sum().backward()
    torch.testing.assert_close(h.grad, dense.sum(0)[:, None].expand(3, 4))


def test_self_loops_degree_coalesce_undirected():
    ei = torch.tensor([[0, 1, 1, 1], [1, 2, 2, 1]])
    no_loops, _ = remove_self_loops(ei)
    assert (no_loops[0] != no_loops[1]).all()
    with_loops, w = add_self_loops(no_loops, 3, torch.ones(3), fill_value=2.0)
    assert with_loops.shape[1] == 6 and w[-3:].eq(2.0).all()
    torch.testing.assert_close(degree(ei[1], 3), torch.tensor([0.0, 2.0, 2.0]))
    merged, attr = coalesce(ei, 3, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert merged.shape[1] == 3 and attr.tolist() == [1.0, 4.0, 5.0]  # (0->1), (1->1), (1->2)x2
    und = to_undirected(no_loops, 3)
    assert is_undirected(und, 3) and not is_undirected(no_loops, 3)


def test_sparse_dropout_equals_dense_dropout_with_the_same_mask():
    x = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
    csr = x.to_sparse_csr()
    torch.manual_seed(0)
    dropped = sparse_dropout(csr, 0.5, True).to_dense()
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], 2 * x[kept])  # survivors scaled by 1 / (1 - p)
    assert (dropped[x == 0] == 0).all()
    assert sparse_dropout(csr, 0.5, False) is csr


def test_positional_encodings():
    x, ei = _graph(9)
    n = x.shape[0]
    pe = laplacian_eigenvectors(ei, n, 4)
    a = to_dense_adj(ei, n)
    d = a.sum(1).pow(-0.5)
    lap = torch.eye(n) - d[:, None] * a * d[None, :]
    for k in range(4):  # each column is an eigenvector of the normalized Laplacian
        v = pe[:, k]
        lam = v @ lap @ v
        torch.testing.assert_close(lap @ v, lam * v, atol=1e-4, rtol=0)
    walk = a / a.sum(1, keepdim=True)
    expected = torch.stack([torch.diagonal(torch.linalg.matrix_power(walk, t)) for t in range(1, 5)], 1)
    torch.testing.assert_close(random_walk_pe(ei, n, 4), expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ batching, readout


def test_batch_graphs_is_block_diagonal():
    graphs = [Graph(x=torch.randn(n, 2), edge_index=random_graph(n, 2, seed=n)[1], y=torch.tensor([n % 2]))
              for n in (3, 5, 4)]
    b = batch_graphs(graphs)
    assert b.num_nodes == 12 and b.num_graphs == 3 and b.y.tolist() == [1, 1, 0]
    assert b.batch.tolist() == [0] * 3 + [1] * 5 + [2] * 4
    assert (b.batch[b.edge_index[0]] == b.batch[b.edge_index[1]]).all()  # no edge crosses graphs
    dense = to_dense_adj(b.edge_index, 12)
    torch.testing.assert_close(dense[3:8, 3:8], to_dense_adj(graphs[1].edge_index, 5))
    with pytest.raises(ValueError, match="edge_attr"):
        batch_graphs([graphs[0], graphs[1].replace(edge_attr=torch.ones(graphs[1].num_edges, 1))])


def test_readouts_are_permutation_invariant():
    torch.manual_seed(0)
    x = torch.randn(7, 4)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    perm = torch.tensor([4, 1, 6, 0, 3, 2, 5])
    s2s = Set2Set(4, steps=2)
    torch.testing.assert_close(s2s(x, batch), s2s(x[perm], batch[perm]), atol=1e-6, rtol=0)
    for reduce in ("sum", "mean", "max"):
        torch.testing.assert_close(global_pool(x, batch, 2, reduce), global_pool(x[perm], batch[perm], 2, reduce))
    assert s2s(x, batch).shape == (2, 8)


# ------------------------------------------------------------------------------------ generators


def test_sbm_is_seeded_undirected_and_assortative():
    ei, y = stochastic_block_model([100, 100], 0.1, 0.01, seed=3)
    ei2, _ = stochastic_block_model([100, 100], 0.1, 0.01, seed=3)
    assert torch.equal(ei, ei2)
    assert is_undirected(ei, 200) and (ei[0] != ei[1]).all()
    same = (y[ei[0]] == y[ei[1]]).float().mean()
    assert same > 0.8  # expected 0.1 * 99 / (0.1 * 99 + 0.01 * 100) ~ 0.91
    expected_edges = 2 * (2 * 0.1 * 100 * 99 / 2 + 0.01 * 100 * 100)
    assert abs(ei.shape[1] - expected_edges) < 0.15 * expected_edges


def test_sbm_for_edges_hits_the_requested_size():
    ei, y = sbm_for_edges(20000, seed=0)
    assert abs(ei.shape[1] - 20000) < 2000
    assert len(y) == 2000


# ------------------------------------------------------------------------------------------- GCN


def test_gcn_sparse_path_equals_generic_message_passing():
    torch.manual_seed(0)
    x, ei = _graph(12)
    fast = archlab.create("gcn", in_channels=3, out_channels=4, dropout=0.0).eval()
    slow = archlab.create("gcn", in_channels=3, out_channels=4, dropout=0.0, impl="scatter").eval()
    slow.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(x, ei), slow(x, ei), atol=1e-6, rtol=0)
    w = torch.rand(ei.shape[1])
    torch.testing.assert_close(fast(x, ei, w), slow(x, ei, w), atol=1e-6, rtol=0)


def test_gcn_accepts_sparse_features_and_is_permutation_equivariant():
    torch.manual_seed(0)
    x, ei = _graph(10)
    x = torch.relu(x)  # some zeros, like bag-of-words features
    model = archlab.create("gcn", in_channels=3, out_channels=2).eval()
    out = model(x, ei)
    torch.testing.assert_close(model(x.to_sparse_csr(), ei), out, atol=1e-6, rtol=0)
    perm = torch.randperm(10)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(10)
    torch.testing.assert_close(model(x[perm], inv[ei]), out[perm], atol=1e-6, rtol=0)


def test_gcn_cache_follows_the_graph():
    x, ei = _graph(8)
    _, ei2 = _graph(8, seed=5)
    model = archlab.create("gcn", in_channels=3, out_channels=2, dropout=0.0).eval()
    ref = archlab.create("gcn", in_channels=3, out_channels=2, dropout=0.0, impl="scatter").eval()
    ref.load_state_dict(model.state_dict())
    model(x, ei)
    torch.testing.assert_close(model(x, ei2), ref(x, ei2), atol=1e-6, rtol=0)  # a new graph is not served stale


# ------------------------------------------------------------------------------------ node loop


def _node_recipe(**train_keys: Any) -> dict[str, Any]:
    return {"name": "sbm-gcn", "seed": 1,
            "model": {"name": "gcn", "hidden_channels": 8},
            "data": {"name": "sbm", "options": {"num_nodes": 300, "num_classes": 3, "p_in": 0.05, "p_out": 0.005}},
            "optim": {"name": "adam", "lr": 0.01, "weight_decay": 5e-4},
            "train": {"loop": "node", "epochs": 40, "eval_every": 5, "checkpoint_every": 10, "log_every": 1,
                      "threads": 1, "device": "cpu", **train_keys}}


def _run(raw: dict[str, Any], out: Path, resume: bool = False) -> dict[str, Any]:
    return train(from_dict(copy.deepcopy(raw)), out=out, resume=resume, progress=False, log=lambda _m: None)


def _interrupt_then_resume(raw: dict[str, Any], out: Path, monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    """Run ``raw`` into ``out`` with a real SIGINT at step ``at_step``, then resume it to the end."""
    original = NodeClassification.train_step

    def interrupt(self: NodeClassification, step: int) -> dict[str, Any]:
        if step == at_step:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, step)

    monkeypatch.setattr(NodeClassification, "train_step", interrupt)
    with pytest.raises(Interrupted):
        _run(raw, out)
    monkeypatch.setattr(NodeClassification, "train_step", original)
    _run(raw, out, resume=True)


def test_node_loop_learns_and_reports_test_at_best_validation(tmp_path: Path):
    summary = _run(_node_recipe(), tmp_path / "run")
    m = summary["metrics"]
    assert m["test_acc"] > 0.8 and m["val_acc"] >= m["final_val_acc"] - 1e-9
    assert summary["model"] == "gcn" and summary["steps"] == 40
    # The saved model is the best-validation model: re-evaluating it gives the reported numbers.
    again = archlab.runner.evaluate(tmp_path / "run")
    assert again["test_acc"] == pytest.approx(m["test_acc"]) and again["val_acc"] == pytest.approx(m["val_acc"])
    cfg = archlab.load(tmp_path / "run").config
    assert (cfg.in_channels, cfg.out_channels) == (32, 3)  # filled in from the dataset


def test_node_loop_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    raw = _node_recipe()
    _run(raw, tmp_path / "full")
    _interrupt_then_resume(raw, tmp_path / "cut", monkeypatch, at_step=25)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(tmp_path / "full" / "metrics.jsonl") == read_metrics(tmp_path / "cut" / "metrics.jsonl")


def test_graph_and_array_datasets_are_not_mixed_up():
    with pytest.raises(archlab.ArchlabError, match="needs kind 'graph'"):
        from_dict({**_node_recipe(), "data": {"name": "digits"}})
    raw = _node_recipe()
    raw["train"] = {**raw["train"], "loop": "supervised"}
    with pytest.raises(archlab.ArchlabError, match="'gcn' is a graph model and loop 'supervised' cannot train it"):
        from_dict(raw)  # the model is checked against the loop before the dataset
    with pytest.raises(archlab.ArchlabError, match="needs kind 'arrays'"):
        from_dict({**raw, "model": {"name": "mlp"}})
    with pytest.raises(archlab.ArchlabError, match="graph dataset"):
        archlab.data.load_dataset("sbm")
    with pytest.raises(archlab.ArchlabError, match="not a graph dataset"):
        load_graph_dataset("digits")


def test_node_loop_rejects_an_unknown_monitor(tmp_path: Path):
    with pytest.raises(archlab.ArchlabError, match="train.monitor"):
        _run(_node_recipe(monitor="val_auc"), tmp_path / "run")


def test_spmm_with_stored_transpose_has_the_dense_gradient():
    gen = torch.Generator().manual_seed(0)
    ei = torch.tensor([[0, 0, 1, 2, 3], [1, 2, 3, 3, 0]])  # directed: the transpose matters
    w = torch.rand(5, generator=gen)
    adj = SparseAdj.build(ei, 4, w, num_cols=5)
    dense = to_dense_adj(torch.cat([ei, torch.tensor([[4], [0]])], 1), 5, torch.cat([w, torch.zeros(1)]))[:4]
    x = torch.randn(5, 3, generator=gen, requires_grad=True)
    g = torch.randn(4, 3, generator=gen)
    (spmm(adj, x) * g).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (dense @ x2 * g).sum().backward()
    torch.testing.assert_close(spmm(adj, x), dense @ x)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(spmm(adj, x.detach().bfloat16()).float(), dense @ x.detach(), atol=0.05, rtol=0.02)


def test_dense_dropout_keeps_expected_share_and_scale():
    from archlab.graph import dropout

    x = torch.ones(200, 200)
    torch.manual_seed(0)
    y = dropout(x, 0.6, True)
    assert set(torch.unique(y).tolist()) == {0.0, 2.5}
    assert abs((y != 0).float().mean().item() - 0.4) < 0.01
    assert dropout(x, 0.6, False) is x and dropout(x, 1.0, True).abs().sum() == 0


@pytest.mark.parametrize("name", ["gcn", "gat", "sage", "chebnet", "hgnn", "rgcn", "slgcn", "graph_transformer"])
def test_node_models_run_under_bf16_autocast_with_sparse_features(name):
    """The sparse kernels lack bf16: the graph ops switch autocast off around them."""
    x, ei = random_graph(30, 8)
    x = torch.relu(x)
    model = archlab.create(name, in_channels=8, out_channels=3)
    inputs = x.to_sparse_csr() if model.accepts_sparse else x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(inputs, ei)
    out.float().sum().backward()
    assert out.shape == (30, 3) and torch.isfinite(out.float()).all()


def test_adjacency_cache_is_not_fooled_by_a_reused_address():
    from archlab.graph.cache import AdjacencyCache

    cache, builds = AdjacencyCache(), []
    for k in range(20):  # fresh tensors of one shape, freed each round: the allocator reuses addresses
        ei = torch.tensor([[k % 3, 1], [2, 0]])
        assert cache.get(ei, 3, lambda ei=ei: builds.append(ei.clone()) or ei.clone()).equal(ei)
        del ei
    assert len(builds) == 20
    ei = torch.tensor([[0, 1], [1, 0]])
    cache.get(ei, 2, lambda: 1)
    assert cache.get(ei, 2, lambda: 2) == 1  # same tensor: a hit
    assert cache.get(ei, 3, lambda: 3) == 3  # other node count: rebuilt
    ei.add_(0)
    assert cache.get(ei, 3, lambda: 4) == 4  # changed in place: rebuilt
    assert cache.get((ei, None), 3, lambda: 5) == 5 and cache.get((ei, None), 3, lambda: 6) == 5


def test_sparse_linear_gradient_equals_dense_also_after_dropout():
    from archlab.graph import linear

    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(9, 6, generator=gen))
    csr = x.to_sparse_csr()
    w = torch.randn(4, 6, generator=gen, requires_grad=True)
    g = torch.randn(9, 4, generator=gen)
    for _ in range(2):  # second pass: the cached transpose layout, new values from dropout
        torch.manual_seed(1)
        dropped = sparse_dropout(csr, 0.5, True)
        w.grad = None
        (linear(dropped, w) * g).sum().backward()
        w2 = w.detach().clone().requires_grad_()
        (dropped.to_dense() @ w2.t() * g).sum().backward()
        torch.testing.assert_close(w.grad, w2.grad)
        torch.testing.assert_close(linear(dropped, w), dropped.to_dense() @ w.t())


def test_sampled_minibatch_training_learns_and_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    raw = _node_recipe(epochs=6)
    raw["model"] = {"name": "sage", "hidden_channels": 16}
    raw["data"] = {**raw["data"], "batch_size": 16}  # 60 training nodes: 4 steps per epoch
    raw["loop"] = {"fanouts": [5, 5]}
    full = _run(raw, tmp_path / "full")
    assert full["steps"] == 24 and full["metrics"]["test_acc"] > 0.7
    _interrupt_then_resume(raw, tmp_path / "cut", monkeypatch, at_step=13)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sage_add_self_loops_equals_adding_them_to_the_graph():
    x, ei = _graph(10)
    torch.manual_seed(0)
    looped = archlab.create("sage", in_channels=3, out_channels=2, aggr="gcn", add_self_loops=True).eval()
    plain = archlab.create("sage", in_channels=3, out_channels=2, aggr="gcn").eval()
    plain.load_state_dict(looped.state_dict())
    ei_loops, _ = add_self_loops(ei, 10)
    torch.testing.assert_close(looped(x, ei), plain(x, ei_loops))
    assert not torch.allclose(looped(x, ei), plain(x, ei))
