"""Event-stream datasets (continuous-time dynamic graphs) for the ``temporal`` loop.

    from archlab.data.events import load_event_dataset
    ds = load_event_dataset("synthetic_events", {"num_nodes": 500, "num_events": 20000})
    ds.stream                      # EventStream: src, dst, t, edge_feat, sorted by time
    ds.num_nodes, ds.edge_dim      # 500, 4

Registered here: ``synthetic_events`` (generated, see :func:`archlab.graph.temporal.synthetic_event_stream`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import config as _config
from ..errors import ArchlabError
from ..graph.temporal import EventStream, synthetic_event_stream
from .download import data_root
from .registry import get_entry, register_dataset


@dataclass
class EventDataset:
    """One event stream and what a model needs to know about it."""

    name: str
    stream: EventStream
    info: dict = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return self.stream.num_nodes

    @property
    def edge_dim(self) -> int:
        return self.stream.edge_dim


_CACHE: dict[tuple, EventDataset] = {}


def load_event_dataset(name: str, options: dict | None = None) -> EventDataset:
    """Load event dataset ``name`` with its ``options`` (validated); returns fresh copies each call."""
    entry = get_entry(name)
    if entry.kind != "temporal":
        raise ArchlabError(f"dataset {name!r} is not an event stream (kind {entry.kind!r}); the temporal loop "
                           "needs one such as synthetic_events")
    cfg = _config.build(entry.config_class, options or {}, "data.options")
    key = (name, str(data_root()), cfg)
    if key not in _CACHE:
        _CACHE[key] = entry.loader(cfg)
    ds = _CACHE[key]
    s = ds.stream
    stream = EventStream(s.src.clone(), s.dst.clone(), s.t.clone(), s.edge_feat.clone(), s.num_nodes)
    return EventDataset(ds.name, stream, dict(ds.info))


@dataclass(frozen=True)
class SyntheticEventsConfig:
    """Options of :func:`archlab.graph.temporal.synthetic_event_stream` (see there for the process)."""

    num_nodes: int = 500
    num_events: int = 20000
    num_communities: int = 5
    p_repeat: float = 0.5
    """Probability that an event repeats one of the source's ``recency`` latest partners."""
    p_community: float = 0.8
    """Otherwise: probability that the destination is in the source's community."""
    recency: int = 3
    period: float = 2000.0
    """Period of the communities' activity cycle, in time units (one event per unit on average)."""
    amplitude: float = 0.8
    edge_dim: int = 4
    feature_noise: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_events < 10 or self.recency < 1 or self.edge_dim < 0 or self.period <= 0:
            raise ValueError("need num_events >= 10, recency >= 1, edge_dim >= 0 and period > 0")
        if not (0 <= self.p_repeat <= 1 and 0 <= self.p_community <= 1 and 0 <= self.amplitude <= 1):
            raise ValueError("p_repeat, p_community and amplitude must be in [0, 1]")
        if self.num_communities < 1 or self.num_nodes < 2 * self.num_communities:
            raise ValueError("need num_communities >= 1 and at least two nodes per community")


@register_dataset("synthetic_events", SyntheticEventsConfig, num_classes=0, kind="temporal")
def _load_synthetic(cfg: SyntheticEventsConfig) -> EventDataset:
    stream = synthetic_event_stream(cfg.num_nodes, cfg.num_events, cfg.num_communities, cfg.p_repeat,
                                    cfg.p_community, cfg.recency, cfg.period, cfg.amplitude, cfg.edge_dim,
                                    cfg.feature_noise, cfg.seed)
    return EventDataset("synthetic_events", stream)
