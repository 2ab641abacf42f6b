"""Typed configuration: plain dicts (from TOML, JSON or ``--set``) -> validated dataclasses.

Every config in archlab (models, datasets, loops, recipes) is a ``@dataclass``. :func:`build`
turns a dict into one, rejecting unknown keys and wrong types with the key's dotted path and the
allowed values, so that a typo in a recipe fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

from .errors import ArchlabError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ArchlabError(
                f"{path}: {value!r} is not allowed; choose one of {', '.join(repr(a) for a in allowed)}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        present = [o for o in options if o is not type(None)]
        if len(present) == 1:  # Optional[X]: X's own error names the offending key, not the whole table
            return coerce(value, present[0], path)
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, path)
            except ArchlabError:
                continue
        raise ArchlabError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ArchlabError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        items = [coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ArchlabError(f"{path}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ArchlabError(f"{path}: expected a table, got {value!r}")
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        # 2**53: the largest integers JSON and float64 hold exactly; anything bigger is a typo.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > 2**53:
                raise ArchlabError(f"{path}: {value} is too large (at most 2**53 in absolute value)")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ArchlabError(f"{path}: expected a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ArchlabError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def build(cls: type[T], values: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys and wrong types raise ArchlabError."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    unknown = sorted(set(values) - set(fields))
    # A dataclass may name keys that moved elsewhere (``moved_keys = {"old": "new.place"}``, a ClassVar).
    moved = [k for k in unknown if k in getattr(cls, "moved_keys", {})]
    if moved:
        raise ArchlabError(f"{prefix}{moved[0]} has moved to {cls.moved_keys[moved[0]]}")
    if unknown:
        where = path or cls.__name__
        raise ArchlabError(
            f"unknown key {prefix}{unknown[0]} in {where}; allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: coerce(v, hints[k], f"{prefix}{k}") for k, v in values.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # missing required field or __post_init__ check
        raise ArchlabError(f"{path or cls.__name__}: {exc}") from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict of TOML/JSON-friendly values (tuples become lists, None dropped)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if getattr(v, f.name) is not None}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items() if x is not None}
        return v

    return plain(obj)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]
