"""QAOA for MaxCut: graphs, the cut Hamiltonian, the known p = 1 optimum of the 4-ring, and the qaoa loop."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from archlab.errors import ArchlabError
from archlab.quantum.qaoa import max_cut, maxcut_hamiltonian, qaoa_circuit, random_regular_graph, ring_graph
from archlab.recipe import from_dict
from archlab.runner import train

pytestmark = pytest.mark.usefixtures("single_thread")


def test_random_regular_graphs_are_simple_and_regular():
    for seed in range(5):
        edges = random_regular_graph(10, 3, seed)
        degrees = Counter(v for e in edges for v in e)
        assert len(edges) == 15 and set(degrees.values()) == {3} and all(a < b for a, b in edges)
    assert random_regular_graph(8, 3, 1) == random_regular_graph(8, 3, 1)
    with pytest.raises(ArchlabError, match="regular"):
        random_regular_graph(7, 3, 0)


def test_cut_hamiltonian_diagonal_counts_cut_edges():
    edges = [(0, 1), (1, 2), (0, 2), (2, 3)]
    diag = maxcut_hamiltonian(edges, 4).matrix().diagonal().real
    for z in range(16):
        bits = [(z >> (3 - i)) & 1 for i in range(4)]
        assert diag[z].item() == pytest.approx(sum(bits[i] != bits[j] for i, j in edges))
    assert max_cut(edges, 4) == 3 and max_cut(ring_graph(4), 4) == 4 and max_cut(ring_graph(5), 5) == 4


def test_ring4_p1_optimum_is_three():
    """Farhi et al. 2014, Sec. 3: p = 1 on the ring cuts 3/4 of the edges at best (grid over gamma, beta)."""
    edges = ring_graph(4)
    grid = torch.linspace(0, torch.pi, 121, dtype=torch.float64)
    g, b = torch.meshgrid(grid, grid, indexing="ij")
    cuts = qaoa_circuit(4, edges, g.reshape(1, -1), b.reshape(1, -1)).expval(maxcut_hamiltonian(edges, 4))
    assert cuts.max().item() == pytest.approx(3.0, abs=2e-3) and cuts.max().item() <= 3.0 + 1e-12
    # gamma = beta = 0 is the uniform superposition: half of the edges on average
    assert cuts[0].item() == pytest.approx(2.0)


def test_qaoa_loop_reaches_the_p2_maximum_on_the_ring(tmp_path):
    raw = {"name": "qaoa_tiny", "seed": 0, "model": {"name": "qaoa_maxcut", "nodes": 4, "p": 2},
           "optim": {"name": "adam", "lr": 0.1}, "train": {"loop": "qaoa", "steps": 80, "eval_every": 40}}
    summary = train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)
    assert summary["metrics"]["expected_cut"] > 3.9 and summary["metrics"]["max_cut"] == 4
    assert (tmp_path / "run" / "plots" / "cut_distribution.png").is_file()
    assert (tmp_path / "run" / "angles.csv").read_text().count("\n") == 3


def test_trained_p1_ratio_beats_the_farhi_bound_on_a_small_3_regular_graph():
    from archlab.quantum.qaoa_depth import trained_ratio

    assert trained_ratio(6, graph_seed=0, p=1, steps=40) >= 0.6924
