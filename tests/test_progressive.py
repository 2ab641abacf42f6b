"""Progressive search (PNAS): cells up to isomorphism, the ridge-ensemble surrogate, the level
schedule and budget, determinism, and NAS-Bench-Graph's growing cells (when the table is installed)."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

from archlab.errors import ArchlabError
from archlab.search.progressive import (
    ProgressiveConfig,
    ProgressiveSearch,
    Surrogate,
    canonical,
    expand,
    features,
    relabel,
)

BLOCKS, OPS = 3, 4
# the synthetic score: a value per (input's op or the input, op) pair plus one per output op, summed over
# the blocks -- linear in features the 1- and 2-block cells already show, so a surrogate fitted on them
# can rank 3-block cells; the best 3-block cell is found by enumeration (it leads the next by 0.68)
_rng = np.random.default_rng(2)
PAIR, LEAF = _rng.uniform(0, 1, (OPS + 1, OPS)), _rng.uniform(0, 0.5, OPS)


def score(cell, noise=0.0, rng=None):
    read = {src for src, _ in cell}
    value = sum(PAIR[cell[src - 1][1] + 1 if src else 0, op] + LEAF[op] * (i + 1 not in read)
                for i, (src, op) in enumerate(cell))
    return value + (noise * rng.standard_normal() if noise else 0.0)


class Toy:
    """Every canonical cell of up to 3 blocks and 4 ops; its genotype is the flattened cell."""

    blocks, ops = BLOCKS, OPS

    def genotype(self, cell):
        return tuple(x for block in cell for x in block)


def all_cells(blocks=BLOCKS, ops=OPS):
    levels, cells = [()], []
    for _ in range(blocks):
        levels = sorted({e for c in levels for e in expand(c, ops)})
        cells.append(levels)
    return cells


def run(search, n, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    asked = []
    for _ in range(n):
        g = search.ask()
        asked.append(g)
        search.tell(g, score(search.asked[g], noise, rng))
    return asked


def test_canonical_identifies_isomorphic_cells():
    a = ((0, 1), (0, 2), (1, 3))  # block 3 reads block 1
    b = ((0, 2), (0, 1), (2, 3))  # the same cell, blocks 1 and 2 swapped
    assert canonical(a) == canonical(b)
    assert canonical(a) != canonical(((0, 1), (0, 2), (2, 3)))  # reads the other block: another cell
    assert relabel(((0, 1), (1, 2)), (2, 1)) is None  # a block may not come before its input
    # counts of canonical cells with 1, 2 blocks: ops; C(ops + 1, 2) parallel pairs + ops^2 chains
    levels = all_cells()
    assert len(levels[0]) == OPS and len(levels[1]) == OPS * (OPS + 1) // 2 + OPS * OPS
    for cell in levels[2]:  # every relabelling of a canonical cell is canonicalised back to it
        for order in itertools.permutations(range(1, 4)):
            other = relabel(cell, order)
            assert other is None or canonical(other) == cell


@pytest.mark.parametrize("cfg", [ProgressiveConfig(predictors=1, subsample=1.0, ridge=1e-3),
                                 ProgressiveConfig(surrogate="mlp", predictors=3, subsample=1.0, mlp_steps=500)],
                         ids=["ridge", "mlp"])
def test_surrogate_ranks_larger_cells_from_smaller_ones(cfg):
    """Fitted on the 1- and 2-block cells only, it ranks the 3-block ones: the best is known."""
    small = all_cells()[0] + all_cells()[1]
    large = all_cells()[2]
    surrogate = Surrogate(BLOCKS, OPS, cfg)
    surrogate.fit(small, [score(c) for c in small], np.random.default_rng(0))
    predicted = surrogate.predict(large)
    truth = np.array([score(c) for c in large])
    best = large[int(np.argmax(truth))]
    assert np.sort(truth)[-1] - np.sort(truth)[-2] > 0.5  # a clear winner
    assert large[int(np.argmax(predicted))] == best
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert np.corrcoef(rank(predicted), rank(truth))[0, 1] > 0.9  # Spearman: ridge 0.958, mlp 0.968 here
    assert features(best, BLOCKS, OPS).shape == (OPS * BLOCKS + OPS + (OPS + 1) * OPS + 1,)


def test_search_follows_the_levels_and_finds_the_best_cell():
    k = 5
    search = ProgressiveSearch(Toy(), 0, ProgressiveConfig(beam=k))
    asked = run(search, OPS + 2 * k)  # exactly enough queries to reach 3 blocks
    sizes = [len(search.asked[g]) for g in asked]
    assert sizes == [1] * OPS + [2] * k + [3] * k
    assert len(set(asked)) == len(asked)
    # the best 3-block cell of the whole space is among the K the surrogate picked
    assert max(map(score, search.cells[-k:])) == max(map(score, all_cells()[2]))
    # past the last level: the other expansions of the K 2-block cells, never one queried before
    grown = {e for c in search.cells if len(c) == 2 for e in expand(c, OPS)}
    more = run(search, len(grown) - k)
    assert len(set(asked + more)) == len(asked) + len(more)
    assert all(len(search.asked[g]) == 3 for g in more)
    with pytest.raises(ArchlabError, match="no cell of 3 blocks left"):
        search.ask()


@pytest.mark.parametrize("surrogate", ["ridge", "mlp", "none"])
def test_deterministic_under_its_seed(surrogate):
    cfg = ProgressiveConfig(beam=4, surrogate=surrogate, mlp_steps=50)
    runs = [run(ProgressiveSearch(Toy(), seed, cfg), 30, noise=0.3) for seed in (3, 3, 4)]
    # the seed draws the predictors' subsamples and MLP initialisations (the ablation: each level's pick)
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_errors_are_one_line():
    with pytest.raises(ArchlabError, match="beam >= 1"):
        ProgressiveConfig(beam=0)
    with pytest.raises(ArchlabError, match="subsample"):
        ProgressiveConfig(subsample=0.0)
    with pytest.raises(ArchlabError, match="surrogate must be"):
        ProgressiveConfig(surrogate="lstm")
    with pytest.raises(ArchlabError, match="mlp_steps >= 1"):
        ProgressiveConfig(mlp_steps=0)
    search = ProgressiveSearch(Toy(), 0)
    with pytest.raises(ArchlabError, match="did not ask"):
        search.tell((9, 9), 1.0)


nas = pytest.mark.skipif(importlib.util.find_spec("nas_bench_graph") is None,
                         reason="nas-bench-graph (test extra) not installed")


@pytest.fixture(scope="module")
def cora():
    from archlab.search.nasbench import NASBenchGraph

    return NASBenchGraph.load("cora")


@nas
def test_nasbench_cells_and_their_proxies(cora):
    from archlab.search.nasbench import BLOCK_OPS, LINKS, OPS, contract, key_genotype

    space = cora.cells
    levels = all_cells(3, space.ops)
    for b in range(3):  # every canonical cell of 1-3 blocks has a proxy in the table
        assert all(space.genotype(c) is not None for c in levels[b])
    skip, gcn, gat = OPS.index("skip"), BLOCK_OPS.index(OPS.index("gcn")), BLOCK_OPS.index(OPS.index("gat"))
    # a proxy computes its cell: gcn on the input, copied by three skip nodes
    g = space.genotype(((0, gcn),))
    assert OPS[g[1:][0]] == "gcn" and sum(o == skip for o in g[1:]) == 3
    assert contract(LINKS[g[0]], g[1:]) == ((0, gcn),)
    # skip-free architectures are their own proxies
    best = key_genotype(int(cora.keys[int(np.argmax(cora.valid_acc))]))
    assert skip not in best[1:] and space.genotype(contract(LINKS[best[0]], best[1:])) == best
    # node 1 gcn, node 2 gat reading it, node 3 a skip leaf copying node 1, which node 2 also reads:
    # the output has node 1 next to node 2, which no 2-block cell has
    assert contract((0, 1, 1, 2), (OPS.index("gcn"), OPS.index("gat"), skip, OPS.index("fc"))) is None
    assert contract((0, 1, 1, 3), (OPS.index("gcn"), OPS.index("gat"), skip, skip)) is None
    assert contract((0, 1, 2, 3), (OPS.index("gcn"), OPS.index("gat"), skip, skip)) == ((0, gcn), (1, gat))


@nas
def test_nasbench_progressive_budget_and_determinism(cora):
    from archlab.search.nasbench import STRATEGIES, run_search

    runs = [run_search(cora, STRATEGIES["progressive"](cora, seed), 100) for seed in (5, 5, 6)]
    assert np.array_equal(runs[0]["position"], runs[1]["position"])
    assert not np.array_equal(runs[0]["position"], runs[2]["position"])
    for r in runs:
        assert len(r["position"]) == 100 and len(np.unique(r["position"])) == 100
    search = STRATEGIES["progressive"](cora, 0)
    sizes = []
    for _ in range(8 + 30 * 3):
        g = search.ask()
        sizes.append(len(search.asked[g]))
        search.tell(g, cora.query(g).valid_acc)
    assert sizes == [1] * 8 + [2] * 30 + [3] * 30 + [4] * 30
