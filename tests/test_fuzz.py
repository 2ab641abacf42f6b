"""Bad input, generated: every broken recipe or command line gives one line and exit code 2.

Each case starts from a real recipe of a family and breaks one thing: a key (unknown, moved, of the
wrong type), a number (negative, NaN, infinite, absurdly large, out of range), a name (NUL byte,
over-long path), the model (one that does not fit the loop), or the file itself (deep nesting, not
TOML). Only parsing and validation run (``from_dict`` / ``archlab train --help``-cheap paths), so a
few hundred cases take seconds; every loop's ``[loop]`` table is covered through its registered
Config, so a new loop is fuzzed as soon as it exists.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import tomllib
from pathlib import Path

import pytest

from archlab.cli import main
from archlab.engine.loop import LOOPS
from archlab.errors import ArchlabError
from archlab.recipe import from_dict

ROOT = Path(__file__).resolve().parents[1]
BASES = ["classic/mnist1d_mlp", "graph/gcn_cora", "transformers/gpt_shakespeare_char_baby", "rl/ppo_cartpole",
         "generative/toy_gan_ring", "graph/gin_mutag", "transformers/bert_mlm_shakespeare",
         "federated/fedprox_mnist_2nn_dir01", "federated/dpsgd_mnist", "search/darts_mnist1d"]
BAD_NUMBERS = [-1, -1e308, 1e308, math.nan, math.inf, -math.inf, 2**70, "seven", True, [1, 2], {"a": 1}]


def _base(name: str) -> dict:
    return tomllib.loads((ROOT / "recipes" / f"{name}.toml").read_text())


def _numeric_paths(raw: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in raw.items():
        if isinstance(v, dict):
            out += _numeric_paths(v, (*prefix, k))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((*prefix, k))
    return out


def _set(raw: dict, path: tuple, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for p in path[:-1]:
        node = node.setdefault(p, {})
    node[path[-1]] = value
    return raw


def _cases() -> list[tuple[str, dict]]:
    rng = random.Random(0)
    cases: list[tuple[str, dict]] = []
    for base_name in BASES:
        base = _base(base_name)
        for path in _numeric_paths(base):
            if path in {("seed",), ("expect", "tolerance")} or path[0] == "description":
                continue
            for bad in rng.sample(BAD_NUMBERS, 4):
                if path[-1] in ("value",) and isinstance(bad, (int, float)) and math.isfinite(bad) \
                        and not isinstance(bad, bool):
                    continue  # any finite target value is legitimate
                if path[-1] in ("lr", "weight_decay", "grad_clip", "l1", "tolerance", "min_lr_ratio", "gamma",
                                "eps", "dropout") and bad == -1:
                    pass
                cases.append((f"{base_name}:{'.'.join(map(str, path))}={bad!r}", _set(base, path, bad)))
        table = next(t for t in ("model", "algo") if t in base)
        cases.append((f"{base_name}:unknown model key", _set(base, (table, "hiden"), 3)))
        cases.append((f"{base_name}:unknown top key", _set(base, ("modle",), {})))
        cases.append((f"{base_name}:unknown loop key", _set(base, ("loop", "nosuch"), 1)))
        cases.append((f"{base_name}:unknown loop", _set(base, ("train", "loop"), "nosuch")))
        cases.append((f"{base_name}:model not a table", _set(base, (table,), "gpt")))
        cases.append((f"{base_name}:name NUL", _set(base, ("name",), "a\0b")))
        cases.append((f"{base_name}:name long", _set(base, ("name",), "x" * 300)))
        cases.append((f"{base_name}:name slash", _set(base, ("name",), "../x")))
        cases.append((f"{base_name}:seed huge", _set(base, ("seed",), 1180591620717411303424)))
        cases.append((f"{base_name}:seed negative", _set(base, ("seed",), -3)))
        cases.append((f"{base_name}:expect NaN", _set(base, ("expect",), {"metric": "x", "value": math.nan,
                                                                         "source": "s"})))
        cases.append((f"{base_name}:expect metric typo", _set(base, ("expect",), {"metric": "tset_acc", "value": 1,
                                                                                 "source": "s"})))
        cases.append((f"{base_name}:monitor typo", _set(base, ("train", "monitor"), "val_acc_typo")))
        cases.append((f"{base_name}:keep_checkpoints 0", _set(base, ("train", "keep_checkpoints"), 0)))
        cases.append((f"{base_name}:optim name", _set(base, ("optim", "name"), "adamax")))
        cases.append((f"{base_name}:optim unknown trainable", _set(base, ("optim", "critic"), {"lr": 1e-3})))
    # A model that does not fit the loop (family check, before any data is loaded).
    for base_name, wrong in [("classic/mnist1d_mlp", "gcn"), ("classic/mnist1d_mlp", "ppo"),
                             ("graph/gcn_cora", "mlp"), ("graph/gcn_cora", "gpt"), ("rl/ppo_cartpole", "mlp"),
                             ("generative/toy_gan_ring", "mlp")]:
        base = _base(base_name)
        table = next(t for t in ("model", "algo") if t in base)
        cases.append((f"{base_name}:model {wrong}", _set(base, (table,), {"name": wrong})))
    # Keys that moved into a loop's own table.
    cases.append(("moved data.folds", _set(_base("graph/gin_mutag"), ("data", "folds"), 10)))
    cases.append(("moved train.eval_iters", _set(_base("transformers/gpt_shakespeare_char_baby"),
                                                 ("train", "eval_iters"), 5)))
    cases.append(("moved data.seq_len", _set(_base("transformers/bert_mlm_shakespeare"), ("data", "seq_len"), 5)))
    cases.append(("moved train.label_smoothing", _set(_base("classic/mnist1d_mlp"), ("train", "label_smoothing"),
                                                      0.1)))
    # Every registered loop's [loop] keys with wrong types.
    for name in LOOPS.names():
        for f in dataclasses.fields(LOOPS.get(name).obj.Config):
            base = _base("classic/mnist1d_mlp")
            raw = _set(_set(base, ("train", "loop"), name), ("loop", f.name), {"a": {"b": 1}})
            cases.append((f"loop {name}: loop.{f.name} = table", raw))
    return cases


CASES = _cases()


def test_the_fuzz_is_big_enough():
    assert len(CASES) >= 300


@pytest.mark.parametrize("raw", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_recipe_is_one_line(raw):
    with pytest.raises(ArchlabError) as info:
        from_dict(raw, default_name="fuzz")
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 2000


def test_deeply_nested_toml_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 1000 + "]" * 1000 + "\n")
    assert main(["train", str(deep)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("archlab: error:") and "\n" not in err


@pytest.mark.parametrize("argv", [
    ["--seed", "1180591620717411303424"], ["--seed", "-1"], ["--nproc", "64"], ["--nproc", "0"],
    ["--out", "x" * 5000], ["--set", "optim.lr=1e308"], ["--set", "optim.lr=0.1\nx"], ["--set", "model={name='gpt'}"],
    ["--set", "train.threads=100000"], ["--set", "train.accumulate=100000000"],
    ["--set", "data.augment=['shift:1000000']"],
    ["--set", "model.hidden=[0]"], ["--set", "train.monitor='nosuch'"], ["--set", "optim.min_lr_ratio=-1"],
    ["--resume", "--set", "optim.lr=0.1"],
])
def test_bad_command_line_is_one_line(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", str(ROOT / "recipes" / "classic" / "mnist1d_mlp.toml"), "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("archlab: error:") and "\n" not in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
