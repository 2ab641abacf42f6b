"""Recipes: shipped recipes validate; ``--set`` parsing; bad recipes fail with the key path and the allowed values.

``BASE_TOML`` and ``BAD_CASES`` are shared with ``test_cli.py``, which pushes the same table through
``archlab train``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from archlab import recipe as recipe_mod
from archlab.data import dataset_names
from archlab.engine.loop import LOOPS as LOOP_REGISTRY
from archlab.errors import ArchlabError
from archlab.recipe import Recipe, apply_overrides, from_dict, parse_override
from archlab.registry import entries

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/*.toml"))

# A complete, cheap recipe (logistic regression on MNIST-1D); the bad cases below change one thing each.
BASE_TOML = """\
name = "tiny"
description = "test recipe"
seed = 0

[model]
name = "logistic"
num_classes = 10
in_features = 40

[data]
name = "mnist1d"
batch_size = 100

[optim]
name = "adam"
lr = 1e-2

[train]
steps = 20
log_every = 10
threads = 1

[expect]
metric = "test_acc"
value = 0.3
compare = "approx"
tolerance = 0.5
seeds = [0]
source = "test"
"""

MODELS = ", ".join(sorted(e.name for e in entries()))
SUPERVISED_MODELS = ", ".join(e.name for e in entries()
                              if e.family in LOOP_REGISTRY.get("supervised").obj.model_families)
DATASETS = ", ".join(dataset_names())
LOOPS = ", ".join(LOOP_REGISTRY.names())
TRAIN_KEYS = "accumulate, activation_checkpointing, checkpoint_every, checkpoint_minutes, compile, deterministic"


def _drop_table(name: str) -> str:
    """BASE_TOML without the ``[name]`` table."""
    raw = tomllib.loads(BASE_TOML)
    del raw[name]
    return tomli_w.dumps(raw)


# (id, recipe text or None for BASE_TOML, --set overrides, fragments the one-line message must contain).
# "{path}" in a fragment stands for the recipe file.
BAD_CASES: list[tuple[str, str | bytes | None, list[str], list[str]]] = [
    # The allowed tables are the loop's own: a supervised recipe has no [algo] or [env], but a [loop] table.
    ("unknown-table", BASE_TOML + "\n[trian]\nsteps = 3\n", [],
     ["unknown key trian", "allowed keys: data, description, expect, loop, model, name, optim, quick, seed, train, "
                           "tune"]),
    ("unknown-table-set", None, ["trian.steps=3"],
     ["unknown key trian", "allowed keys: data, description, expect, loop, model, name, optim, quick, seed, train, "
                           "tune"]),
    ("unknown-train-key", None, ["train.step=5"], ["unknown key train.step in train", TRAIN_KEYS, "steps"]),
    ("wrong-type-int", None, ["train.steps=many"], ["train.steps: expected int, got 'many'"]),
    ("wrong-type-fraction", None, ["train.steps=2.5"], ["train.steps: expected int, got 2.5"]),
    ("wrong-type-bool", None, ["train.compile=1"], ["train.compile: expected bool, got 1"]),
    ("wrong-type-list", None, ["optim.betas=0.9"], ["optim.betas: expected list of float, got 0.9"]),
    ("wrong-type-item", None, ["optim.milestones=[1, \"x\"]"], ["optim.milestones[1]: expected int, got 'x'"]),
    ("not-a-table", None, ["data=3"], ["data: expected a table, got 3"]),
    ("unknown-model", None, ["model.name=transformer9"],
     ["model.name", "unknown model 'transformer9'; loop 'supervised' trains: " + SUPERVISED_MODELS]),
    ("unknown-model-key", None, ["model.hidden=3"],
     ["unknown key model.hidden in model", "allowed keys: in_features, init, num_classes"]),
    ("model-config-check", None, ["model.in_features=0"], ["model:", "in_features must be >= 1"]),
    ("unknown-dataset", None, ["data.name=cifar11"],
     ["data.name: unknown dataset 'cifar11'", "datasets: " + DATASETS]),
    ("unknown-data-option", None, ["data.options.sed=1"],
     ["unknown key data.options.sed in data.options", "allowed keys:", "num_samples", "seed"]),
    ("wrong-data-option-type", None, ["data.options.num_samples=lots"],
     ["data.options.num_samples: expected int, got 'lots'"]),
    ("bad-augment", None, ["data.augment=[\"twirl\"]"], ["data.augment", "'twirl'", "shift:N", "hflip"]),
    ("bad-precision", None, ["train.precision=fp8"],
     ["train.precision: 'fp8' is not allowed", "'fp32', 'bf16', 'fp16'"]),
    ("bad-device", None, ["train.device=tpu"], ["train.device: 'tpu' is not allowed", "'auto', 'cpu', 'cuda'"]),
    ("bad-optimizer", None, ["optim.name=lbfgs"], ["optim.name: 'lbfgs' is not allowed", "'adamw', 'adam', 'sgd'"]),
    ("unknown-loop", None, ["train.loop=episodic9"], ["train.loop: unknown loop 'episodic9'", "loops: " + LOOPS]),
    ("malformed-no-equals", None, ["optim.lr"], ["malformed --set 'optim.lr'", "KEY=VALUE"]),
    ("malformed-no-key", None, ["=3"], ["malformed --set '=3'", "KEY=VALUE"]),
    ("malformed-empty-part", None, ["a..b=1"], ["malformed --set 'a..b=1'", "KEY=VALUE"]),
    ("malformed-value", None, ["optim.betas=[0.9, 0.99"], ["malformed --set", "is not a TOML value"]),
    ("set-through-scalar", None, ["train.steps.x=3"], ["--set 'train.steps.x=3'", "steps is not a table"]),
    ("missing-model", _drop_table("model"), [], ["no [model] table", "loop 'supervised' needs [model]"]),
    ("missing-train", _drop_table("train"), [], ["no [train] table", "required tables: model, data, train"]),
    ("missing-model-name", None, ["model.name=3"], ["model.name: required string", "archlab list"]),
    ("expect-compare", None, ["expect.compare=about"],
     ["expect.compare: 'about' is not allowed", "'approx', 'min', 'max'"]),
    ("expect-missing-source", BASE_TOML.replace('source = "test"\n', ""), [], ["expect:", "source"]),
    ("expect-no-seeds", None, ["expect.seeds=[]"], ["expect:", "seeds must list at least one seed"]),
    ("no-budget", None, ["train.steps=0"], ["train:", "train.steps or train.epochs"]),
    ("infinite-epochs", None, ["train.steps=0", "train.epochs=inf"],
     ["train.epochs:", "expected a finite number", "inf"]),
    ("log-every-zero", None, ["train.log_every=0"], ["train:", "log_every must be in [1, "]),
    ("negative-threads", None, ["train.threads=-1"], ["train:", "threads must be in [0, 1024]"]),
    ("label-smoothing", None, ["loop.label_smoothing=2"], ["loop:", "label_smoothing must be in [0, 1)"]),
    ("moved-label-smoothing", None, ["train.label_smoothing=0.1"],
     ["train.label_smoothing has moved to loop.label_smoothing"]),
    ("moved-eval-iters", None, ["train.eval_iters=3"], ["train.eval_iters has moved to loop.eval_iters"]),
    ("moved-fold", None, ["data.fold=1"], ["data.fold has moved to loop.fold"]),
    ("unknown-loop-key", None, ["loop.seq_len=3"], ["unknown key loop.seq_len in loop", "label_smoothing"]),
    ("bad-monitor", None, ["train.monitor=val_auc"], ["train.monitor", "does not report 'val_auc'", "val_acc"]),
    ("expect-unreported", None, ["expect.metric=test_auc"],
     ["expect.metric", "does not report 'test_auc'", "test_acc"]),
    ("negative-checkpoint-minutes", None, ["train.checkpoint_minutes=-1"],
     ["train:", "checkpoint_minutes must be in [0, 1e6]"]),
    ("one-beta", None, ["optim.betas=[0.9]"], ["optim:", "betas must be two numbers in [0, 1)"]),
    ("nan-lr", None, ["optim.lr=nan"], ["optim.lr:", "expected a finite number", "nan"]),
    ("step-size-zero", None, ["optim.schedule=step", "optim.step_size=0"], ["optim:", "step_size must be >= 1"]),
    ("batch-size-zero", None, ["data.batch_size=0"], ["data:", "batch sizes must be in [1, "]),
    ("val-fraction", None, ["data.val_fraction=1"], ["data:", "val_fraction must be in [0, 1)"]),
    ("path-in-name", None, ["name=../escape"], ["name '../escape'", "plain, printable file name"]),
    ("invalid-toml", "name = \"tiny\"\n[model\n", [], ["{path}: not valid TOML"]),
    ("not-text", b"\xff\xfe[model]", [], ["{path}: not a text file"]),
]
CASE_IDS = [c[0] for c in BAD_CASES]


def write_recipe(folder: Path, text: str | bytes | None, name: str = "tiny.toml") -> Path:
    """Write ``text`` (BASE_TOML when None; bytes as they are) to ``folder/name``."""
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(BASE_TOML if text is None else text)
    return path


def base_raw() -> dict[str, Any]:
    return tomllib.loads(BASE_TOML)


# ---------------------------------------------------------------- shipped recipes


def test_recipes_are_found() -> None:
    assert len(RECIPES) >= 7
    assert {p.parent.name for p in RECIPES} >= {"classic"}


@pytest.mark.parametrize("path", RECIPES, ids=[f"{p.parent.name}/{p.stem}" for p in RECIPES])
def test_every_recipe_loads_validates_and_round_trips(path: Path) -> None:
    rec = recipe_mod.load(path)
    assert rec.name == path.stem  # the run directory and reproduce reports are named after the file
    assert rec.description
    # Experiments on synthetic data have no published target and say so in their description.
    if rec.expect is None:
        assert "no [expect]" in rec.description.lower() or "no published target" in rec.description.lower()
    else:
        assert rec.expect.source and rec.expect.seeds
        assert rec.expect.metric in rec.loop_class.metrics  # a metric the recipe's loop reports
    assert rec.train.steps > 0 or rec.train.epochs > 0
    assert from_dict(tomllib.loads(rec.to_toml())) == rec


# ---------------------------------------------------------------- --set parsing


@pytest.mark.parametrize(
    "item, parts, value",
    [
        ("optim.lr=0.01", ["optim", "lr"], 0.01),
        ("optim.lr=1e-3", ["optim", "lr"], 1e-3),
        ("train.steps=20", ["train", "steps"], 20),
        ("seed=-3", ["seed"], -3),
        ("train.compile=true", ["train", "compile"], True),
        ("train.compile=false", ["train", "compile"], False),
        ("optim.betas=[0.9, 0.99]", ["optim", "betas"], [0.9, 0.99]),
        ('data.augment=["shift:2", "hflip"]', ["data", "augment"], ["shift:2", "hflip"]),
        ("data.augment=[]", ["data", "augment"], []),
        ("train.loop=supervised", ["train", "loop"], "supervised"),  # bare word -> string
        ("name=my-run_2", ["name"], "my-run_2"),
        ("train.precision=bf16", ["train", "precision"], "bf16"),
        ("data.augment=shift:2", ["data", "augment"], "shift:2"),  # a string, rejected later as not a list
        ('description="two words"', ["description"], "two words"),
        ("data.options.seed=7", ["data", "options", "seed"], 7),
        ("  optim.lr = 0.5  ", ["optim", "lr"], 0.5),
        ("expect.value=inf", ["expect", "value"], float("inf")),
    ],
)
def test_parse_override(item: str, parts: list[str], value: Any) -> None:
    got_parts, got_value = parse_override(item)
    assert got_parts == parts
    assert got_value == value and type(got_value) is type(value)


@pytest.mark.parametrize("item", ["optim.lr", "=3", " =3", "a..b=1", ".a=1", "a.=1", "x=", "x=[1, 2", "x=a=b",
                                  'x="open'])
def test_malformed_override(item: str) -> None:
    with pytest.raises(ArchlabError, match=r"^malformed --set .*(KEY=VALUE|is not a TOML value)"):
        parse_override(item)


def test_apply_overrides_sets_nested_keys_without_touching_the_input() -> None:
    raw = base_raw()
    out = apply_overrides(raw, ["train.steps=5", "data.options.seed=3", "optim.betas=[0.8, 0.9]", "seed=4"])
    assert out["train"]["steps"] == 5 and out["data"]["options"] == {"seed": 3}
    assert out["optim"]["betas"] == [0.8, 0.9] and out["seed"] == 4
    assert raw == base_raw()  # deep copy: the file's dict is unchanged
    # later overrides win
    assert apply_overrides(raw, ["train.steps=5", "train.steps=6"])["train"]["steps"] == 6


def test_overrides_reach_the_validated_recipe(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, None)
    rec = recipe_mod.load(path, ["train.steps=7", "optim.lr=1", "data.augment=[\"shift:1\"]",
                                 "data.options.num_samples=1000", "model.init=default", "expect.tolerance=0"])
    assert rec.train.steps == 7
    assert rec.optim["model"].lr == 1.0 and isinstance(rec.optim["model"].lr, float)  # int -> float, like in the file
    assert rec.data.augment == ["shift:1"]
    assert rec.data.options == {"num_samples": 1000}
    assert rec.model_config == {"num_classes": 10, "in_features": 40, "init": "default"}
    assert rec.expect is not None and rec.expect.tolerance == 0.0


@pytest.mark.parametrize(
    "key, value",
    [("train.steps", "many"), ("train.precision", "fp8"), ("optim.lr", [1]), ("model.hidden", 3),
     ("data.options.sed", 1), ("expect.compare", "about"), ("train.bogus", True), ("optim.betas", [0.9])],
)
def test_overrides_are_validated_like_the_file(tmp_path: Path, key: str, value: Any) -> None:
    raw = base_raw()
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    in_file = write_recipe(tmp_path, tomli_w.dumps(raw), "edited.toml")
    with pytest.raises(ArchlabError) as from_file:
        recipe_mod.load(in_file)
    with pytest.raises(ArchlabError) as from_set:
        recipe_mod.load(write_recipe(tmp_path, None), [f"{key}={json.dumps(value)}"])
    assert str(from_set.value) == str(from_file.value)


# ---------------------------------------------------------------- bad recipes


@pytest.mark.parametrize("case_id, text, overrides, fragments", BAD_CASES, ids=CASE_IDS)
def test_bad_recipe_names_key_and_allowed_values(tmp_path: Path, case_id: str, text: str | bytes | None,
                                                 overrides: list[str], fragments: list[str]) -> None:
    path = write_recipe(tmp_path, text)
    with pytest.raises(ArchlabError) as info:
        recipe_mod.load(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment.replace("{path}", str(path)) in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ArchlabError, match="^recipe file not found: .*nope.toml$"):
        recipe_mod.load(tmp_path / "nope.toml")
    with pytest.raises(ArchlabError, match="^recipe file not found"):
        recipe_mod.load(tmp_path)  # a folder is not a recipe


def test_base_recipe_is_valid(tmp_path: Path) -> None:
    """The bad cases differ from this one by one key, so the failures above are theirs."""
    rec = recipe_mod.load(write_recipe(tmp_path, None))
    assert rec.name == "tiny" and rec.model_name == "logistic" and rec.data.name == "mnist1d"


# ---------------------------------------------------------------- defaults and serialisation


def test_defaults_and_file_stem_name(tmp_path: Path) -> None:
    raw = base_raw()
    del raw["name"], raw["expect"], raw["optim"], raw["seed"]
    rec = recipe_mod.load(write_recipe(tmp_path, tomli_w.dumps(raw), "stem_name.toml"))
    assert rec.name == "stem_name"
    assert rec.expect is None and rec.seed == 0
    assert rec.optim["model"].name == "adamw" and rec.train.precision == "fp32" and rec.data.batch_size == 100


def test_to_toml_round_trips_through_from_dict(tmp_path: Path) -> None:
    rec = recipe_mod.load(write_recipe(tmp_path, None), ["data.options.seed=5", "optim.betas=[0.8, 0.9]",
                                                          "data.augment=[\"shift:1\"]", "seed=3"])
    text = rec.to_toml()
    again = from_dict(tomllib.loads(text))
    assert isinstance(again, Recipe) and again == rec
    assert again.to_toml() == text
    # None values are dropped (TOML has no null), and a recipe without [expect] stays without one.
    no_expect = from_dict({k: v for k, v in tomllib.loads(text).items() if k != "expect"})
    assert "expect" not in tomllib.loads(no_expect.to_toml())
    assert from_dict(tomllib.loads(no_expect.to_toml())) == no_expect


def test_expect_met_and_describe() -> None:
    raw = base_raw()
    exp = from_dict(raw).expect
    assert exp is not None
    assert exp.met(0.3) and exp.met(0.8) and not exp.met(0.81)
    assert exp.describe() == "0.3 ± 0.5"
    raw["expect"].update(compare="min", value=0.9)
    exp = from_dict(raw).expect
    assert exp is not None and exp.met(0.9) and not exp.met(0.89) and exp.describe() == "≥ 0.9"
    raw["expect"].update(compare="max", value=0.1)
    exp = from_dict(raw).expect
    assert exp is not None and exp.met(0.1) and not exp.met(0.11) and exp.describe() == "≤ 0.1"
