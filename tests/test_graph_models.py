"""ChebNet, MPNN, Graph Transformer (GPS), HGNN, R-GCN and the structure-learning GCN: shapes, dense
reference formulas, fast == generic paths, permutation equivariance (invariance for graph-level
outputs), PyG where it has the same layer, and a tiny learning run each."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archlab
from archlab.data.graphs import load_graph_dataset
from archlab.graph import Graph, batch_graphs, laplacian_eigenvectors, to_dense_adj
from archlab.models.graph.base import random_graph
from archlab.models.graph.cheb import ChebConv
from archlab.models.graph.graph_transformer import batched_laplacian_eigenvectors, pack_nodes
from archlab.models.graph.hypergraph import HypergraphConv, neighborhood_hyperedges
from archlab.models.graph.mpnn import EdgeNetworkConv
from archlab.models.graph.rgcn import RGCNConv
from archlab.models.graph.structure_learning import GraphLearner

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pyg_nn():
    pytest.importorskip("torch_geometric")
    from torch_geometric import nn

    return nn


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _permuted(x: torch.Tensor, edge_index: torch.Tensor, seed: int = 0):
    """Relabel the nodes: new node ``p`` is old node ``perm[p]``. Returns ``(perm, x', edge_index')``."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    return perm, x[perm], inverse[edge_index]


def _directed_graph(n: int = 12, f: int = 6, seed: int = 0):
    """Directed, with one node without incoming edges (catches transposed adjacencies and 0-degree bugs)."""
    x, ei = random_graph(n, f, num_edges=3 * n, seed=seed, undirected=False)
    return x, ei[:, ei[1] != n - 1]


def _sbm():
    ds = load_graph_dataset("sbm", {"num_nodes": 200, "num_classes": 4, "p_in": 0.08, "p_out": 0.01,
                                    "num_features": 16, "feature_noise": 2.0, "train_per_class": 10, "num_val": 40})
    return ds.graph


def _node_accuracy(model: torch.nn.Module, steps: int = 60, lr: float = 0.01, **inputs) -> float:
    """Full-batch training on the SBM graph's training nodes; test accuracy (chance: 0.25)."""
    torch.manual_seed(0)
    g = _sbm()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    for _ in range(steps):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(g.x, g.edge_index, **inputs)[g.train_mask], g.y[g.train_mask]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(g.x, g.edge_index, **inputs).argmax(-1)
    return (pred[g.test_mask] == g.y[g.test_mask]).float().mean().item()


def _node_model(name: str, **overrides):
    torch.manual_seed(0)
    return archlab.create(name, in_channels=16, out_channels=4, **overrides)


# ------------------------------------------------------------------------------------------------ ChebNet


def _dense_cheb(conv: ChebConv, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """The paper's formula with dense matrices: L̃ = -D^-1/2 A D^-1/2 (λ_max = 2), T_k by the recurrence."""
    n = x.shape[0]
    a = to_dense_adj(edge_index, n)
    a.fill_diagonal_(0)
    d = a.sum(1)
    inv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    lap = -inv[:, None] * a * inv[None, :]
    terms = [x, lap @ x]
    while len(terms) < conv.K:
        terms.append(2 * lap @ terms[-1] - terms[-2])
    return sum(t @ conv.weight[k].T for k, t in enumerate(terms[:conv.K])) + conv.bias


@pytest.mark.parametrize("K", [1, 2, 3, 5])
@pytest.mark.parametrize("dims", [(6, 3), (6, 9)])  # narrowing: Clenshaw on XΘ; widening: recurrence on X
def test_chebconv_paths_match_the_dense_formula(K, dims):
    x, ei = _directed_graph(f=dims[0])
    ei = torch.cat([ei, torch.tensor([[2], [2]])], dim=1)  # a self loop: L̃ has no diagonal
    fast, generic = ChebConv(*dims, K), ChebConv(*dims, K, impl="scatter")
    generic.load_state_dict(fast.state_dict())
    with torch.no_grad():
        fast.bias.normal_()
        generic.bias.copy_(fast.bias)
    expected = _dense_cheb(fast, x, ei)
    _close(fast(x, ei), expected)
    _close(generic(x, ei), expected)
    _close(fast(x.to_sparse_csr(), ei), expected)  # sparse features: always Clenshaw on XΘ


def test_chebconv_edge_weights_and_gradients():
    x, ei = _directed_graph()
    w = torch.rand(ei.shape[1])
    fast, generic = ChebConv(6, 4, 3), ChebConv(6, 4, 3, impl="scatter")
    generic.load_state_dict(fast.state_dict())
    _close(fast(x, ei, w), generic(x, ei, w))
    fast(x, ei).square().sum().backward()
    generic(x, ei).square().sum().backward()
    _close(fast.weight.grad, generic.weight.grad, 1e-4)


def test_chebconv_matches_pyg(pyg_nn):
    x, ei = random_graph(12, 6, seed=1)  # undirected: PyG counts degrees at the source, archlab at the target
    ours, theirs = ChebConv(6, 4, 3), pyg_nn.ChebConv(6, 4, K=3)
    with torch.no_grad():
        for k in range(3):
            theirs.lins[k].weight.copy_(ours.weight[k])
        ours.bias.normal_()
        theirs.bias.copy_(ours.bias)
    _close(ours(x, ei), theirs(x, ei))


def test_chebnet_equivariance_and_learning():
    model = _node_model("chebnet").eval()
    x, ei = random_graph(15, 16, seed=3)
    perm, xp, eip = _permuted(x, ei)
    with torch.no_grad():
        _close(model(xp, eip), model(x, ei)[perm])
    assert model(x, ei).shape == (15, 4)
    assert _node_accuracy(_node_model("chebnet")) > 0.6


# --------------------------------------------------------------------------------------------------- MPNN


def _molecules(count: int, seed: int = 0) -> list[Graph]:
    """Small random graphs; each edge has a one-hot type of 2; target: fraction of edges of type 1."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for g in range(count):
        n = int(torch.randint(5, 10, (1,), generator=gen))
        x, ei = random_graph(n, 3, seed=seed * 1000 + g)
        x = torch.ones(n, 3)  # uninformative node features: the target is in the edges only
        kinds = (torch.rand(ei.shape[1], generator=gen) < torch.rand(1, generator=gen)).long()
        graphs.append(Graph(x=x, edge_index=ei, edge_attr=F.one_hot(kinds, 2).float(),
                            y=kinds.float().mean().view(1)))
    return graphs


def test_edge_network_message_is_a_matrix_per_edge():
    conv = EdgeNetworkConv(4, 3, edge_hidden=8)
    h, ei = random_graph(6, 4, seed=1)
    e = torch.randn(ei.shape[1], 3)
    mats = conv.edge_matrices(e)
    expected = torch.zeros(6, 4)
    for k in range(ei.shape[1]):
        expected[ei[1, k]] += mats[k] @ h[ei[0, k]]
    _close(conv(h, ei, mats), expected)


def test_mpnn_shapes_and_permutation_invariance():
    torch.manual_seed(0)
    model = archlab.create("mpnn", in_channels=3, edge_channels=2, hidden_channels=16, out_channels=2).eval()
    b = batch_graphs(_molecules(3))
    out = model(b.x, b.edge_index, b.edge_attr, b.batch)
    assert out.shape == (3, 2)
    perm, xp, eip = _permuted(b.x, b.edge_index)
    edge_order = torch.randperm(b.edge_index.shape[1])
    with torch.no_grad():
        _close(model(xp, eip[:, edge_order], b.edge_attr[edge_order], b.batch[perm]), out)
        # graph 0 does not see graph 1
        changed = b.edge_attr.clone()
        changed[b.batch[b.edge_index[0]] == 1] = torch.randn(2)
        other = model(b.x, b.edge_index, changed, b.batch)
        _close(other[[0, 2]], out[[0, 2]])
        assert not torch.allclose(other[1], out[1])
        # without edge features: every edge gets the all-ones vector
        _close(model(b.x, b.edge_index, None, b.batch), model(b.x, b.edge_index, torch.ones_like(b.edge_attr), b.batch))
    assert archlab.create("mpnn", in_channels=3, aggr="mean")(b.x, b.edge_index, None).shape == (1, 1)
    no_edge_features = archlab.create("mpnn", in_channels=3, edge_channels=0)  # datasets without edge features
    assert no_edge_features(b.x, b.edge_index, batch=b.batch).shape == (3, 1)


def test_mpnn_learns_an_edge_feature_regression():
    torch.manual_seed(0)
    train, test = batch_graphs(_molecules(48, seed=1)), batch_graphs(_molecules(48, seed=2))
    model = archlab.create("mpnn", in_channels=3, edge_channels=2, hidden_channels=16, edge_hidden=16,
                           out_channels=1, steps=2, set2set_steps=2, aggr="mean")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(80):
        opt.zero_grad()
        F.mse_loss(model(train.x, train.edge_index, train.edge_attr, train.batch).squeeze(-1), train.y).backward()
        opt.step()
    with torch.no_grad():
        pred = model(test.x, test.edge_index, test.edge_attr, test.batch).squeeze(-1)
    r2 = 1 - F.mse_loss(pred, test.y) / test.y.var(unbiased=False)
    assert r2 > 0.7  # predicting the mean scores 0


# ------------------------------------------------------------------------------------- Graph Transformer


def _two_graphs():
    a, b = random_graph(7, 16, seed=1), random_graph(5, 16, seed=2)
    return batch_graphs([Graph(x=a[0], edge_index=a[1]), Graph(x=b[0], edge_index=b[1])])


@pytest.mark.parametrize("pe", ["none", "rw"])
@pytest.mark.parametrize("local", ["none", "gcn"])
def test_graph_transformer_is_permutation_equivariant(pe, local):
    model = _node_model("graph_transformer", hidden_channels=16, pe=pe, local=local).eval()
    x, ei = random_graph(10, 16, seed=5)
    perm, xp, eip = _permuted(x, ei)
    with torch.no_grad():
        _close(model(xp, eip), model(x, ei)[perm])
        b = _two_graphs()  # permuted batch: the nodes of a graph are no longer contiguous
        perm, xp, eip = _permuted(b.x, b.edge_index)
        _close(model(xp, eip, b.batch[perm]), model(b.x, b.edge_index, b.batch)[perm])


def test_graph_transformer_attention_stays_within_each_graph():
    model = _node_model("graph_transformer", hidden_channels=16, pe="none", local="none").eval()
    b = _two_graphs()
    first = b.batch == 0
    with torch.no_grad():
        out = model(b.x, b.edge_index, b.batch)
        changed = b.x.clone()
        changed[~first] = torch.randn(int((~first).sum()), 16)
        _close(model(changed, b.edge_index, b.batch)[first], out[first])
        # the batched output of graph 0 is graph 0 run alone (no batch vector, no mask)
        alone = b.edge_index[:, first[b.edge_index[0]]]
        _close(model(b.x[first], alone), out[first])


def test_graph_transformer_shapes_and_pooling():
    b = _two_graphs()
    for pe in ("lap", "rw", "none"):
        model = _node_model("graph_transformer", hidden_channels=16, pe=pe)
        assert model(b.x, b.edge_index, b.batch).shape == (12, 4)
        assert model(b.x, b.edge_index).shape == (12, 4)
    for pool in ("mean", "sum"):  # graph-level outputs are permutation invariant (rw PE has no sign ambiguity)
        pooled = _node_model("graph_transformer", hidden_channels=16, pool=pool, pe="rw").eval()
        perm, xp, eip = _permuted(b.x, b.edge_index)
        with torch.no_grad():
            out = pooled(b.x, b.edge_index, b.batch)
            assert out.shape == (2, 4)
            _close(pooled(xp, eip, b.batch[perm]), out)
    with pytest.raises(archlab.ArchlabError, match="divisible"):
        archlab.create("graph_transformer", hidden_channels=10, heads=4)


def test_batched_laplacian_pe_equals_per_graph_pe_up_to_sign():
    b = _two_graphs()
    pe = batched_laplacian_eigenvectors(b.edge_index, b.batch, 2, 8)
    start = 0
    for g in range(2):
        nodes = (b.batch == g).nonzero().flatten()
        ei = b.edge_index[:, b.batch[b.edge_index[0]] == g] - start
        alone = laplacian_eigenvectors(ei, len(nodes), 8)
        signs = torch.sign((pe[nodes] * alone).sum(0))
        signs[signs == 0] = 1
        _close(pe[nodes], alone * signs, 1e-4)
        start += len(nodes)
    assert torch.equal(pe[b.batch == 1][:, 4:], torch.zeros(5, 4))  # 5 nodes: 4 non-trivial eigenvectors


def test_pack_nodes_handles_unsorted_batches():
    batch = torch.tensor([1, 0, 1, 2, 0, 1])
    pack = pack_nodes(batch, 3)
    assert pack.n_max == 3
    assert pack.slot.tolist() == [3, 0, 4, 6, 1, 5]
    assert pack.valid.tolist() == [[True, True, False], [True, True, True], [True, False, False]]


def test_graph_transformer_learns():
    model = _node_model("graph_transformer", hidden_channels=16, pe="rw", dropout=0.1)
    assert _node_accuracy(model, steps=40) > 0.55


# --------------------------------------------------------------------------------------------------- HGNN


def _incidence(seed: int = 0):
    """8 nodes, 5 hyperedges of sizes 1-4 (one node in no hyperedge)."""
    members = [[0, 1, 2], [2, 3], [3, 4, 5, 6], [6], [0, 5, 1]]
    node = torch.tensor([v for e in members for v in e])
    edge = torch.tensor([i for i, e in enumerate(members) for _ in e])
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(seed)), torch.stack([node, edge])


def test_hypergraph_conv_paths_match_the_dense_formula():
    x, hei = _incidence()
    w = torch.rand(5) + 0.5
    inc = torch.zeros(8, 5)
    inc[hei[0], hei[1]] = 1.0  # H
    d_v = inc @ w
    d_v_inv = torch.where(d_v > 0, 1 / d_v, torch.zeros_like(d_v))
    for weight, wd in ((None, torch.ones(5)), (w, w)):
        dv = inc @ wd
        dv_inv = torch.where(dv > 0, 1 / dv, torch.zeros_like(dv))
        op = dv_inv[:, None] * inc * wd[None, :] / inc.sum(0)[None, :] @ inc.T  # D_v^-1 H W D_e^-1 H^T
        for impl in ("sparse", "scatter"):
            torch.manual_seed(0)
            conv = HypergraphConv(6, 3, impl=impl)
            _close(conv(x, hei, weight), op @ x @ conv.weight.T + conv.bias)
            if impl == "sparse":
                _close(conv(x.to_sparse_csr(), hei, weight), op @ x @ conv.weight.T + conv.bias)
    assert d_v_inv[7] == 0  # node 7 is in no hyperedge: its output is the bias


def test_hypergraph_conv_matches_pyg(pyg_nn):
    x, hei = _incidence()
    ours, theirs = HypergraphConv(6, 3), pyg_nn.HypergraphConv(6, 3)
    with torch.no_grad():
        theirs.lin.weight.copy_(ours.weight)
        ours.bias.normal_()
        theirs.bias.copy_(ours.bias)
    _close(ours(x, hei), theirs(x, hei))


def test_neighborhood_hyperedges():
    ei = torch.tensor([[0, 1, 1, 2, 2], [1, 0, 2, 1, 2]])  # path 0 - 1 - 2 plus a self loop at 2
    ei = torch.cat([ei, ei[:, :1]], dim=1)  # a duplicate edge
    hei = neighborhood_hyperedges(ei, 4)
    members = {e: sorted(hei[0, hei[1] == e].tolist()) for e in range(4)}
    assert members == {0: [0, 1], 1: [0, 1, 2], 2: [1, 2], 3: [3]}


def test_hgnn_modes_equivariance_and_learning():
    model = _node_model("hgnn").eval()
    x, ei = random_graph(15, 16, seed=3)
    perm, xp, eip = _permuted(x, ei)
    given = archlab.create("hgnn", in_channels=16, out_channels=4, hyperedges="given").eval()
    given.load_state_dict(model.state_dict())
    with torch.no_grad():
        _close(model(xp, eip), model(x, ei)[perm])
        _close(given(x, neighborhood_hyperedges(ei, 15)), model(x, ei))
    assert _node_accuracy(_node_model("hgnn")) > 0.6


# --------------------------------------------------------------------------------------------------- R-GCN


def test_rgcn_single_relation_is_the_dense_formula():
    x, ei = _directed_graph()
    conv = RGCNConv(6, 4, num_relations=1)
    with torch.no_grad():
        conv.bias.normal_()
    a = to_dense_adj(ei, 12)
    c = a.sum(1, keepdim=True)
    mean = torch.where(c > 0, a / c.clamp(min=1), torch.zeros_like(a))  # (1 / c_i) sum_{j in N(i)}
    expected = x @ conv.root + mean @ x @ conv.weight[0] + conv.bias
    for impl in ("sparse", "scatter"):
        conv.impl = impl
        _close(conv(x, ei), expected)
        _close(conv(x, ei, torch.zeros(ei.shape[1], dtype=torch.long)), expected)


def test_rgcn_relations_bases_and_paths():
    x, ei = _directed_graph()
    etype = torch.randint(0, 3, (ei.shape[1],), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    bases = RGCNConv(6, 4, num_relations=3, num_bases=2)
    full = RGCNConv(6, 4, num_relations=3)
    with torch.no_grad():
        full.weight.copy_(torch.einsum("rb,bio->rio", bases.comp, bases.basis))  # W_r = sum_b a_rb V_b
        full.root.copy_(bases.root)
    expected = x @ full.root + full.bias
    for r in range(3):
        a = to_dense_adj(ei[:, etype == r], 12)
        expected = expected + a / a.sum(1, keepdim=True).clamp(min=1) @ x @ full.weight[r]
    for impl in ("sparse", "scatter"):
        bases.impl = full.impl = impl
        _close(full(x, ei, etype), expected)
        _close(bases(x, ei, etype), expected)
    # the cached CSR matrix follows a new edge_type for the same edge_index
    full.impl = "sparse"
    other = (etype + 1) % 3
    sparse_out = full(x, ei, other)
    full.impl = "scatter"
    _close(sparse_out, full(x, ei, other))


def test_rgcn_matches_pyg(pyg_nn):
    x, ei = _directed_graph()
    etype = torch.randint(0, 3, (ei.shape[1],), generator=torch.Generator().manual_seed(0))
    ours, theirs = RGCNConv(6, 4, 3), pyg_nn.RGCNConv(6, 4, 3)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        theirs.root.copy_(ours.root)
        ours.bias.normal_()
        theirs.bias.copy_(ours.bias)
    _close(ours(x, ei, etype), theirs(x, ei, etype))


def test_rgcn_equivariance_and_learning():
    model = _node_model("rgcn", num_relations=2, num_bases=1).eval()
    x, ei = random_graph(15, 16, seed=3)
    etype = torch.randint(0, 2, (ei.shape[1],))
    perm, xp, eip = _permuted(x, ei)
    with torch.no_grad():
        _close(model(xp, eip, etype), model(x, ei, etype)[perm])
    assert _node_accuracy(_node_model("rgcn", num_relations=1, dropout=0.5)) > 0.6


# ------------------------------------------------------------------------------ structure learning (SLGCN)


def test_graph_learner_keeps_the_top_k_similarities():
    torch.manual_seed(0)
    x = torch.randn(20, 6)
    learner = GraphLearner(6, sim_channels=4, heads=3, k=4, chunk=7)  # chunks of 7 rows: 3 chunks
    ei, w = learner.topk_graph(x)
    assert torch.equal(torch.bincount(ei[1], minlength=20), torch.full((20,), 4))  # exactly k incoming edges
    assert not (ei[0] == ei[1]).any()
    z = torch.nn.functional.normalize((x @ learner.weight.T).view(20, 3, 4), dim=-1)
    sim = torch.einsum("ihd,jhd->ij", z, z) / 3  # (1/m) sum_p cos_p
    sim.fill_diagonal_(float("-inf"))
    top = sim.topk(4, dim=1).indices
    assert all(set(ei[0, ei[1] == i].tolist()) == set(top[i].tolist()) for i in range(20))
    _close(w, sim[ei[1], ei[0]].relu())
    sym_ei, sym_w = learner(x)
    dense = to_dense_adj(sym_ei, 20, sym_w)
    _close(dense, dense.T)
    assert int((dense > 0).sum(0).max()) <= 8  # at most k own picks + k picks by others


def test_slgcn_gradients_reach_the_graph_learner_and_paths_match():
    torch.manual_seed(0)
    x, ei = random_graph(20, 16, seed=2)
    model = archlab.create("slgcn", in_channels=16, out_channels=3, k=3, dropout=0.0)
    generic = archlab.create("slgcn", in_channels=16, out_channels=3, k=3, dropout=0.0, impl="scatter")
    generic.load_state_dict(model.state_dict())
    out = model(x, ei)
    _close(out, generic(x, ei))
    out.square().sum().backward()
    assert model.learner.weight.grad is not None and model.learner.weight.grad.abs().sum() > 0
    generic(x, ei).square().sum().backward()
    _close(model.learner.weight.grad, generic.learner.weight.grad, 1e-4)
    _close(model(x.to_sparse_csr(), ei), out)


def test_slgcn_with_lambda_one_is_gcn():
    torch.manual_seed(0)
    x, ei = random_graph(20, 16, seed=2)
    model = archlab.create("slgcn", in_channels=16, out_channels=3, given_weight=1.0).eval()
    gcn = archlab.create("gcn", in_channels=16, out_channels=3).eval()
    with torch.no_grad():
        for ours, theirs in zip((model.conv1, model.conv2), gcn.convs, strict=True):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
        _close(model(x, ei), gcn(x, ei))


def test_slgcn_equivariance_and_learning():
    model = _node_model("slgcn", k=4).eval()
    x, ei = random_graph(15, 16, seed=3)
    perm, xp, eip = _permuted(x, ei)
    with torch.no_grad():
        _close(model(xp, eip), model(x, ei)[perm])
        learned = model.learned_graph(x)[0]
        assert learned.shape[0] == 2 and learned.shape[1] >= 15 * 4
    assert _node_accuracy(_node_model("slgcn", k=5)) > 0.6
