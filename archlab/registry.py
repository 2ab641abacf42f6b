"""Name -> builder registry for models (and, later, algorithms).

A model class registers itself with ``@register("mlp", family="classic")``. The class must have a
``config_class`` (a dataclass) and take an instance of it as its only constructor argument;
:func:`create` validates overrides against that dataclass, so ``create("mlp", hiden=3)`` fails with
the list of allowed keys instead of a ``TypeError`` deep inside ``__init__``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import config as _config
from .errors import ArchlabError


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    cls: type
    description: str

    @property
    def config_class(self) -> type:
        return self.cls.config_class


_REGISTRY: dict[str, Entry] = {}


def _first_line(doc: str | None) -> str:
    """The docstring's first sentence, without reST markup, at most 110 characters (for ``archlab list``)."""
    paragraph = " ".join(line.strip() for line in (doc or "").strip().split("\n\n")[0].splitlines())
    paragraph = re.sub(r":\w+:`([^`]*)`", r"\1", paragraph).replace("``", "")
    # A sentence ends at ". " or ";" -- but not after "et al." or "e.g.".
    match = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.(\s|$)|;", paragraph)
    sentence = paragraph[:match.start() + 1].rstrip(";") if match else paragraph
    return sentence if len(sentence) <= 110 else sentence[:109].rstrip() + "…"


def register(name: str, family: str, description: str | None = None) -> Callable[[type], type]:
    """Class decorator: make ``cls`` buildable as ``archlab.create(name)``."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"model name {name!r} is registered twice")
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__} needs a dataclass `config_class` to be registered")
        _REGISTRY[name] = Entry(name, family, cls, description or _first_line(cls.__doc__))
        cls.registry_name = name
        return cls

    return deco


def _ensure_loaded() -> None:
    # Importing the model packages runs their @register decorators.
    from . import models  # noqa: F401


def get(name: str) -> Entry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ArchlabError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def entries(family: str | None = None) -> list[Entry]:
    """Registered entries, sorted by family then name; ``family`` filters (unknown family -> error)."""
    _ensure_loaded()
    items = sorted(_REGISTRY.values(), key=lambda e: (e.family, e.name))
    if family is None:
        return items
    families = sorted({e.family for e in items})
    if family not in families:
        raise ArchlabError(f"unknown family {family!r}; families: {', '.join(families)}")
    return [e for e in items if e.family == family]


def build_config(name: str, values: dict[str, Any] | None = None, path: str = "model") -> Any:
    """Validate ``values`` against the config dataclass of model ``name``."""
    return _config.build(get(name).config_class, values or {}, path)


def create(name: str, **overrides: Any) -> Any:
    """Build registered model ``name`` with config ``overrides`` (validated)."""
    cfg = build_config(name, overrides)
    return get(name).cls(cfg)
