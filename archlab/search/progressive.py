"""Progressive architecture search with a learned surrogate, after Liu et al. 2018, "Progressive Neural
Architecture Search" (ECCV; PNAS), Algorithm 1.

A *cell* is grown one *block* at a time. Block ``i`` (1-based) reads one earlier value -- the cell's
input (0) or block ``j < i`` -- and applies one of ``space.ops`` operations; blocks nobody reads are
the cell's outputs. PNAS searches from simple to complex::

    S_1  <- every cell of 1 block; query them all                       # |S_1| = ops
    fit the surrogate f on every (cell, score) queried so far
    for b = 1 .. B-1:
        S'_{b+1} <- expand(S_b)         # every cell S_b's cells give with one more block (deduplicated)
        S_{b+1}  <- the K cells of S'_{b+1} with the highest f(cell)      # K: the beam
        query S_{b+1}; refit f on everything queried so far

so with a beam ``K`` and ``B`` blocks it queries ``|S_1| + K (B - 1)`` architectures (PNAS: K = 256,
B = 5 on CIFAR-10). The surrogate is what lets the search skip most of ``S'_{b+1}``: it was fitted on
smaller cells and ranks larger ones. Past level ``B`` (a larger budget) the search keeps going at level B:
the not yet queried expansions of every queried (B-1)-block cell, ranked by the refitted surrogate, K at
a time (PNAS stops at B; this continuation is archlab's).

**Surrogate.** A regression over a fixed encoding of the cell (:func:`features`), summed over its blocks
so that one model scores cells of every size (PNAS's predictors also pool their block embeddings; it
compares an LSTM and an MLP, single and ensembled). Here an ensemble of ``predictors`` models, each fitted on
its own random ``subsample`` of the observations, averaged; a model is a ridge regression (default) or a
one-hidden-layer MLP::

    phi(c) in R^D,  y = score - mean(score)
    ridge: w_m = argmin_w ||Phi_m w - y_m||^2 + lambda ||w||^2 = (Phi_m^T Phi_m + lambda I)^-1 Phi_m^T y_m,
           g_m(c) = phi(c) . w_m
    mlp:   g_m(c) = s * (w2 . relu(W1 phi(c) + b1) + b2),  s = std(y); Adam on mean((g_m - y_m)^2) / s^2
           + lambda_mlp ||W||^2, full batch, ``mlp_steps`` steps from a seeded He initialisation
    f(c) = mean(score) + 1/M sum_m g_m(c)

``surrogate = "none"`` ranks nothing: each level's K cells are drawn uniformly from the expansions, the
ablation that shows what the surrogate adds to the level schedule. The subsamples (and the MLP's
initialisation) are the search's only randomness -- a table query is deterministic -- so ``seed`` matters
only through them; ties in ``f`` go to the earlier candidate. Deterministic given ``seed``.

**Spaces.** A :class:`CellSpace` says how many blocks a cell may have, how many operations a block
may apply, and which genotype of the benchmark a cell is queried as (``None``: not in the space).
Cells are deduplicated up to isomorphism by :func:`canonical` (relabelling the blocks in every order
that keeps inputs before readers; the smallest encoding). NAS-Bench-Graph's cells are in
``archlab.search.nasbench`` (:class:`~archlab.search.nasbench.NASBenchGraphCells`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ArchlabError
from .categorical import Genotype

Block = tuple[int, int]
"""``(input, op)``: ``input`` 0 is the cell's input, ``j`` the output of block ``j`` (1-based, earlier)."""
Cell = tuple[Block, ...]


class CellSpace(Protocol):
    """``blocks``: B, the most blocks a cell has; ``ops``: block operations ``0 .. ops-1``;
    ``genotype(cell)``: the architecture a query of the (canonical) ``cell`` evaluates, or ``None``."""

    blocks: int
    ops: int

    def genotype(self, cell: Cell) -> Genotype | None: ...


def relabel(cell: Cell, order: tuple[int, ...]) -> Cell | None:
    """The cell with its blocks listed in ``order`` (old 1-based labels); ``None`` if a block would read
    one listed after it."""
    new = {old: i + 1 for i, old in enumerate(order)}
    new[0] = 0
    blocks = tuple((new[cell[old - 1][0]], cell[old - 1][1]) for old in order)
    if any(src >= i + 1 for i, (src, _) in enumerate(blocks)):
        return None
    return blocks


def canonical(cell: Cell) -> Cell:
    """One representative per isomorphism class: the smallest encoding over the block orders that keep
    every block after its input (cells whose outputs differ only in order compute the same function)."""
    valid = (relabel(cell, order) for order in itertools.permutations(range(1, len(cell) + 1)))
    return min(c for c in valid if c is not None)


def expand(cell: Cell, ops: int) -> list[Cell]:
    """Every canonical cell with one more block: it reads the input or any block, applies any op."""
    return sorted({canonical(cell + ((src, op),)) for src in range(len(cell) + 1) for op in range(ops)})


def depths_and_leaves(cell: Cell) -> tuple[list[int], list[bool]]:
    """Block ``i``'s depth (1 + its input's, the input's is 0) and whether it is an output (a leaf)."""
    depth: list[int] = []
    for src, _ in cell:
        depth.append(1 + (depth[src - 1] if src else 0))
    read = {src for src, _ in cell}
    return depth, [i + 1 not in read for i in range(len(cell))]


def feature_size(blocks: int, ops: int) -> int:
    return ops * blocks + ops + (ops + 1) * ops + 1


def features(cell: Cell, blocks: int, ops: int) -> np.ndarray:
    """The surrogate's encoding phi(cell), shape ``(feature_size(blocks, ops),)``: per block, summed,
    one-hot(op) x one-hot(depth) | one-hot(op) if it is an output | one-hot(input's op or 'input') x
    one-hot(op); then the number of blocks."""
    phi = np.zeros(feature_size(blocks, ops))
    depth, leaf = depths_and_leaves(cell)
    o_leaf, o_pair = ops * blocks, ops * blocks + ops
    for i, (src, op) in enumerate(cell):
        phi[op * blocks + depth[i] - 1] += 1
        phi[o_leaf + op] += leaf[i]
        parent = cell[src - 1][1] + 1 if src else 0
        phi[o_pair + parent * ops + op] += 1
    phi[-1] = len(cell)
    return phi


@dataclass
class ProgressiveConfig:
    beam: int = 30
    """K: cells queried per level after the first (8 + 30 x 3 = 98 queries reach 4 blocks on NAS-Bench-Graph)."""
    surrogate: str = "ridge"
    """``ridge``, ``mlp`` or ``none`` (each level's K cells drawn at random: the ablation)."""
    predictors: int = 5
    """M: models in the surrogate's ensemble."""
    subsample: float = 0.8
    """fraction of the observations (without replacement) each model is fitted on."""
    ridge: float = 1.0
    """lambda, the L2 penalty of every ridge regression."""
    mlp_hidden: int = 64
    """the MLP's hidden units."""
    mlp_steps: int = 300
    """full-batch Adam steps per MLP fit."""
    mlp_lr: float = 0.01
    """Adam's learning rate for the MLP."""
    mlp_weight_decay: float = 1e-3
    """lambda_mlp, the L2 penalty on the MLP's weight matrices."""

    def __post_init__(self) -> None:
        if self.beam < 1 or self.predictors < 1 or not 0 < self.subsample <= 1 or not self.ridge > 0:
            raise ArchlabError(
                f"progressive: need beam >= 1, predictors >= 1, 0 < subsample <= 1, ridge > 0; got {self}"
            )
        if self.surrogate not in ("ridge", "mlp", "none"):
            raise ArchlabError(f"progressive: surrogate must be ridge, mlp or none, got {self.surrogate!r}")
        if self.mlp_hidden < 1 or self.mlp_steps < 1 or not self.mlp_lr > 0 or self.mlp_weight_decay < 0:
            raise ArchlabError(f"progressive: need mlp_hidden >= 1, mlp_steps >= 1, mlp_lr > 0, "
                               f"mlp_weight_decay >= 0; got {self}")


class Surrogate:
    """The ensemble of ridge regressions or MLPs on :func:`features`; ``fit`` then ``predict``."""

    def __init__(self, blocks: int, ops: int, config: ProgressiveConfig) -> None:
        self.blocks, self.ops, self.config = blocks, ops, config
        self.models: list[Any] = []  # ridge: a weight vector; mlp: (W1, b1, w2, b2) tensors
        self.offset, self.scale = 0.0, 1.0

    def encode(self, cells: list[Cell]) -> np.ndarray:
        return np.stack([features(c, self.blocks, self.ops) for c in cells])

    def fit(self, cells: list[Cell], scores: list[float], rng: np.random.Generator) -> None:
        phi, y = self.encode(cells), np.asarray(scores, dtype=np.float64)
        self.offset = float(y.mean())
        y = y - self.offset
        self.scale = float(y.std()) or 1.0
        n, d = phi.shape
        size = max(1, round(self.config.subsample * n))
        self.models = []
        for _ in range(self.config.predictors):
            rows = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
            if self.config.surrogate == "mlp":
                self.models.append(self._fit_mlp(phi[rows], y[rows] / self.scale, int(rng.integers(2**31))))
            else:
                a = phi[rows].T @ phi[rows] + self.config.ridge * np.eye(d)
                self.models.append(np.linalg.solve(a, phi[rows].T @ y[rows]))

    def _fit_mlp(self, phi: np.ndarray, y: np.ndarray, seed: int) -> tuple[torch.Tensor, ...]:
        cfg = self.config
        gen = torch.Generator().manual_seed(seed)
        x, t = torch.from_numpy(phi), torch.from_numpy(y)
        d, h = x.shape[1], cfg.mlp_hidden
        w1 = (torch.randn(d, h, generator=gen, dtype=torch.float64) * math.sqrt(2 / d)).requires_grad_()
        w2 = (torch.randn(h, generator=gen, dtype=torch.float64) * math.sqrt(1 / h)).requires_grad_()
        b1 = torch.zeros(h, dtype=torch.float64, requires_grad=True)
        b2 = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([w1, b1, w2, b2], lr=cfg.mlp_lr)
        for _ in range(cfg.mlp_steps):
            opt.zero_grad()
            loss = ((torch.relu(x @ w1 + b1) @ w2 + b2 - t) ** 2).mean()
            loss = loss + cfg.mlp_weight_decay * (w1.square().sum() + w2.square().sum())
            loss.backward()
            opt.step()
        return tuple(p.detach() for p in (w1, b1, w2, b2))

    def predict(self, cells: list[Cell]) -> np.ndarray:
        if not self.models:
            raise ArchlabError("progressive: the surrogate is not fitted yet")
        phi = self.encode(cells)
        if self.config.surrogate == "mlp":
            x = torch.from_numpy(phi)
            preds = [(torch.relu(x @ w1 + b1) @ w2 + b2).numpy() * self.scale for w1, b1, w2, b2 in self.models]
        else:
            preds = [phi @ w for w in self.models]
        return self.offset + np.mean(preds, axis=0)


class ProgressiveSearch:
    """Ask/tell PNAS. ``ask()`` returns the next genotype of the current level (all 1-block cells first,
    then K per level, chosen by the surrogate refitted on every score told so far); ``tell(g, score)``
    records the score of the cell queried as ``g``. A cell is never queried twice."""

    def __init__(self, space: CellSpace, seed: int, config: ProgressiveConfig | None = None) -> None:
        if space.blocks < 1 or space.ops < 1:
            raise ArchlabError(f"progressive: a cell space needs blocks >= 1 and ops >= 1, got "
                               f"{space.blocks}, {space.ops}")
        self.space = space
        self.config = config or ProgressiveConfig()
        self.rng = np.random.default_rng(seed)
        self.surrogate = Surrogate(space.blocks, space.ops, self.config)
        self.asked: dict[Genotype, Cell] = {}
        self.cells: list[Cell] = []  # told, in order
        self.scores: list[float] = []
        #: every ranking the surrogate made: (the candidates, their predicted scores), one per level
        self.rankings: list[tuple[list[Cell], np.ndarray]] = []
        self.level = 1
        self.queue = self._queryable(expand((), space.ops))
        if not self.queue:
            raise ArchlabError("progressive: no 1-block cell of the space can be queried")

    def _queryable(self, cells: list[Cell]) -> list[Cell]:
        """The cells with a genotype not queried before (one cell per genotype), in order."""
        out, seen = [], set(self.asked)
        for c in cells:
            g = self.space.genotype(c)
            if g is not None and g not in seen:
                seen.add(g)
                out.append(c)
        return out

    def _next_level(self) -> None:
        """Refit the surrogate; queue the top-K expansions of the last level's cells (past level B: of
        every queried (B-1)-block cell, see the module docstring)."""
        grow = min(self.level, self.space.blocks - 1)
        parents = [c for c in self.cells if len(c) == grow]  # cells of b blocks are queried at level b only
        candidates = self._queryable(sorted({e for p in parents for e in expand(p, self.space.ops)}))
        if not candidates:
            raise ArchlabError(f"progressive: no cell of {grow + 1} blocks left to query")
        if self.config.surrogate == "none":
            order = self.rng.permutation(len(candidates))
        else:
            self.surrogate.fit(self.cells, self.scores, self.rng)
            predicted = self.surrogate.predict(candidates)
            self.rankings.append((candidates, predicted))
            order = np.argsort(-predicted, kind="stable")
        self.queue = [candidates[int(i)] for i in order[: self.config.beam]]
        self.level = min(self.level + 1, self.space.blocks)

    def ask(self) -> Genotype:
        if not self.queue:
            self._next_level()
        cell = self.queue.pop(0)
        g = self.space.genotype(cell)
        self.asked[g] = cell
        return g

    def tell(self, genotype: Genotype, score: float) -> None:
        cell = self.asked.get(tuple(genotype))
        if cell is None:
            raise ArchlabError(f"progressive: told the score of {genotype}, which it did not ask for")
        self.cells.append(cell)
        self.scores.append(float(score))
