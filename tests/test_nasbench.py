"""NAS-Bench-Graph reader (restricted unpickler), the tabular search strategies and the regret driver."""

from __future__ import annotations

import functools
import json
import os
import pickle
import sys

import numpy as np
import pytest

from archlab.cli import main as cli_main
from archlab.data import safe_pickle
from archlab.errors import ArchlabError
from archlab.search.categorical import mutate, sample
from archlab.search.evolution import EvolutionConfig, RegularizedEvolution
from archlab.search.mo_evolution import ParetoEvolution
from archlab.search.nasbench import (
    LINKS,
    OPS,
    Arch,
    NASBenchGraph,
    bench_file,
    genotype_key,
    key_genotype,
    main,
    pareto_objectives,
    pareto_search,
    run_search,
)
from archlab.search.pareto import hypervolume_2d, non_dominated
from archlab.search.random_search import RandomSearch
from archlab.search.rl_controller import ControllerConfig, RLController

pytest.importorskip("importlib.util")
if __import__("importlib.util").util.find_spec("nas_bench_graph") is None:
    pytest.skip("nas-bench-graph (test extra) not installed", allow_module_level=True)


@functools.cache
def cora_table() -> NASBenchGraph:
    return NASBenchGraph.load("cora")


@pytest.fixture(scope="module")
def cora() -> NASBenchGraph:
    return cora_table()


def test_cora_table_statistics(cora):
    # issue 21: best test 83.13%, median 78.53%, the best-validation architecture's test 82.63%
    assert len(cora) == 26206
    assert round(100 * cora.oracle_test, 2) == 83.13
    assert round(100 * float(np.median(cora.test_acc)), 2) == 78.53
    best_val = int(np.argmax(cora.valid_acc))
    assert (cora.valid_acc == cora.valid_acc[best_val]).sum() == 1
    assert round(100 * cora.test_acc[best_val], 2) == 82.63
    assert np.all((cora.params > 0) & (cora.latency > 0))


def _forget_package() -> None:
    for name in [m for m in sys.modules if m == "nas_bench_graph" or m.startswith("nas_bench_graph.")]:
        del sys.modules[name]


def test_loader_is_not_imported():
    _forget_package()
    NASBenchGraph.load("citeseer")
    assert not [m for m in sys.modules if m.startswith("nas_bench_graph")]


def test_missing_tables_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARCHLAB_NASBENCH_GRAPH", str(tmp_path))
    with pytest.raises(ArchlabError, match="no table"):
        NASBenchGraph.load("cora")
    assert main(["--queries", "5", "--seeds", "2", "--out", str(tmp_path)]) == 2
    assert "no table" in capsys.readouterr().err


def test_keys_round_trip_and_decode(cora):
    for key in cora.keys:
        g = key_genotype(int(key))
        assert genotype_key(g) == key and cora.contains(g)
        assert g[0] < len(LINKS) and all(op < len(OPS) for op in g[1:])
    arch = Arch.from_genotype(key_genotype(int(cora.keys[123])))
    assert cora.query(arch) == cora.query(arch.genotype)


def test_query_equals_package_reader(cora):
    """The package (its pickle.load and its canonical hash) as the oracle."""
    from nas_bench_graph import Arch as PkgArch
    from nas_bench_graph import light_read

    table = light_read("cora")
    for link, ops in [([0, 1, 2, 1], ["gcn", "gin", "fc", "cheb"]), ([0, 0, 0, 0], ["gcn"] * 4),
                      ([0, 1, 2, 3], ["skip", "skip", "gat", "gat"])]:
        key = PkgArch(link, ops).valid_hash()
        rec = cora.query(key_genotype(key))
        assert (rec.valid_acc, rec.test_acc, rec.latency, rec.params) == (
            table[key]["valid_perf"], table[key]["perf"], table[key]["latency"], float(table[key]["para"]))
    _forget_package()


def test_non_canonical_and_unknown_are_one_line_errors(cora):
    with pytest.raises(ArchlabError, match="not in canonical form"):
        cora.query(Arch((0, 1, 2, 1), ("gcn",) * 4))
    with pytest.raises(ArchlabError, match="not in the table"):
        cora.query((0, 8, 8, 8, 8))  # all-skip: no architecture
    with pytest.raises(ArchlabError, match="unknown dataset"):
        bench_file("imagenet")


def test_proteins_uses_its_five_ops():
    p = NASBenchGraph.load("proteins")
    assert len(p) == 2021
    used = {op for k in p.keys for op in key_genotype(int(k))[1:]}
    assert used == {OPS.index(o) for o in ("gcn", "sage", "arma", "fc", "skip")}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _nas_loads(data: bytes):
    return safe_pickle.loads(data, "crafted.bench", safe_pickle.NASBENCH_ALLOWED, "NAS-Bench-Graph")


def test_malicious_pickles_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ArchlabError, match="refusing to unpickle posix.system"):
        _nas_loads(pickle.dumps({0: _Evil()}))
    # a table file that tries it, read through the public loader
    (tmp_path / "cora.bench").write_bytes(pickle.dumps({0: _Evil()}))
    monkeypatch.setenv("ARCHLAB_NASBENCH_GRAPH", str(tmp_path))
    with pytest.raises(ArchlabError, match="refusing to unpickle"):
        NASBenchGraph.load("cora")
    # the table list is its own: names Planetoid needs are refused here, and scalar there
    with pytest.raises(ArchlabError, match=r"refusing to unpickle numpy\.(_?core\.multiarray\._reconstruct|ndarray)"):
        _nas_loads(pickle.dumps(np.zeros(2)))
    with pytest.raises(ArchlabError, match="refusing to unpickle numpy.core.multiarray.scalar"):
        safe_pickle.loads(b"\x80\x02cnumpy.core.multiarray\nscalar\n)R.", "planetoid")
    # the allowed scalar reconstructor refuses object dtype (which would hand back any object)
    obj_scalar = b"cnumpy.core.multiarray\nscalar\n(cnumpy\ndtype\n(VO\nI00\nI01\ntRVany object\ntR."
    with pytest.raises(ArchlabError, match="only numeric dtypes"):
        _nas_loads(obj_scalar)
    assert _nas_loads(pickle.dumps({"para": np.float64(1.5)})) == {"para": 1.5}


class _Toy:
    """A 3-position space where position 0 == 2 is invalid."""

    choices = (3, 4, 5)

    def contains(self, g):
        return g[0] != 2


def test_sample_and_mutate_stay_valid():
    rng = np.random.default_rng(0)
    for _ in range(200):
        g = sample(_Toy(), rng)
        assert _Toy().contains(g)
        child = mutate(_Toy(), g, rng)
        assert _Toy().contains(child) and sum(a != b for a, b in zip(g, child, strict=True)) == 1


@pytest.mark.parametrize("cls", [RandomSearch, RegularizedEvolution, RLController])
def test_strategies_are_deterministic(cora, cls):
    runs = [run_search(cora, cls(cora, seed), 40)["position"] for seed in (3, 3, 4)]
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_evolution_removes_the_oldest_and_mutates_the_winner():
    evo = RegularizedEvolution(_Toy(), 0, EvolutionConfig(population=3, sample_size=3))
    for g, s in [((0, 0, 0), 0.9), ((1, 1, 1), 0.1), ((0, 2, 2), 0.2)]:
        assert len(evo.ask()) == 3
        evo.tell(g, s)
    child = evo.ask()  # S = P: the tournament is the whole population, the winner (0, 0, 0)
    assert sum(a != b for a, b in zip(child, (0, 0, 0), strict=True)) == 1
    evo.tell(child, 0.0)
    assert [m[0] for m in evo.population] == [(1, 1, 1), (0, 2, 2), child]  # the best was the oldest
    with pytest.raises(ArchlabError):
        EvolutionConfig(population=3, sample_size=4)


def test_rl_controller_learns_and_tracks_the_baseline():
    ctl = RLController(_Toy(), 0, ControllerConfig(lr=0.1, baseline_decay=0.5))
    scores = []
    for _ in range(150):
        g = ctl.ask()
        score = 1.0 if g[1] == 3 else 0.0
        before = ctl.baseline
        ctl.tell(g, score)
        expected = score if before is None else 0.5 * before + 0.5 * score
        assert ctl.baseline == pytest.approx(expected)
        scores.append(score)
    assert ctl.probabilities()[1][3] > 0.9 and ctl.probabilities()[0][2] < 1 / 3 + 0.2


def test_regret_is_against_the_best_validation_so_far(cora):
    out = run_search(cora, RandomSearch(cora, 0), 30)
    for t in (0, 9, 29):
        best = int(np.argmax(out["valid"][: t + 1]))  # first maximum
        assert out["regret"][t] == pytest.approx(cora.oracle_test - out["test"][best])
    assert np.all(out["regret"] >= 0)


def test_driver_writes_curves_and_plot(tmp_path):
    assert cli_main(["nasbench", "--queries", "15", "--seeds", "2", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "nasbench_graph_cora_regret.json").read_text())
    assert set(summary["final_regret_points"]) == {"random", "evolution", "rl", "progressive"}
    assert all(len(v["per_seed"]) == 2 for v in summary["final_regret_points"].values())
    assert (tmp_path / "nasbench_graph_cora_regret.png").stat().st_size > 0
    # python -m archlab.search.nasbench is the same driver
    assert main(["--strategies", "random", "--queries", "5", "--seeds", "2", "--out", str(tmp_path / "m")]) == 0
    again = json.loads((tmp_path / "m" / "nasbench_graph_cora_regret.json").read_text())
    assert again["final_regret_points"]["random"]["per_seed"] == [
        100 * float(run_search(cora_table(), RandomSearch(cora_table(), s), 5)["regret"][-1]) for s in (0, 1)]


@pytest.mark.parametrize(("argv", "message"), [
    (["--strategies", "random,annealing"], "unknown strategy 'annealing'"),
    (["--seeds", "1"], "--seeds >= 2"),
    (["--queries", "0"], "--queries >= 1"),
    (["--pareto", "params", "--strategies", "random"], "leave --strategies out"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
])
def test_command_mistakes_are_one_line(tmp_path, capsys, argv, message):
    assert cli_main(["nasbench", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("archlab: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_non_dominated_sweep_equals_pairwise_and_hypervolume():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.integers(0, 6, size=(int(rng.integers(1, 30)), 2)).astype(float)
        le = (p[:, None, :] <= p[None]).all(-1)
        lt = (p[:, None, :] < p[None]).any(-1)
        assert np.array_equal(non_dominated(p), ~(le & lt).any(0))
    # two boxes [1,4]x[3,4] and [2,4]x[1,4] overlap in [2,4]x[3,4]: 3 + 6 - 2 = 7; (5, 0) is outside
    assert hypervolume_2d(np.array([[1.0, 3.0], [2.0, 1.0], [3.0, 3.5], [5.0, 0.0]]), np.array([4.0, 4.0])) == 7.0


def test_pareto_evolution_tournament_takes_a_front_member():
    evo = ParetoEvolution(_Toy(), 0, EvolutionConfig(population=3, sample_size=3))
    members = [((0, 0, 0), (0.0, 5.0)), ((1, 1, 1), (5.0, 0.0)), ((0, 3, 4), (6.0, 6.0))]  # last dominated
    for g, s in members:
        evo.ask()
        evo.tell(g, s)
    for _ in range(20):
        child = evo.ask()
        assert min(sum(a != b for a, b in zip(child, g, strict=True)) for g, _ in members[:2]) == 1


def test_pareto_driver(tmp_path, cora):
    out = pareto_search(cora, ParetoEvolution(cora, 0), 40, "latency")
    objectives = pareto_objectives(cora, "latency")
    assert 0 < out["hypervolume_ratio"] <= 1
    assert np.all(non_dominated(objectives[out["front"]]))
    assert main(["--pareto", "params", "--queries", "25", "--seeds", "2", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "nasbench_graph_cora_pareto_params.json").read_text())
    assert set(summary["hypervolume_ratio"]) == {"random", "pareto_evolution"}
