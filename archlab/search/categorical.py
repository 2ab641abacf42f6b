"""Categorical search spaces: what the NAS strategies (random search, regularized evolution, the RL
controller) need to know about a space, and nothing about what the genotype means.

A genotype is a tuple of ``len(choices)`` integers, position ``i`` in ``range(choices[i])``. Not every
tuple need be an architecture: ``contains(genotype)`` says which are (NAS-Bench-Graph's table holds
one canonical encoding per isomorphism class, 26,206 of the 9^5 tuples). Sampling is by rejection
from the product of uniform choices, so :func:`sample` is uniform over the *valid* genotypes.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import ArchlabError

Genotype = tuple[int, ...]


class CategoricalSpace(Protocol):
    """``choices[i]``: how many values position ``i`` takes; ``contains(g)``: whether ``g`` is an
    architecture of the space."""

    choices: tuple[int, ...]

    def contains(self, genotype: Genotype) -> bool: ...


#: rejection attempts before :func:`sample` / :func:`mutate` give up (a space with almost no valid points)
MAX_TRIES = 10_000


def sample(space: CategoricalSpace, rng: np.random.Generator) -> Genotype:
    """A uniformly random valid genotype: draw every position uniformly, reject invalid tuples."""
    for _ in range(MAX_TRIES):
        g = tuple(int(rng.integers(n)) for n in space.choices)
        if space.contains(g):
            return g
    raise ArchlabError(f"no valid genotype in {MAX_TRIES} uniform draws; is the space empty?")


def mutate(space: CategoricalSpace, genotype: Genotype, rng: np.random.Generator) -> Genotype:
    """Real et al. (2019)'s mutation on a categorical encoding: pick one position uniformly and give it
    a different value, uniformly; repeat from ``genotype`` until the result is valid."""
    movable = [i for i, n in enumerate(space.choices) if n > 1]
    if not movable:
        raise ArchlabError("cannot mutate: every position of the space has a single choice")
    for _ in range(MAX_TRIES):
        i = movable[int(rng.integers(len(movable)))]
        value = int(rng.integers(space.choices[i] - 1))
        value += value >= genotype[i]  # skip the current value: a different one, uniformly
        child = genotype[:i] + (value,) + genotype[i + 1:]
        if space.contains(child):
            return child
    raise ArchlabError(f"no valid one-position mutation of {genotype} in {MAX_TRIES} tries")
