"""The NAS-Bench-Graph macro architecture on archlab's layers: every supported op builds and runs, the
wiring of a hand-checked genotype, the refusal of ops without an archlab layer, and the registry's
contracts (family graph, export blocker declared)."""

from __future__ import annotations

import pytest
import torch

import archlab
from archlab.errors import ArchlabError
from archlab.models.graph.base import random_graph
from archlab.models.search.nasbench_graph import LAYERS, MISSING, NASBenchGraphNet, leaves


def _net(link, ops, **kw):
    torch.manual_seed(0)
    return archlab.create("nasbench_graph", in_channels=12, out_channels=5, hidden_channels=8, link=link, ops=ops,
                          **kw)


@pytest.mark.parametrize("op", LAYERS)
def test_each_supported_op_builds_and_trains(op):
    model = _net([0, 1], ["fc", op]) if op == "skip" else _net([0], [op])
    x, ei = random_graph(10, 12)
    out = model(x, ei)
    assert out.shape == (10, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.ndim > 1)


@pytest.mark.parametrize("op", sorted(MISSING))
def test_ops_without_archlab_layer_are_refused_in_one_line(op):
    with pytest.raises(ArchlabError, match=f"{op!r} has no archlab layer") as err:
        _net([0, 0], ["gcn", op])
    assert "\n" not in str(err.value)


def test_registered_in_graph_family_with_export_blocker():
    entry = archlab.registry.get("nasbench_graph")
    assert entry.family == "graph" and entry.cls is NASBenchGraphNet
    assert NASBenchGraphNet.export_blocker  # inherited from GraphModel: data-dependent adjacency sizes


def test_wiring_of_a_hand_checked_genotype():
    # link [0, 0, 1, 1]: nodes 1, 2 read the input; nodes 3, 4 read node 1 -> leaves 2, 3, 4.
    assert leaves([0, 0, 1, 1]) == [2, 3, 4]
    assert leaves([0, 1, 2, 3]) == [4]
    assert leaves([0, 0, 0, 0]) == [1, 2, 3, 4]
    m = _net([0, 0, 1, 1], ["skip", "gcn", "fc", "sage"])
    # node 1 = skip of the raw input: still raw (12 wide); node 2's op reads the raw input (12 -> 8)
    assert m.raw == [True, True, False, False, False]
    assert m.ops[1].weight.shape == (8, 12)
    # nodes 3 and 4 read node 1 (raw through the skip): their ops take 12 inputs, no BatchNorm before
    assert m.ops[2].lin.weight.shape == (8, 12) and isinstance(m.norms[2], torch.nn.Identity)
    # classifier over the concatenated leaves 2, 3, 4 (3 * 8), then one post layer to the 5 classes
    assert m.classifier.weight.shape == (8, 24) and m.post[0].weight.shape == (5, 8)


def test_forward_follows_the_encoding():
    # chain [0, 1]: gcn then fc; check the output equals the hand-composed layers (eval: no dropout)
    m = _net([0, 1], ["gcn", "fc"]).eval()
    x, ei = random_graph(9, 12)
    h1 = m.ops[0](x, ei)
    h2 = m.ops[1](torch.relu(m.norms[1](h1)), ei)
    expect = m.post[0](m.classifier(torch.relu(h2)))
    torch.testing.assert_close(m(x, ei), expect)


def test_parameter_count_matches_the_cora_table():
    # the table's best-validation Cora architecture: 0.634631 M parameters; the benchmark also creates a
    # BatchNorm (2 x 256) for node 1, which reads the raw features and never uses it
    m = archlab.create("nasbench_graph", in_channels=1433, out_channels=7, link=[0, 1, 2, 3],
                       ops=["fc", "gat", "fc", "gin"])
    assert sum(p.numel() for p in m.parameters()) + 2 * 256 == 634631


def test_bad_genotypes_are_refused():
    with pytest.raises((ValueError, ArchlabError)):
        _net([0, 2], ["gcn", "gcn"])  # node 2 cannot read node 2
    with pytest.raises((ValueError, ArchlabError)):
        _net([0], ["gcn", "gat"])
    with pytest.raises((ValueError, ArchlabError)):
        _net([0], ["conv"])
