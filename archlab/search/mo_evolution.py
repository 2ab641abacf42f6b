"""Multi-objective regularized evolution: Real et al. (2019)'s aging evolution with a Pareto tournament,
for hardware-aware search (e.g. accuracy vs parameters or latency).

Scores are vectors ``s(a)`` of shape (k,), all minimised. As in :mod:`archlab.search.evolution`::

    population <- P random architectures (queue, oldest first)
    repeat: sample S members; parent <- uniformly random member of the sample's Pareto front
            child <- mutate(parent); push child; pop the OLDEST

The only change from the single-objective algorithm is the tournament: with one objective the sample's
Pareto front is its best member (ties aside), so this reduces to Real et al.'s selection. The search's
result is the Pareto front of every architecture it queried.
"""

from __future__ import annotations

import collections

import numpy as np

from .categorical import CategoricalSpace, Genotype, mutate, sample
from .evolution import EvolutionConfig
from .pareto import non_dominated


class ParetoEvolution:
    """Ask/tell multi-objective aging evolution; ``tell(g, scores)`` takes a sequence of minimised
    objectives. Deterministic given ``seed``."""

    def __init__(self, space: CategoricalSpace, seed: int, config: EvolutionConfig | None = None) -> None:
        self.space = space
        self.config = config or EvolutionConfig()
        self.rng = np.random.default_rng(seed)
        self.population: collections.deque[tuple[Genotype, np.ndarray]] = collections.deque()

    def ask(self) -> Genotype:
        if len(self.population) < self.config.population:
            return sample(self.space, self.rng)
        picks = sorted(int(i) for i in self.rng.choice(len(self.population), size=self.config.sample_size,
                                                      replace=False))
        scores = np.stack([self.population[i][1] for i in picks])
        front = [p for p, keep in zip(picks, non_dominated(scores), strict=True) if keep]
        parent = self.population[front[int(self.rng.integers(len(front)))]][0]
        return mutate(self.space, parent, self.rng)

    def tell(self, genotype: Genotype, scores: object) -> None:
        self.population.append((genotype, np.asarray(scores, dtype=np.float64).reshape(-1)))
        if len(self.population) > self.config.population:
            self.population.popleft()
