"""``archlab.config``: plain dicts -> validated dataclasses, with errors that name the key and the allowed values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from archlab.config import build, coerce, field_names, to_dict
from archlab.errors import ArchlabError


@dataclass
class Inner:
    width: int = 4
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    rate: float = 0.5
    count: int = 1
    flag: bool = False
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    pair: tuple[int, int] = (0, 1)
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    anything: Any = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")


# ---------------------------------------------------------------- coerce: scalars


def test_int_to_float_is_accepted_and_converted() -> None:
    value = coerce(3, float, "x")
    assert value == 3.0 and type(value) is float


@pytest.mark.parametrize("value", [2.0, -7.0, 1e3])
def test_integral_float_to_int_is_accepted(value: float) -> None:
    out = coerce(value, int, "x")
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [2.5, float("nan"), float("inf"), "3", None])
def test_non_integral_or_non_number_to_int_is_rejected(value: Any) -> None:
    with pytest.raises(ArchlabError, match=r"^a\.b: expected int, got"):
        coerce(value, int, "a.b")


@pytest.mark.parametrize("value, tp", [(True, int), (False, int), (True, float), (1, bool), (0, bool), ("true", bool)])
def test_bool_and_numbers_do_not_mix(value: Any, tp: type) -> None:
    with pytest.raises(ArchlabError, match=rf"^k: expected {tp.__name__}, got {value!r}$"):
        coerce(value, tp, "k")


def test_bool_str_any_pass_through() -> None:
    assert coerce(True, bool, "k") is True
    assert coerce("x", str, "k") == "x"
    obj = object()
    assert coerce(obj, Any, "k") is obj
    with pytest.raises(ArchlabError, match="expected str, got 3"):
        coerce(3, str, "k")


# ---------------------------------------------------------------- coerce: Literal, containers, unions


def test_literal_error_lists_allowed_values() -> None:
    tp = Literal["fp32", "bf16", "fp16"]
    assert coerce("bf16", tp, "train.precision") == "bf16"
    with pytest.raises(ArchlabError) as info:
        coerce("fp8", tp, "train.precision")
    msg = str(info.value)
    assert msg.startswith("train.precision: 'fp8' is not allowed")
    for allowed in ("'fp32'", "'bf16'", "'fp16'"):
        assert allowed in msg


def test_list_items_are_checked_with_their_index_in_the_path() -> None:
    assert coerce([1, 2.0], list[int], "m.sizes") == [1, 2]
    assert coerce([1, 2], list[float], "m.betas") == [1.0, 2.0]
    assert all(type(v) is float for v in coerce([1, 2], list[float], "m.betas"))
    with pytest.raises(ArchlabError, match=r"^m\.sizes\[1\]: expected int, got 'x'$"):
        coerce([1, "x"], list[int], "m.sizes")
    with pytest.raises(ArchlabError, match=r"^m\.sizes: expected list of int, got 3$"):
        coerce(3, list[int], "m.sizes")


def test_tuple_annotation_accepts_lists_and_returns_a_tuple() -> None:
    assert coerce([3, 4], tuple[int, int], "p") == (3, 4)
    with pytest.raises(ArchlabError, match="p: expected list of int"):
        coerce("34", tuple[int, int], "p")


def test_dict_annotation_needs_a_table() -> None:
    assert coerce({"a": 1}, dict[str, Any], "d") == {"a": 1}
    with pytest.raises(ArchlabError, match="^d: expected a table, got 1$"):
        coerce(1, dict[str, Any], "d")


def test_optional_accepts_none_and_the_inner_type() -> None:
    assert coerce(None, int | None, "lim") is None
    assert coerce(5.0, int | None, "lim") == 5
    with pytest.raises(ArchlabError, match=r"^lim: expected int, got 'x'$"):
        coerce("x", int | None, "lim")


def test_optional_dataclass_reports_the_inner_key_not_the_whole_table() -> None:
    # Optional[Inner]: the error must point at maybe.mode and list its values, not dump the table.
    with pytest.raises(ArchlabError) as info:
        coerce({"mode": "z"}, Inner | None, "maybe")
    assert str(info.value) == "maybe.mode: 'z' is not allowed; choose one of 'a', 'b'"


def test_union_of_several_types_tries_each() -> None:
    assert coerce("s", int | str, "u") == "s"
    assert coerce(2, int | str, "u") == 2
    with pytest.raises(ArchlabError, match=r"^u: expected int \| str, got 1\.5$"):
        coerce(1.5, int | str, "u")


# ---------------------------------------------------------------- build


def test_build_converts_and_fills_defaults() -> None:
    obj = build(Outer, {"name": "n", "rate": 1, "count": 3.0, "sizes": [4], "pair": [5, 6],
                        "inner": {"width": 8.0, "mode": "b"}, "maybe": {"width": 2}, "limit": 7})
    assert obj.rate == 1.0 and type(obj.rate) is float
    assert obj.count == 3 and type(obj.count) is int
    assert obj.sizes == [4] and obj.pair == (5, 6)
    assert obj.inner == Inner(width=8, mode="b")
    assert obj.maybe == Inner(width=2)
    assert obj.limit == 7 and obj.flag is False


def test_build_accepts_an_existing_nested_instance() -> None:
    inner = Inner(width=3)
    assert build(Outer, {"name": "n", "inner": inner}).inner is inner


def test_unknown_top_level_key_lists_allowed_keys() -> None:
    with pytest.raises(ArchlabError) as info:
        build(Outer, {"name": "n", "rte": 1})
    msg = str(info.value)
    assert msg.startswith("unknown key rte in Outer; allowed keys: ")
    assert msg.endswith(", ".join(sorted(field_names(Outer))))


def test_unknown_nested_key_has_the_dotted_path_and_allowed_keys() -> None:
    with pytest.raises(ArchlabError) as info:
        build(Outer, {"name": "n", "inner": {"widht": 3}}, "cfg")
    assert str(info.value) == "unknown key cfg.inner.widht in cfg.inner; allowed keys: mode, width"


def test_wrong_type_in_nested_dataclass_names_the_dotted_path() -> None:
    with pytest.raises(ArchlabError, match=r"^cfg\.inner\.width: expected int, got 2\.5$"):
        build(Outer, {"name": "n", "inner": {"width": 2.5}}, "cfg")
    with pytest.raises(ArchlabError, match=r"^cfg\.inner: expected a table, got 3$"):
        build(Outer, {"name": "n", "inner": 3}, "cfg")


def test_missing_required_field_and_post_init_are_archlab_errors() -> None:
    with pytest.raises(ArchlabError, match=r"^cfg: .*name"):
        build(Outer, {}, "cfg")
    with pytest.raises(ArchlabError, match=r"^cfg: count must be >= 0$"):
        build(Outer, {"name": "n", "count": -1}, "cfg")
    with pytest.raises(ArchlabError, match=r"^Outer: count must be >= 0$"):
        build(Outer, {"name": "n", "count": -1})


def test_build_of_none_uses_defaults() -> None:
    assert build(Inner, None) == Inner()


def test_to_dict_is_plain_and_round_trips_through_build() -> None:
    obj = build(Outer, {"name": "n", "pair": [2, 3], "inner": {"mode": "b"}, "extra": {"k": None, "j": 1}})
    plain = to_dict(obj)
    assert plain["pair"] == [2, 3]  # tuples become lists
    assert "maybe" not in plain and "limit" not in plain  # None is dropped (TOML has no null)
    assert plain["extra"] == {"j": 1}
    assert plain["inner"] == {"width": 4, "mode": "b"}
    assert build(Outer, plain) == dataclasses.replace(obj, extra={"j": 1})
