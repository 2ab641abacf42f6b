"""GAT, GraphSAGE and GIN layers and models, and the neighbour sampler: shapes, permutation
equivariance, fast == generic paths, sparse == dense input, learning on an SBM, sampler properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archlab
from archlab.data.graphs import load_graph_dataset
from archlab.graph import coalesce
from archlab.graph.sampling import NeighborSampler
from archlab.models.graph.base import random_graph
from archlab.models.graph.gat import GATConv
from archlab.models.graph.gin import GINConv
from archlab.models.graph.sage import SAGEConv

pytestmark = pytest.mark.usefixtures("single_thread")


def _gin_mlp(a: int, b: int) -> nn.Module:
    return nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b))


def _conv(kind: str, impl: str = "fast", in_channels: int = 6) -> nn.Module:
    torch.manual_seed(0)
    if kind == "gat":
        return GATConv(in_channels, 4, heads=3, impl=impl)
    if kind == "gat_mean":
        return GATConv(in_channels, 4, heads=3, concat=False, impl=impl)
    if kind == "gatv2":
        return GATConv(in_channels, 4, heads=3, v2=True, impl=impl)
    if kind == "gat_noloops":
        return GATConv(in_channels, 4, heads=2, add_self_loops=False, impl=impl)
    if kind == "sage_mean":
        return SAGEConv(in_channels, 5, "mean", impl=impl)
    if kind == "sage_mean_wide":  # out > in: aggregates before projecting
        return SAGEConv(in_channels, 9, "mean", normalize=True, impl=impl)
    if kind == "sage_noroot":
        return SAGEConv(in_channels, 5, "mean", root_weight=False, bias=False, impl=impl)
    if kind == "sage_gcn":
        return SAGEConv(in_channels, 5, "gcn", impl=impl)
    if kind == "sage_max":
        return SAGEConv(in_channels, 5, "max", impl=impl)
    if kind == "gin":
        return GINConv(_gin_mlp(in_channels, 5), eps=0.3, impl=impl)
    raise ValueError(kind)


CONVS = ["gat", "gat_mean", "gatv2", "gat_noloops", "sage_mean", "sage_mean_wide", "sage_noroot", "sage_gcn",
         "sage_max", "gin"]


def _graph(n: int = 12, seed: int = 0, directed: bool = False):
    x, ei = random_graph(n, 6, num_edges=3 * n, seed=seed, undirected=not directed)
    return x, ei


@pytest.mark.parametrize("kind,width", [("gat", 12), ("gat_mean", 4), ("gatv2", 12), ("sage_mean", 5),
                                        ("sage_max", 5), ("gin", 5)])
def test_conv_shapes(kind, width):
    x, ei = _graph()
    assert _conv(kind)(x, ei).shape == (12, width)


@pytest.mark.parametrize("kind", CONVS)
def test_convs_are_permutation_equivariant(kind):
    x, ei = _graph(directed=True)  # directed: a transposed edge would show up
    conv = _conv(kind).eval()
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(12, generator=gen)  # new node k is old node perm[k]
    inv = torch.argsort(perm)
    ei_p = inv[ei][:, torch.randperm(ei.shape[1], generator=gen)]
    with torch.no_grad():
        torch.testing.assert_close(conv(x[perm], ei_p), conv(x, ei)[perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", CONVS)
def test_fast_and_generic_paths_agree(kind):
    x, ei = _graph(directed=True)
    # existing self loops are replaced by one; a repeated edge counts twice
    ei = torch.cat([ei, torch.tensor([[3, 5], [3, 5]]), ei[:, :1]], dim=1)
    ei = ei[:, ei[1] != 11]  # node 11 receives nothing
    fast, generic = _conv(kind, "fast").eval(), _conv(kind, "generic").eval()
    generic.load_state_dict(fast.state_dict())
    xf, xg = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_f, out_g = fast(xf, ei), generic(xg, ei)
    torch.testing.assert_close(out_f, out_g, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(out_f)
    (out_f * w).sum().backward()
    (out_g * w).sum().backward()
    torch.testing.assert_close(xf.grad, xg.grad, atol=1e-5, rtol=1e-5)
    for (name, pf), pg in zip(fast.named_parameters(), generic.parameters(), strict=True):
        torch.testing.assert_close(pf.grad, pg.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_fast_gat_cache_follows_the_graph():
    conv = _conv("gat").eval()
    x, ei = _graph()
    _, other = _graph(seed=5)
    with torch.no_grad():
        conv(x, ei)
        reference = GATConv(6, 4, heads=3, impl="generic").eval()
        reference.load_state_dict(conv.state_dict())
        torch.testing.assert_close(conv(x, other), reference(x, other), atol=1e-5, rtol=1e-5)


def test_attention_dropout_keeps_expected_value_and_is_off_in_eval():
    x, ei = _graph()
    conv = GATConv(6, 4, heads=2, attn_dropout=0.5)
    with torch.no_grad():
        clean = conv.eval()(x, ei)
        assert torch.equal(clean, conv(x, ei))
        conv.train()
        torch.manual_seed(0)
        mean = torch.stack([conv(x, ei) for _ in range(400)]).mean(0)
    assert not torch.allclose(conv(x, ei), clean)
    torch.testing.assert_close(mean, clean, atol=0.15, rtol=0.0)


def _csr(x):
    x = x.clone()
    x[x.abs() < 0.8] = 0.0  # bag-of-words-like sparsity
    return x, x.to_sparse_csr()


@pytest.mark.parametrize("kind", ["gat", "gatv2", "sage_mean", "sage_mean_wide", "sage_noroot", "sage_gcn",
                                  "sage_max"])
def test_sparse_csr_input_matches_dense(kind):
    x, ei = _graph()
    dense, sparse = _csr(x)
    conv = _conv(kind).eval()
    torch.testing.assert_close(conv(sparse, ei), conv(dense, ei), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gat", "sage"])
def test_models_take_sparse_input(name):
    torch.manual_seed(0)
    model = archlab.create(name, in_channels=6, out_channels=3).eval()
    assert type(model).accepts_sparse
    x, ei = _graph()
    dense, sparse = _csr(x)
    torch.testing.assert_close(model(sparse, ei), model(dense, ei), atol=1e-5, rtol=1e-5)
    assert model(dense, ei).shape == (12, 3)


def test_gat_model_layout():
    model = archlab.create("gat", in_channels=6, out_channels=3, num_layers=3, heads=4, out_heads=2)
    assert [(c.heads, c.concat, c.in_channels) for c in model.convs] == [(4, True, 6), (4, True, 32), (2, False, 32)]
    v2 = archlab.create("gat", v2=True, in_channels=6)
    assert {n for n, _ in v2.convs[0].named_parameters()} == {"weight_src", "weight_dst", "att", "bias"}


def test_model_impls_agree():
    x, ei = _graph()
    for name, extra in [("gat", {}), ("gat", {"v2": True}), ("sage", {"aggr": "max"}), ("sage", {"aggr": "gcn"}),
                        ("sage", {"normalize": True})]:
        torch.manual_seed(0)
        fast = archlab.create(name, in_channels=6, out_channels=3, impl="fast", **extra).eval()
        generic = archlab.create(name, in_channels=6, out_channels=3, impl="generic", **extra).eval()
        generic.load_state_dict(fast.state_dict())
        torch.testing.assert_close(fast(x, ei), generic(x, ei), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ GIN


def _two_graphs():
    model = archlab.create("gin", in_channels=6, out_channels=3, hidden_channels=16)
    return model, type(model).example_input(model.config, batch_size=3)


def test_gin_graph_outputs_and_invariance():
    torch.manual_seed(0)
    model, (x, ei, batch) = _two_graphs()
    model.eval()
    out = model(x, ei, batch)
    assert out.shape == (3, 3)
    perm = torch.randperm(x.shape[0])
    inv = torch.argsort(perm)
    torch.testing.assert_close(model(x[perm], inv[ei], batch[perm]), out, atol=1e-5, rtol=1e-5)
    # batch=None is one graph; each graph of a batch is scored as if alone
    first = batch == 0
    single = model(x[first], ei[:, first[ei[0]]])
    torch.testing.assert_close(single, out[:1], atol=1e-5, rtol=1e-5)


def test_gin_layout_follows_the_paper():
    model = archlab.create("gin", in_channels=6, out_channels=3)
    assert len(model.convs) == 4 and len(model.scorers) == 5
    assert model.scorers[0].in_features == 6 and model.scorers[1].in_features == 64
    assert isinstance(model.convs[0].eps, nn.Parameter)
    fixed = archlab.create("gin", in_channels=6, train_eps=False)
    assert "convs.0.eps" not in dict(fixed.named_parameters()) and "convs.0.eps" in fixed.state_dict()


def test_gin_impls_agree():
    torch.manual_seed(0)
    fast = archlab.create("gin", in_channels=6, out_channels=3, impl="fast").eval()
    generic = archlab.create("gin", in_channels=6, out_channels=3, impl="generic").eval()
    generic.load_state_dict(fast.state_dict())
    x, ei, batch = type(fast).example_input(fast.config)
    torch.testing.assert_close(fast(x, ei, batch), generic(x, ei, batch), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("name,extra", [("gat", {"v2": False}), ("gat", {"v2": True}), ("sage", {"aggr": "mean"}),
                                        ("sage", {"aggr": "gcn"}), ("sage", {"aggr": "max"})])
def test_learns_an_sbm(name, extra):
    g = load_graph_dataset("sbm", {"num_nodes": 200, "p_in": 0.08, "p_out": 0.01, "feature_noise": 2.0,
                                   "num_val": 40}).graph
    torch.manual_seed(0)
    model = archlab.create(name, in_channels=g.num_features, out_channels=4, **extra)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(model(g.x, g.edge_index)[g.train_mask], g.y[g.train_mask]).backward()
        opt.step()
    with torch.no_grad():
        pred = model.eval()(g.x, g.edge_index).argmax(-1)
    assert (pred[g.test_mask] == g.y[g.test_mask]).float().mean() > 0.6  # chance: 0.25


# ----------------------------------------------------------------------------------------- sampler


def _sampler_graph():
    # node i has in-degree i % 7 (0..6) from random sources, no duplicate edges
    gen = torch.Generator().manual_seed(0)
    n, parts = 60, []
    for i in range(60):
        src = torch.randperm(n, generator=gen)[: i % 7]
        parts.append(torch.stack([src, torch.full_like(src, i)]))
    return torch.cat(parts, dim=1), n


def test_sampler_edges_exist_and_respect_fanouts():
    ei, n = _sampler_graph()
    fanouts = [3, 2]
    sampler = NeighborSampler(ei, n, fanouts, seed=0)
    seeds = torch.tensor([10, 3, 41, 0, 27])
    sub = sampler.sample(seeds)
    assert torch.equal(sub.nodes[:5], seeds)
    assert len(torch.unique(sub.nodes)) == len(sub.nodes)
    existing = set(map(tuple, ei.t().tolist()))
    glob = sub.nodes[sub.edge_index]
    assert all(tuple(e) in existing for e in glob.t().tolist())
    assert len(set(map(tuple, glob.t().tolist()))) == glob.shape[1]  # without replacement
    in_deg = torch.bincount(sub.edge_index[1], minlength=len(sub.nodes))
    full_deg = torch.bincount(ei[1], minlength=n)[sub.nodes]
    # seeds sample at hop 0, nodes first reached at hop 1 sample with fanouts[1], the last hop's nodes not at all
    hop1 = torch.unique(sub.edge_index[0][sub.edge_index[1] < 5])
    hop1 = hop1[hop1 >= 5]
    torch.testing.assert_close(in_deg[:5], full_deg[:5].clamp(max=3))  # fewer than fanout: keep them all
    torch.testing.assert_close(in_deg[hop1], full_deg[hop1].clamp(max=2))
    later = torch.ones(len(sub.nodes), dtype=torch.bool)
    later[:5], later[hop1] = False, False
    assert int(in_deg[later].sum()) == 0


def test_sampler_is_uniform_and_deterministic():
    ei, n = _sampler_graph()
    seeds = torch.tensor([6, 13])  # 6 neighbours each, fanout 2
    a = NeighborSampler(ei, n, [2], seed=3)
    b = NeighborSampler(ei, n, [2], seed=3)
    for _ in range(3):
        sa, sb = a.sample(seeds), b.sample(seeds)
        assert torch.equal(sa.nodes, sb.nodes) and torch.equal(sa.edge_index, sb.edge_index)
    counts = torch.zeros(n)
    for _ in range(600):
        sub = a.sample(seeds[:1])
        counts.index_add_(0, sub.nodes[sub.edge_index[0]], torch.ones(sub.edge_index.shape[1]))
    picked = counts[ei[0, ei[1] == 6]]
    torch.testing.assert_close(picked, torch.full_like(picked, 200.0), atol=45, rtol=0)  # 600 * 2 / 6


def test_sampler_resumes_exactly():
    ei, n = _sampler_graph()
    seeds = torch.tensor([5, 20, 33])
    sampler = NeighborSampler(ei, n, [4, 3], seed=1)
    sampler.sample(seeds)
    state = sampler.state_dict()
    expected = [sampler.sample(seeds) for _ in range(3)]
    resumed = NeighborSampler(ei, n, [4, 3], seed=99)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.sample(seeds)
        assert torch.equal(got.nodes, want.nodes) and torch.equal(got.edge_index, want.edge_index)


def test_sampler_with_large_fanout_is_the_full_neighbourhood():
    ei, n = _sampler_graph()
    ei = coalesce(ei, n)[0]
    sub = NeighborSampler(ei, n, [100], seed=0).sample(torch.tensor([13, 20]))
    got = sub.nodes[sub.edge_index]
    want = ei[:, (ei[1] == 13) | (ei[1] == 20)]
    assert torch.equal(coalesce(got, n)[0], want)


def test_sampler_rejects_repeated_seeds_and_runs_a_model():
    ei, n = _sampler_graph()
    sampler = NeighborSampler(ei, n, [3, 3], seed=0)
    with pytest.raises(ValueError, match="distinct"):
        sampler.sample(torch.tensor([1, 2, 1]))
    sub = sampler.sample(torch.tensor([1, 2]))  # the failed call left no state behind
    assert torch.equal(sub.nodes[:2], torch.tensor([1, 2]))
    model = archlab.create("sage", in_channels=4, out_channels=2)
    assert model(torch.randn(len(sub.nodes), 4), sub.edge_index)[:2].shape == (2, 2)
