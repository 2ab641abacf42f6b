"""NAS-Bench-Graph (Qin et al. 2022, "NAS-Bench-Graph: Benchmarking Graph Neural Architecture Search",
NeurIPS Datasets & Benchmarks): a table of trained GNN architectures, read with archlab's restricted
unpickler, and the tabular search driver.

**Space.** An architecture is a DAG of 4 computing nodes; node ``i`` reads exactly one earlier node
(``link[i]``: 0 = the input, ``j`` = computing node ``j``), every leaf feeds the output, and each node
applies one of 9 operations (:data:`OPS`; the proteins table uses 5 of them). The benchmark keeps one
canonical encoding per isomorphism class: the link pattern is one of the 9 in :data:`LINKS` and the table
key is ``link_index * 10**4 + sum_i op_index_i * 10**(3 - i)`` (26,206 architectures per dataset,
2,021 for proteins). Here a genotype is the tuple ``(link_index, op_0, op_1, op_2, op_3)`` over
``choices = (9, 9, 9, 9, 9)``; ``contains(g)`` is "g is a key of the table", so equivalent
non-canonical encodings are simply not part of the space (they are not re-canonicalized).

**Files.** ``nas-bench-graph`` (an optional extra, ``pip install archlab[nas]``) ships
``nas_bench_graph/light/<dataset>.bench``: a pickled ``{key: {"valid_perf", "perf", "latency",
"para"}}`` (accuracies as fractions, latency in seconds, parameters in millions). The files are found
with ``importlib.util.find_spec`` (which does not run the package) and read with
:mod:`archlab.data.safe_pickle`; the package's own loader (``pickle.load``) is never imported.

**Driver.** ``archlab nasbench`` (or ``python -m archlab.search.nasbench``) runs random search, regularized
evolution, the RL controller and progressive search for ``--queries`` table look-ups over ``--seeds`` seeds and
writes the test-regret curves::

    regret(t) = max_table test_acc - test_acc(argmax_{s <= t} valid_acc(a_s))

(the strategies see only validation accuracy; regret is in accuracy points).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import safe_pickle
from ..errors import ArchlabError
from ..models.search.nasbench_graph import LINKS, OPS  # the space's operations and link patterns
from .categorical import Genotype
from .evolution import EvolutionConfig, RegularizedEvolution
from .mo_evolution import ParetoEvolution
from .pareto import hypervolume_2d, non_dominated
from .progressive import Cell, ProgressiveConfig, ProgressiveSearch, canonical
from .random_search import RandomSearch
from .rl_controller import ControllerConfig, RLController

DATASETS = ("cora", "citeseer", "pubmed", "cs", "physics", "photo", "computers", "arxiv", "proteins")
#: the table's key base: one decimal digit per operation
_BASE = 10


@dataclass(frozen=True)
class Arch:
    """One architecture: ``link[i]`` is the input of computing node ``i`` (0 = the graph's features),
    ``ops[i]`` its operation name."""

    link: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def genotype(self) -> Genotype:
        try:
            return (LINKS.index(tuple(self.link)),) + tuple(OPS.index(o) for o in self.ops)
        except ValueError:
            raise ArchlabError(
                f"NAS-Bench-Graph: {self} is not in canonical form (links one of {LINKS}, ops from {OPS})"
            ) from None

    @classmethod
    def from_genotype(cls, g: Genotype) -> Arch:
        return cls(LINKS[g[0]], tuple(OPS[i] for i in g[1:]))

    def __str__(self) -> str:
        return f"{list(self.link)} {list(self.ops)}"


def genotype_key(g: Genotype) -> int:
    """The benchmark's table key of a genotype."""
    key = g[0]
    for op in g[1:]:
        key = key * _BASE + op
    return key


def key_genotype(key: int) -> Genotype:
    """The genotype of a table key (inverse of :func:`genotype_key`)."""
    ops = []
    for _ in range(4):
        key, op = divmod(key, _BASE)
        ops.append(op)
    return (key,) + tuple(reversed(ops))


@dataclass(frozen=True)
class Record:
    """What the table holds for one architecture: accuracies in [0, 1], latency in seconds, parameters
    in millions."""

    valid_acc: float
    test_acc: float
    latency: float
    params: float


def bench_file(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<dataset>.bench``; without ``root``, ``$ARCHLAB_NASBENCH_GRAPH`` or the installed
    package's ``light/`` folder."""
    if dataset not in DATASETS:
        raise ArchlabError(f"NAS-Bench-Graph: unknown dataset {dataset!r}; one of {', '.join(DATASETS)}")
    if root is None:
        root = os.environ.get("ARCHLAB_NASBENCH_GRAPH")
    if root is None:
        spec = importlib.util.find_spec("nas_bench_graph")  # locates, does not import
        if spec is None or not spec.submodule_search_locations:
            raise ArchlabError(
                "NAS-Bench-Graph tables not found: pip install 'archlab[nas]' (nas-bench-graph==1.4.0) "
                "or set ARCHLAB_NASBENCH_GRAPH to a folder of <dataset>.bench files"
            )
        root = Path(next(iter(spec.submodule_search_locations))) / "light"
    path = Path(root) / f"{dataset}.bench"
    if not path.is_file():
        raise ArchlabError(f"NAS-Bench-Graph: no table {path}")
    return path


class NASBenchGraph:
    """One dataset's table, as arrays aligned with :attr:`keys` (sorted), and the search space.

    Attributes (shape ``(N,)``, N = 26,206; 2,021 for proteins): ``keys`` (int64), ``valid_acc``,
    ``test_acc``, ``latency``, ``params`` (float64). ``choices = (9, 9, 9, 9, 9)``.
    """

    choices: tuple[int, ...] = (len(LINKS),) + (len(OPS),) * 4

    def __init__(self, table: dict[int, dict[str, Any]], dataset: str = "") -> None:
        self.dataset = dataset
        fields = ("valid_perf", "perf", "latency", "para")
        keys = sorted(table)
        for key in keys:
            entry = table[key]
            if not isinstance(key, int) or not isinstance(entry, dict) or any(f not in entry for f in fields):
                raise ArchlabError(f"NAS-Bench-Graph {dataset}: malformed entry {key!r}")
        self.keys = np.asarray(keys, dtype=np.int64)
        cols = {f: np.asarray([float(table[k][f]) for k in keys], dtype=np.float64) for f in fields}
        self.valid_acc, self.test_acc = cols["valid_perf"], cols["perf"]
        self.latency, self.params = cols["latency"], cols["para"]
        self.index = {int(k): i for i, k in enumerate(keys)}

    @classmethod
    def load(cls, dataset: str = "cora", root: str | os.PathLike | None = None) -> NASBenchGraph:
        """Read ``<dataset>.bench`` with the restricted unpickler (see :func:`bench_file`)."""
        path = bench_file(dataset, root)
        table = safe_pickle.load(path, safe_pickle.NASBENCH_ALLOWED, "NAS-Bench-Graph")
        if not isinstance(table, dict):
            raise ArchlabError(f"{path}: expected a dict of architectures, got {type(table).__name__}")
        return cls(table, dataset)

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, genotype: Genotype) -> bool:
        return genotype_key(genotype) in self.index

    def architectures(self) -> list[Arch]:
        return [Arch.from_genotype(key_genotype(int(k))) for k in self.keys]

    def position(self, arch: Arch | Genotype) -> int:
        g = arch.genotype if isinstance(arch, Arch) else tuple(arch)
        try:
            return self.index[genotype_key(g)]
        except KeyError:
            raise ArchlabError(
                f"NAS-Bench-Graph {self.dataset}: {Arch.from_genotype(g)} is not in the table "
                "(not canonical, or an op outside this dataset's list)"
            ) from None

    def query(self, arch: Arch | Genotype) -> Record:
        """The table's record of ``arch`` (an :class:`Arch` or a genotype)."""
        i = self.position(arch)
        return Record(float(self.valid_acc[i]), float(self.test_acc[i]), float(self.latency[i]),
                      float(self.params[i]))

    @property
    def oracle_test(self) -> float:
        """The best test accuracy in the table."""
        return float(self.test_acc.max())

    @functools.cached_property
    def cells(self) -> NASBenchGraphCells:
        """The table as a space of growing cells, for progressive search (built once, ~1 s)."""
        return NASBenchGraphCells(self)


#: the operations a block of a growing cell may apply: every one but ``skip``, which only pads
BLOCK_OPS = tuple(i for i, o in enumerate(OPS) if o != "skip")


class NASBenchGraphCells:
    """NAS-Bench-Graph as a :class:`~archlab.search.progressive.CellSpace`: a block is a computing node
    (its input, an op other than ``skip``), B = 4, and a cell of ``b < 4`` blocks is queried as a table
    architecture that computes it with ``4 - b`` ``skip`` nodes (identities).

    Every table architecture is *contracted*: its ``skip`` nodes are removed and whoever read one reads
    the skip's input instead. It computes the contracted cell exactly when its outputs are the cell's:
    the outputs (leaves) of the architecture, each traced through skips to a non-skip node, are the
    cell's leaves (a ``skip`` leaf copying a node that another block reads adds an output the cell lacks;
    one copying the input adds the raw features). Such an architecture is a *proxy* of the cell; of
    several, the one with the smallest table key is queried. Skip-free architectures are their own
    proxies, so the 4-block cells are exactly the table's 22,570 skip-free architectures on Cora, and
    the cells of 1, 2, 3 blocks are all present (8, 100 and 1,432 canonical cells on Cora, each with a proxy).
    """

    blocks = 4
    ops = len(BLOCK_OPS)

    def __init__(self, bench: NASBenchGraph) -> None:
        self.bench = bench
        self.proxy: dict[Cell, Genotype] = {}
        for key in bench.keys:  # sorted: the first proxy of a cell has the smallest key
            g = key_genotype(int(key))
            cell = contract(LINKS[g[0]], g[1:])
            if cell is not None:
                self.proxy.setdefault(cell, g)

    def genotype(self, cell: Cell) -> Genotype | None:
        return self.proxy.get(cell)


_SKIP = OPS.index("skip")


def contract(link: tuple[int, ...], ops: tuple[int, ...]) -> Cell | None:
    """The canonical cell an architecture (``link``, op indices) computes without its ``skip`` nodes, or
    ``None`` when it computes none (see :class:`NASBenchGraphCells`)."""
    def through(node: int) -> int:  # follow skips back to a non-skip node or the input (0)
        while node and ops[node - 1] == _SKIP:
            node = link[node - 1]
        return node

    real = [i + 1 for i, o in enumerate(ops) if o != _SKIP]
    if not real:
        return None
    label = {0: 0, **{node: j + 1 for j, node in enumerate(real)}}
    cell = tuple((label[through(link[node - 1])], BLOCK_OPS.index(ops[node - 1])) for node in real)
    read = set(link)
    outputs = {through(i + 1) for i in range(len(ops)) if i + 1 not in read}
    cell_leaves = {node for node in real if label[node] not in {src for src, _ in cell}}
    if outputs != cell_leaves:
        return None
    return canonical(cell)


STRATEGIES = {
    "random": lambda space, seed: RandomSearch(space, seed),
    "evolution": lambda space, seed: RegularizedEvolution(space, seed, EvolutionConfig()),
    "rl": lambda space, seed: RLController(space, seed, ControllerConfig()),
    "progressive": lambda bench, seed: ProgressiveSearch(bench.cells, seed, ProgressiveConfig()),
    "progressive_mlp": lambda bench, seed: ProgressiveSearch(bench.cells, seed, ProgressiveConfig(surrogate="mlp")),
    # ablation: the same levels, each level's K cells drawn at random from the expansions
    "progressive_random": lambda bench, seed: ProgressiveSearch(bench.cells, seed,
                                                                ProgressiveConfig(surrogate="none")),
}


def run_search(bench: NASBenchGraph, strategy: Any, queries: int) -> dict[str, np.ndarray]:
    """``queries`` ask/tell rounds, the strategy told the validation accuracy. Returns per-query arrays:
    ``position`` (row in the table), ``valid``, ``test`` and ``regret`` (oracle test minus the test
    accuracy of the best-validation architecture so far, ties to the earlier query)."""
    positions = np.empty(queries, dtype=np.int64)
    for t in range(queries):
        g = strategy.ask()
        positions[t] = bench.position(g)
        strategy.tell(g, bench.valid_acc[positions[t]])
    valid, test = bench.valid_acc[positions], bench.test_acc[positions]
    incumbent = np.empty(queries, dtype=np.int64)
    best = 0
    for t in range(queries):
        if valid[t] > valid[best]:
            best = t
        incumbent[t] = best
    regret = bench.oracle_test - test[incumbent]
    valid_regret = bench.valid_acc.max() - valid[incumbent]
    return {"position": positions, "valid": valid, "test": test, "regret": regret, "valid_regret": valid_regret}


def regret_curves(bench: NASBenchGraph, strategies: list[str], queries: int, seeds: list[int]) -> dict[str, np.ndarray]:
    """``{strategy: (len(seeds), queries) test-regret array}`` and ``{strategy + ":valid": ...}`` (the
    validation regret ``max valid - valid of the incumbent``, what the search optimises); seed ``s``
    seeds strategy ``s``."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ArchlabError(f"unknown strategy {unknown[0]!r}; one of {', '.join(STRATEGIES)}")
    curves = {}
    for name in strategies:
        runs = [run_search(bench, STRATEGIES[name](bench, seed), queries) for seed in seeds]
        curves[name] = np.stack([r["regret"] for r in runs])
        curves[name + ":valid"] = np.stack([r["valid_regret"] for r in runs])
    return curves


def plot_curves(curves: dict[str, np.ndarray], bench: NASBenchGraph, path: Path) -> None:
    """Two panels, mean regret (points) +- one standard error over seeds per strategy, log y: the test
    regret against the table's best test accuracy (with the floor a perfect validation search reaches,
    the best-validation architecture's regret) and the validation regret the search optimises."""
    from ..io import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    names = [n for n in curves if ":" not in n]
    floor = 100 * (bench.oracle_test - bench.test_acc[int(np.argmax(bench.valid_acc))])
    for ax, suffix, what in ((axes[0], "", "test"), (axes[1], ":valid", "validation")):
        for name in names:
            pts = 100 * curves[name + suffix]
            n = len(pts)
            mean = pts.mean(0)
            std = pts.std(0, ddof=1) if n > 1 else np.zeros_like(mean)
            se = std / math.sqrt(n)
            x = np.arange(1, pts.shape[1] + 1)
            ax.plot(x, mean, label=f"{name} (final {mean[-1]:.2f} ± {std[-1]:.2f} std)")
            ax.fill_between(x, mean - se, mean + se, alpha=0.2)
        if not suffix:
            ax.axhline(floor, color="gray", ls="--", lw=1, label=f"best-validation architecture ({floor:.2f})")
        ax.set_xlabel("queries (architectures evaluated)")
        ax.set_ylabel(f"{what} regret (accuracy points)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    n_seeds = len(curves[names[0]])
    axes[0].set_title(f"{bench.dataset}: test regret vs best test {100 * bench.oracle_test:.2f}%", fontsize=10)
    axes[1].set_title(f"validation regret vs best validation {100 * bench.valid_acc.max():.2f}% "
                      f"({n_seeds} seeds, ± s.e.)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


PARETO_STRATEGIES = {
    "random": lambda space, seed: RandomSearch(space, seed),
    "pareto_evolution": lambda space, seed: ParetoEvolution(space, seed, EvolutionConfig()),
}


def pareto_objectives(bench: NASBenchGraph, cost: str = "params") -> np.ndarray:
    """(N, 2) minimised objectives per table row: ``-valid_acc`` and the cost (``params`` in millions or
    ``latency`` in seconds)."""
    if cost not in ("params", "latency"):
        raise ArchlabError(f"unknown cost {cost!r}; params or latency")
    return np.stack([-bench.valid_acc, getattr(bench, cost)], 1)


def pareto_search(bench: NASBenchGraph, strategy: Any, queries: int, cost: str = "params") -> dict[str, Any]:
    """``queries`` ask/tell rounds told both objectives; returns the queried rows (``position``), the
    rows on the Pareto front of what was queried (``front``) and its hypervolume as a fraction of the
    whole table's (reference point: the table's worst value of each objective)."""
    objectives = pareto_objectives(bench, cost)
    reference = objectives.max(0)
    positions = np.empty(queries, dtype=np.int64)
    for t in range(queries):
        g = strategy.ask()
        positions[t] = bench.position(g)
        strategy.tell(g, objectives[positions[t]])
    found = np.unique(positions)
    front = found[non_dominated(objectives[found])]
    ratio = hypervolume_2d(objectives[found], reference) / hypervolume_2d(objectives, reference)
    return {"position": positions, "front": front, "hypervolume_ratio": ratio}


def plot_pareto(bench: NASBenchGraph, fronts: dict[str, np.ndarray], ratios: dict[str, np.ndarray],
                cost: str, path: Path) -> None:
    """The table (grey), its Pareto front (black) and each strategy's front from one seed, validation
    accuracy against the cost."""
    from ..io import pyplot

    plt = pyplot()
    objectives = pareto_objectives(bench, cost)
    table_front = np.flatnonzero(non_dominated(objectives))
    fig, ax = plt.subplots(figsize=(7, 4.6))
    ax.scatter(objectives[:, 1], 100 * bench.valid_acc, s=2, c="0.8", rasterized=True,
               label=f"table ({len(bench)} architectures)")
    order = table_front[np.argsort(objectives[table_front, 1])]
    ax.step(objectives[order, 1], 100 * bench.valid_acc[order], where="post", c="k", lw=1,
            label=f"table's Pareto front ({len(order)})")
    for i, (name, front) in enumerate(fronts.items()):
        order = front[np.argsort(objectives[front, 1])]
        r = ratios[name]
        ax.step(objectives[order, 1], 100 * bench.valid_acc[order], where="post", c=f"C{i}", lw=1.2)
        ax.scatter(objectives[order, 1], 100 * bench.valid_acc[order], s=18, c=f"C{i}",
                   label=f"{name}, seed 0 (hypervolume {r.mean():.3f} ± {r.std(ddof=1) if len(r) > 1 else 0:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (millions)" if cost == "params" else "latency (s)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(100 * np.quantile(bench.valid_acc, 0.2), 100 * bench.valid_acc.max() + 0.5)
    ax.set_title(f"NAS-Bench-Graph {bench.dataset}: accuracy vs {cost}, "
                 f"{len(next(iter(ratios.values())))} seeds (hypervolume / table's)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="cora", help=f"one of {', '.join(DATASETS)} (default cora)")
    p.add_argument("--strategies", default=None,
                   help=f"comma-separated, of {', '.join(STRATEGIES)} (default random,evolution,rl,progressive)")
    p.add_argument("--queries", type=int, default=100, help="table look-ups per search (default 100)")
    p.add_argument("--seeds", type=int, default=20, help="searches per strategy, seeds 0..N-1 (default 20)")
    p.add_argument("--out", type=Path, default=Path("runs/nasbench"),
                   help="folder for the curves (JSON) and the plot (default runs/nasbench)")
    p.add_argument("--pareto", choices=("params", "latency"), default=None,
                   help="instead: multi-objective search (Pareto evolution vs random), validation accuracy vs "
                        "this cost")


def add_parser(sub: Any) -> None:
    s = sub.add_parser("nasbench", help="architecture search on the NAS-Bench-Graph tables: regret curves of "
                                        "random / evolution / RL / progressive search over seeds, or Pareto fronts")
    s.set_defaults(run=run)
    _arguments(s)


def run(args: argparse.Namespace) -> int:
    """``archlab nasbench``: check the arguments, load the table, run the searches, write curves and plot."""
    if args.queries < 1 or args.seeds < 2:
        raise ArchlabError(f"need --queries >= 1 and --seeds >= 2 (a mean ± std over seeds), got "
                           f"{args.queries}, {args.seeds}")
    if args.pareto and args.strategies is not None:
        raise ArchlabError("--pareto runs its own two strategies (pareto_evolution, random); leave --strategies out")
    names = [s.strip() for s in (args.strategies or "random,evolution,rl,progressive").split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise ArchlabError(f"unknown strategy {unknown[0] if unknown else '(none)'!r}; one of {', '.join(STRATEGIES)}")
    bench = NASBenchGraph.load(args.dataset)
    if args.pareto:
        return _main_pareto(bench, args)
    return _main_regret(bench, names, args)


def main(argv: list[str] | None = None) -> int:
    """``python -m archlab.search.nasbench``: the same as ``archlab nasbench``."""
    p = argparse.ArgumentParser(prog="python -m archlab.search.nasbench", description=__doc__.split("\n")[0])
    _arguments(p)
    try:
        return run(p.parse_args(argv))
    except ArchlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main_regret(bench: NASBenchGraph, names: list[str], args: argparse.Namespace) -> int:
    curves = regret_curves(bench, names, args.queries, list(range(args.seeds)))
    summary: dict[str, Any] = {"dataset": args.dataset, "queries": args.queries, "seeds": args.seeds,
                               "oracle_test": bench.oracle_test, "final_regret_points": {},
                               "final_valid_regret_points": {}, "mean_curve_points": {}}
    print(f"{args.dataset}: {len(bench)} architectures, oracle test {100 * bench.oracle_test:.2f}%")
    for name in names:
        final, vfinal = 100 * curves[name][:, -1], 100 * curves[name + ":valid"][:, -1]
        summary["final_regret_points"][name] = {"mean": float(final.mean()), "std": float(final.std(ddof=1)),
                                                "per_seed": [float(v) for v in final]}
        summary["final_valid_regret_points"][name] = {"mean": float(vfinal.mean()),
                                                      "std": float(vfinal.std(ddof=1))}
        summary["mean_curve_points"][name] = [float(v) for v in 100 * curves[name].mean(0)]
        print(f"  {name:10s} final test regret {final.mean():.3f} ± {final.std(ddof=1):.3f} points; "
              f"validation regret {vfinal.mean():.3f} ± {vfinal.std(ddof=1):.3f}")
    stem = f"nasbench_graph_{args.dataset}"
    plot_curves(curves, bench, args.out / f"{stem}_regret.png")
    (args.out / f"{stem}_regret.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def _main_pareto(bench: NASBenchGraph, args: argparse.Namespace) -> int:
    seeds = list(range(args.seeds))
    fronts, ratios = {}, {}
    summary: dict[str, Any] = {"dataset": args.dataset, "queries": args.queries, "seeds": args.seeds,
                               "cost": args.pareto, "hypervolume_ratio": {}}
    for name, make in PARETO_STRATEGIES.items():
        runs = [pareto_search(bench, make(bench, seed), args.queries, args.pareto) for seed in seeds]
        fronts[name] = runs[0]["front"]
        ratios[name] = np.array([r["hypervolume_ratio"] for r in runs])
        summary["hypervolume_ratio"][name] = {"mean": float(ratios[name].mean()),
                                              "std": float(ratios[name].std(ddof=1)),
                                              "per_seed": [float(v) for v in ratios[name]]}
        print(f"  {name:17s} hypervolume / table's {ratios[name].mean():.4f} ± {ratios[name].std(ddof=1):.4f}")
    stem = f"nasbench_graph_{args.dataset}_pareto_{args.pareto}"
    plot_pareto(bench, fronts, ratios, args.pareto, args.out / f"{stem}.png")
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
