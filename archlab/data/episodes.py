"""Few-shot data: class-indexed splits and a seeded N-way K-shot episode sampler.

A few-shot dataset (``kind = "episodes"`` in the data registry) is a :class:`FewShotData`: three
splits whose *classes* are disjoint (Omniglot: different alphabets), each a :class:`Split` with
``y`` the class id within that split, plus optional fixed episodes (Lake's 20 one-shot runs).

An episode (Vinyals et al. 2016, Sec. 4; Snell et al. 2017, Sec. 2.2) draws ``ways`` classes of a
split without replacement, then ``shots + queries`` distinct examples of each class: the first
``shots`` form the support set, the rest the query set. Labels are relabelled ``0..ways-1`` in the
order the classes were drawn, so a learner cannot memorise class ids across episodes.

Shapes of an :class:`Episode`: support_x ``(ways * shots, *input_shape)``, support_y ``(ways * shots,)``,
query_x ``(Q_total, *input_shape)``, query_y ``(Q_total,)``, examples grouped class by class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ArchlabError
from .registry import Split


@dataclass
class Episode:
    """One few-shot task: a labelled support set and the queries to classify."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def ways(self) -> int:
        return int(self.support_y.max()) + 1

    def to(self, device: torch.device) -> Episode:
        return Episode(*(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y)))


@dataclass
class FewShotData:
    """Splits with disjoint classes, and fixed evaluation episodes where the dataset defines them."""

    name: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    fixed_episodes: list[Episode] = field(default_factory=list)
    """Episodes fixed by the dataset (Lake's one-shot runs); empty when episodes are sampled."""

    def classes(self, split: str) -> int:
        y = getattr(self, split).y
        return int(y.max()) + 1 if len(y) else 0


class EpisodeSampler:
    """Seeded N-way K-shot episodes from one split; ``state_dict`` makes resume exact."""

    def __init__(self, split: Split, ways: int, shots: int, queries: int, seed: int, what: str = "split") -> None:
        self.x, self.ways, self.shots, self.queries = split.x, ways, shots, queries
        y = split.y
        classes = int(y.max()) + 1 if len(y) else 0
        # Class -> indices of its examples, in dataset order.
        self.members = [torch.nonzero(y == c).flatten() for c in range(classes)]
        if classes < ways:
            raise ArchlabError(f"loop.ways: {ways}-way episodes need {ways} classes, the {what} has {classes}")
        fewest = min(len(m) for m in self.members)
        if fewest < shots + queries:
            raise ArchlabError(f"loop.shots + loop.queries = {shots + queries} examples per class, but a class "
                               f"of the {what} has only {fewest}")
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self) -> Episode:
        n, k, q = self.ways, self.shots, self.queries
        chosen = torch.randperm(len(self.members), generator=self.gen)[:n]
        support, query = [], []
        for c in chosen.tolist():
            members = self.members[c]
            pick = members[torch.randperm(len(members), generator=self.gen)[: k + q]]
            support.append(pick[:k])
            query.append(pick[k:])
        s_idx, q_idx = torch.cat(support), torch.cat(query)
        labels = torch.arange(n)
        return Episode(self.x[s_idx], labels.repeat_interleave(k), self.x[q_idx], labels.repeat_interleave(q))

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])


def load_fewshot(name: str, options: dict[str, Any] | None = None) -> FewShotData:
    """Few-shot dataset ``name`` (a dataset of kind ``episodes``) with its validated ``options``."""
    from .. import config as _config
    from .registry import get_entry

    entry = get_entry(name)
    if entry.kind != "episodes":
        raise ArchlabError(f"dataset {name!r} is of kind {entry.kind!r}, not a few-shot (episodes) dataset")
    return entry.loader(_config.build(entry.config_class, options or {}, "data.options"))
