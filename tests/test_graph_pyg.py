"""archlab's graph layers against PyTorch Geometric (a test-only peer): the same weights give the same
outputs. PyG's parameter layout, read from its modules:

* GCNConv: ``lin.weight`` (out, in), ``bias``
* GATConv: ``lin.weight`` (H·C, in), ``att_src`` / ``att_dst`` (1, H, C), ``bias``
* GATv2Conv: ``lin_l`` (source side, also the message) / ``lin_r`` (target side), each with a bias
  that archlab does not have (zeroed here), ``att`` (1, H, C), ``bias``
* SAGEConv: ``lin_l`` (neighbour aggregate, with the bias), ``lin_r`` (root, no bias); with
  ``project=True`` a ``lin`` + ReLU on the sources before the aggregation (= the pooling aggregator)
* GINConv: ``nn`` (the MLP), ``eps`` (1,)
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from archlab.models.graph.base import random_graph
from archlab.models.graph.gat import GATConv
from archlab.models.graph.gcn import GCNConv
from archlab.models.graph.gin import GINConv
from archlab.models.graph.sage import SAGEConv

pyg = pytest.importorskip("torch_geometric")
from torch_geometric import nn as pyg_nn  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def graph():
    x, ei = random_graph(30, 8, num_edges=90, seed=4, undirected=False)  # directed: catches a transposed edge
    return x, ei[:, ei[1] != 29]  # node 29 has no incoming edge


def _check(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, ei: torch.Tensor) -> None:
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x, ei), theirs(x, ei), atol=1e-5, rtol=1e-5)


def test_gcn_matches_pyg(graph):
    x, ei = graph
    for impl in ("sparse", "scatter"):
        ours = GCNConv(8, 5, impl=impl)
        theirs = pyg_nn.GCNConv(8, 5)
        with torch.no_grad():
            theirs.lin.weight.copy_(ours.weight)
            theirs.bias.copy_(torch.randn(5))
            ours.bias.copy_(theirs.bias)
        _check(ours, theirs, x, ei)


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("impl", ["fast", "generic"])
def test_gat_matches_pyg(graph, concat, impl):
    x, ei = graph
    ours = GATConv(8, 4, heads=3, concat=concat, impl=impl)
    theirs = pyg_nn.GATConv(8, 4, heads=3, concat=concat)
    with torch.no_grad():
        ours.bias.normal_()
        theirs.lin.weight.copy_(ours.weight)
        theirs.att_src.copy_(ours.att_src.unsqueeze(0))
        theirs.att_dst.copy_(ours.att_dst.unsqueeze(0))
        theirs.bias.copy_(ours.bias)
    _check(ours, theirs, x, ei)


@pytest.mark.parametrize("impl", ["fast", "generic"])
def test_gatv2_matches_pyg(graph, impl):
    x, ei = graph
    ours = GATConv(8, 4, heads=3, v2=True, impl=impl)
    theirs = pyg_nn.GATv2Conv(8, 4, heads=3)
    with torch.no_grad():
        ours.bias.normal_()
        theirs.lin_l.weight.copy_(ours.weight_src)
        theirs.lin_r.weight.copy_(ours.weight_dst)
        theirs.lin_l.bias.zero_()
        theirs.lin_r.bias.zero_()
        theirs.att.copy_(ours.att.unsqueeze(0))
        theirs.bias.copy_(ours.bias)
    _check(ours, theirs, x, ei)


@pytest.mark.parametrize("out_channels", [5, 12])  # fewer / more outputs than inputs: both mean orders
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("impl", ["fast", "generic"])
def test_sage_mean_matches_pyg(graph, out_channels, normalize, impl):
    x, ei = graph
    ours = SAGEConv(8, out_channels, "mean", normalize=normalize, impl=impl)
    theirs = pyg_nn.SAGEConv(8, out_channels, aggr="mean", normalize=normalize)
    with torch.no_grad():
        ours.bias.normal_()
        theirs.lin_l.weight.copy_(ours.weight_neigh)
        theirs.lin_l.bias.copy_(ours.bias)
        theirs.lin_r.weight.copy_(ours.weight_self)
    _check(ours, theirs, x, ei)


@pytest.mark.parametrize("impl", ["fast", "generic"])
def test_sage_gcn_aggregator_is_pyg_mean_over_self_loops(graph, impl):
    x, ei = graph
    ours = SAGEConv(8, 5, "gcn", impl=impl)
    assert ours.weight_self is None
    theirs = pyg_nn.SAGEConv(8, 5, aggr="mean", root_weight=False)
    with torch.no_grad():
        ours.bias.normal_()
        theirs.lin_l.weight.copy_(ours.weight_neigh)
        theirs.lin_l.bias.copy_(ours.bias)
    ours.eval(), theirs.eval()
    loops = torch.arange(30).repeat(2, 1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, ei), theirs(x, torch.cat([ei, loops], dim=1)), atol=1e-5, rtol=1e-5)


def test_sage_pooling_matches_pyg_project_max(graph):
    x, ei = graph
    ours = SAGEConv(8, 5, "max")
    theirs = pyg_nn.SAGEConv(8, 5, aggr="max", project=True)
    with torch.no_grad():
        ours.bias.normal_()
        ours.bias_pool.normal_()
        theirs.lin.weight.copy_(ours.weight_pool)
        theirs.lin.bias.copy_(ours.bias_pool)
        theirs.lin_l.weight.copy_(ours.weight_neigh)
        theirs.lin_l.bias.copy_(ours.bias)
        theirs.lin_r.weight.copy_(ours.weight_self)
    _check(ours, theirs, x, ei)


@pytest.mark.parametrize("impl", ["fast", "generic"])
def test_gin_matches_pyg(graph, impl):
    x, ei = graph
    mlp = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 6))
    ours = GINConv(mlp, eps=0.25, impl=impl)
    theirs = pyg_nn.GINConv(copy.deepcopy(mlp), train_eps=True)  # its constructor re-initializes the MLP
    theirs.nn.load_state_dict(mlp.state_dict())
    with torch.no_grad():
        theirs.eps.copy_(ours.eps)
    _check(ours, theirs, x, ei)
