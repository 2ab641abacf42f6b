"""Regularized (aging) evolution, Real et al. 2019, "Regularized Evolution for Image Classifier
Architecture Search" (AAAI), Algorithm 1.

    population <- P random architectures, each trained (queried) once, in a queue (oldest first)
    repeat until the budget is spent:
        sample <- S members of the population, uniformly without replacement
        parent <- argmax_{m in sample} score(m)            # tournament selection
        child  <- mutate(parent); score(child)              # one query
        push child (newest); pop the OLDEST member          # age-based removal, not the worst

Removing the oldest rather than the worst is the "regularization": an architecture survives only by
having good descendants, so a lucky score cannot dominate forever. Scores are what the search may see
(the validation accuracy); the test accuracy is used only to report regret.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from ..errors import ArchlabError
from .categorical import CategoricalSpace, Genotype, mutate, sample


@dataclass
class EvolutionConfig:
    population: int = 20
    """P: the population size (the first P queries are uniformly random)."""
    sample_size: int = 5
    """S: tournament size, drawn without replacement from the population (S <= P)."""

    def __post_init__(self) -> None:
        if self.population < 2 or not 1 <= self.sample_size <= self.population:
            raise ArchlabError(
                f"evolution: need population >= 2 and 1 <= sample_size <= population, got "
                f"population={self.population}, sample_size={self.sample_size}"
            )


class RegularizedEvolution:
    """Ask/tell regularized evolution. ``ask()`` returns a random genotype while the population is
    filling, then the mutated tournament winner; ``tell(g, score)`` appends ``g`` and, past ``P``
    members, removes the oldest. Deterministic given ``seed``."""

    def __init__(self, space: CategoricalSpace, seed: int, config: EvolutionConfig | None = None) -> None:
        self.space = space
        self.config = config or EvolutionConfig()
        self.rng = np.random.default_rng(seed)
        self.population: collections.deque[tuple[Genotype, float]] = collections.deque()

    def ask(self) -> Genotype:
        if len(self.population) < self.config.population:
            return sample(self.space, self.rng)
        picks = self.rng.choice(len(self.population), size=self.config.sample_size, replace=False)
        # ties: the earliest (oldest) of the sampled members, by index order
        parent = max((self.population[int(i)] for i in sorted(picks)), key=lambda m: m[1])[0]
        return mutate(self.space, parent, self.rng)

    def tell(self, genotype: Genotype, score: float) -> None:
        self.population.append((genotype, float(score)))
        if len(self.population) > self.config.population:
            self.population.popleft()  # the oldest, whatever its score
