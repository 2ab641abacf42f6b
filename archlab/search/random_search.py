"""Random search: every query is a fresh uniformly random architecture (Bergstra & Bengio 2012; the
baseline every NAS benchmark reports, e.g. Real et al. 2019 Fig. 3, Li & Talwalkar 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .categorical import CategoricalSpace, Genotype, sample


@dataclass
class RandomSearchConfig:
    """Random search has no settings; the dataclass keeps the strategies' constructors alike."""


class RandomSearch:
    """Ask/tell random search over a :class:`~archlab.search.categorical.CategoricalSpace`.

    ``ask()`` draws uniformly over the valid genotypes (with replacement: a repeat is a query too);
    ``tell`` ignores the score. Deterministic given ``seed``.
    """

    def __init__(self, space: CategoricalSpace, seed: int, config: RandomSearchConfig | None = None) -> None:
        self.space = space
        self.config = config or RandomSearchConfig()
        self.rng = np.random.default_rng(seed)

    def ask(self) -> Genotype:
        return sample(self.space, self.rng)

    def tell(self, genotype: Genotype, score: float) -> None:
        pass
