"""One small registry idea for everything archlab builds by name: models and RL algorithms, training
loops, datasets.

A :class:`Registry` maps a name to an object (a class, or a dataset's loader entry) with a family and
a one-line description. Its contents come from modules that register themselves on import
(``@MODELS.register("mlp", family="classic")``); the registry imports them, by dotted name, the first
time it is asked, so ``import archlab`` stays cheap and no module here imports the model packages.

Models and RL algorithms share :data:`MODELS`: both are "what a run trains", both are built with
:func:`create` (a model from its config keys, an algorithm from its hyperparameters plus ``env=``),
and both are saved as ``config.json`` (``kind``, ``name``, ``config``) + ``model.safetensors``, read
back by :func:`archlab.load`. A registered class has a dataclass ``config_class`` and a classmethod
``create(**overrides)`` that validates its keys before building anything.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import config as _config
from .errors import ArchlabError

T = TypeVar("T")


def first_line(doc: str | None) -> str:
    """A docstring's first sentence, without reST markup, at most 110 characters (for ``archlab list``)."""
    paragraph = " ".join(line.strip() for line in (doc or "").strip().split("\n\n")[0].splitlines())
    paragraph = re.sub(r":\w+:`([^`]*)`", r"\1", paragraph).replace("``", "")
    # A sentence ends at ". " or ";" -- but not after "et al." or "e.g.", nor inside parentheses.
    ends = (m for m in re.finditer(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.(\s|$)|;", paragraph)
            if paragraph.count("(", 0, m.start()) <= paragraph.count(")", 0, m.start()))
    match = next(ends, None)
    sentence = paragraph[:match.start() + 1].rstrip(";") if match else paragraph
    return sentence if len(sentence) <= 110 else sentence[:109].rstrip() + "…"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    family: str
    obj: T
    description: str

    @property
    def cls(self) -> T:  # the common case: the registered object is a class
        return self.obj

    @property
    def config_class(self) -> type:
        return self.obj.config_class  # type: ignore[attr-defined]


class Registry(Generic[T]):
    """Name -> object for one kind of thing; ``modules`` are imported on first use to fill it."""

    def __init__(self, kind: str, modules: Iterable[str] = ()) -> None:
        self.kind = kind
        self._modules = tuple(modules)
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def add(self, name: str, obj: T, family: str = "", description: str | None = None) -> T:
        if name in self._entries and self._entries[name].obj != obj:
            raise ValueError(f"{self.kind} name {name!r} is registered twice")
        self._entries[name] = Entry(name, family, obj, description if description is not None
                                    else first_line(getattr(obj, "__doc__", None)))
        return obj

    def register(self, name: str, family: str = "", description: str | None = None) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda obj: self.add(name, obj, family, description)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:  # an optional extra is missing: its entries are simply absent
                if exc.name is None or exc.name.startswith("archlab"):
                    raise

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> Entry[T]:
        self._load()
        if name not in self._entries:
            raise ArchlabError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self, family: str | None = None) -> list[Entry[T]]:
        """Entries sorted by family then name; ``family`` filters (an unknown family is an error)."""
        self._load()
        items = sorted(self._entries.values(), key=lambda e: (e.family, e.name))
        if family is None:
            return items
        families = sorted({e.family for e in items})
        if family not in families:
            raise ArchlabError(f"unknown family {family!r}; families: {', '.join(families)}")
        return [e for e in items if e.family == family]


# Models and RL algorithms (what a run trains). RL algorithms need gymnasium: without it they are absent.
# archlab.compress registers the compressed networks (a structurally pruned net is a narrower copy of its base).
MODELS: Registry[type] = Registry("model", ("archlab.models", "archlab.rl.algorithms", "archlab.meta",
                                             "archlab.compress"))


def register(name: str, family: str, description: str | None = None) -> Callable[[type], type]:
    """Class decorator: make ``cls`` buildable as ``archlab.create(name)``."""

    def deco(cls: type) -> type:
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__} needs a dataclass `config_class` to be registered")
        MODELS.add(name, cls, family, description)
        cls.registry_name = name
        return cls

    return deco


def get(name: str) -> Entry[type]:
    return MODELS.get(name)


def entries(family: str | None = None) -> list[Entry[type]]:
    return MODELS.entries(family)


def build_config(name: str, values: dict[str, Any] | None = None, path: str = "model") -> Any:
    """Validate ``values`` against the config dataclass of model ``name``."""
    return _config.build(get(name).config_class, values or {}, path)


def create(name: str, **overrides: Any) -> Any:
    """Build registered model or algorithm ``name`` with config ``overrides`` (validated).
    Algorithms also take ``env=`` (a gymnasium id) and ``seed=``."""
    return get(name).cls.create(**overrides)


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def read_saved(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a saved model or agent: ``{"kind", "name", "config", ...}``. Files written
    before ``kind`` existed (``{"model": ...}`` or ``{"algo": ...}``) are read too."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ArchlabError(f"{directory} is not a saved model: {CONFIG_FILE} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchlabError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(meta, dict) and "name" not in meta:
        for old_key, kind in (("model", "model"), ("algo", "agent")):
            if isinstance(meta.get(old_key), str):
                meta = {**meta, "kind": kind, "name": meta[old_key]}
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or "config" not in meta:
        raise ArchlabError(f"{path} does not describe an archlab model (keys 'kind', 'name' and 'config' needed)")
    return meta


def load(directory: str | os.PathLike, map_location: str = "cpu") -> Any:
    """The model or RL agent saved in ``directory`` by ``save_pretrained`` -- or the final one of a
    run directory, whatever its family."""
    meta = read_saved(directory)
    return get(meta["name"]).cls.from_pretrained(directory, map_location)
