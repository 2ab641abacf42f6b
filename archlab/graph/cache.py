"""A one-entry cache for structures derived from a graph (normalized adjacency, CSR layouts, positional
encodings), so full-batch training derives them once instead of every step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor


class AdjacencyCache:
    """Remembers the value built for one set of key tensors (usually ``edge_index``).

    A hit needs the *same tensor objects* (compared with ``is``), unchanged in place (same
    ``_version``) and the same node count. Comparing storage addresses instead would be unsafe: a new
    ``edge_index`` can be allocated where a freed one lived (sampled mini-batches do this every step).
    The cache holds references to its key tensors, so they stay alive while they are the key.
    """

    def __init__(self) -> None:
        self.keys: tuple[Tensor | None, ...] = ()
        self.versions: tuple[int, ...] = ()
        self.num_nodes: int | None = None
        self.value: Any = None

    def get(self, key: Tensor | tuple[Tensor | None, ...], num_nodes: int, build: Callable[[], Any]) -> Any:
        keys = key if isinstance(key, tuple) else (key,)
        versions = tuple(-1 if t is None else t._version for t in keys)
        hit = (num_nodes == self.num_nodes and len(keys) == len(self.keys)
               and all(a is b for a, b in zip(keys, self.keys, strict=True)) and versions == self.versions)
        if not hit:
            self.value = build()
            self.keys, self.versions, self.num_nodes = keys, versions, num_nodes
        return self.value
