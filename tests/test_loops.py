"""The loop contract: every registered loop declares its tables and hooks; the two-optimizer GAN loop
trains, checkpoints and resumes bit-exactly; archlab.load / archlab eval work on a run directory of
every family; the layers of the package import one way only."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import archlab
from archlab.engine.loop import LOOPS, Loop
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import evaluate, train

GAN = {
    "name": "gan_tiny", "seed": 0,
    "model": {"name": "toy_gan", "latent_dim": 4, "hidden": 16},
    "data": {"name": "ring", "batch_size": 64, "val_fraction": 0.0, "options": {"train_size": 640, "test_size": 64}},
    "optim": {"name": "adam", "generator": {"lr": 1e-3}, "discriminator": {"lr": 3e-4, "betas": [0.5, 0.9]}},
    "train": {"loop": "gan", "steps": 12, "eval_every": 4, "log_every": 2, "checkpoint_every": 4},
    "loop": {"n_critic": 2, "eval_samples": 200},
}


def _quiet(raw: dict, out: Path, **kw) -> dict:
    return train(from_dict(raw), out=out, progress=False, log=lambda _m: None, **kw)


@pytest.mark.parametrize("name", LOOPS.names())
def test_every_loop_declares_its_contract(name):
    cls = LOOPS.get(name).obj
    assert issubclass(cls, Loop) and cls.name == name
    assert dataclasses.is_dataclass(cls.Config)
    assert cls.metrics and cls.monitor[0] in cls.metrics and cls.monitor[1] in ("max", "min")
    assert LOOPS.get(name).description, "a one-line description for `archlab list loops`"
    # Every hook the runner or driver calls exists on the base class: nothing is probed with hasattr.
    for hook in ("load_data", "model_defaults", "build_model", "check_fit", "train_step", "evaluate",
                 "final_metrics", "state_dict", "load_state_dict", "best_state", "load_best", "final_object",
                 "write_artifacts", "close", "evaluate_run", "finished", "trainable"):
        assert hasattr(Loop, hook)


HOOKS = {name for name, value in vars(Loop).items() if not name.startswith("__")}


def test_no_hook_probing_between_runner_driver_and_loops():
    for path in ("archlab/runner.py", "archlab/engine/driver.py", "archlab/cli.py", "archlab/recipe.py",
                 "archlab/reproduce.py"):
        tree = ast.parse((Path(__file__).parents[1] / path).read_text())
        probes = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                  and n.func.id in ("hasattr", "getattr") and len(n.args) >= 2
                  and (not isinstance(n.args[1], ast.Constant) or n.args[1].value in HOOKS)]
        assert not probes, f"{path} probes loop attributes at lines {probes}"


def test_named_optimizers_get_their_own_settings():
    rec = from_dict(GAN)
    g, d = rec.optim["generator"], rec.optim["discriminator"]
    assert (g.name, g.lr, g.betas) == ("adam", 1e-3, [0.9, 0.999])
    assert (d.name, d.lr, d.betas) == ("adam", 3e-4, [0.5, 0.9])
    assert from_dict(rec.to_dict()).optim == rec.optim  # the resolved recipe round-trips
    with pytest.raises(ArchlabError, match="optim.critic: loop 'gan' has no optimizer 'critic'; its optimizers: "
                                           "generator, discriminator"):
        from_dict({**GAN, "optim": {"critic": {"lr": 1e-3}}})
    with pytest.raises(ArchlabError, match=r"optim.generator.lr must be a number in \[0, 100\]|optim.generator"):
        from_dict({**GAN, "optim": {"generator": {"lr": -1.0}}})


def test_loop_table_is_validated_and_old_keys_name_their_new_place():
    with pytest.raises(ArchlabError, match="unknown key loop.n_critics in loop; allowed keys: eval_samples, "
                                           "n_critic, quality_std"):
        from_dict({**GAN, "loop": {"n_critics": 5}})
    mutag = {"model": {"name": "gin"}, "data": {"name": "mutag", "folds": 10}, "train": {"loop": "graph", "epochs": 1}}
    with pytest.raises(ArchlabError, match=r"^data.folds has moved to loop.folds \(graph loop\)$"):
        from_dict(mutag)


def test_gan_trains_both_networks_and_resumes_exactly(tmp_path, assert_resume_exact):
    summary = _quiet(GAN, tmp_path / "run")
    assert summary["steps"] == 12 and set(summary["metrics"]) >= {"test_modes", "test_quality"}
    model = archlab.load(tmp_path / "run")
    fresh = archlab.create("toy_gan", latent_dim=4, hidden=16)
    for part in ("generator", "discriminator"):  # both trainables moved away from their initialization
        moved = [not torch.equal(a, b) for a, b in zip(getattr(model, part).parameters(),
                                                         getattr(fresh, part).parameters(), strict=True)]
        assert all(moved)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("d_loss" in r and "loss" in r for r in logged if r["split"] == "train")
    assert_resume_exact(GAN)


def test_gan_model_must_fit_the_data(tmp_path):
    with pytest.raises(ArchlabError, match="model.data_dim: 'toy_gan' makes points of dimension 3"):
        _quiet({**GAN, "model": {**GAN["model"], "data_dim": 3}}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_model_that_cannot_take_the_examples_is_one_line(tmp_path, tiny_digits):
    # check_fit's shared probe (archlab.engine.loop.probe_forward): the first line of the error, nothing written
    with pytest.raises(ArchlabError, match=r"^model 'mlp' does not fit 'digits' \(examples of shape \(1, 8, 8\)\): "
                                           r"mat1 and mat2 shapes cannot be multiplied"):
        _quiet(tiny_digits(model={"in_features": 10}), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


FAMILIES = {
    "classic": {"model": {"name": "mlp", "in_features": 40, "hidden": [16]},
                "data": {"name": "mnist1d", "batch_size": 64, "options": {"num_samples": 600}},
                "train": {"steps": 3}},
    "graph": {"model": {"name": "gcn", "hidden_channels": 8},
              "data": {"name": "sbm", "options": {"num_nodes": 120}},
              "train": {"loop": "node", "steps": 3}},
    "transformers": {"model": {"name": "gpt", "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16},
                     "data": {"name": "text_toy", "batch_size": 4},
                     "train": {"loop": "lm", "steps": 3}, "loop": {"eval_iters": 2}},
    "generative": GAN,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_load_and_eval_work_on_every_family(family, tmp_path):
    raw = FAMILIES[family]
    summary = _quiet(raw, tmp_path / "run")
    obj = archlab.load(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["kind"] == "model"
    assert type(obj).registry_name == raw["model"]["name"]
    again = evaluate(tmp_path / "run", device="cpu")
    for key, value in again.items():  # the saved model gives the run's own final numbers
        if key in summary["metrics"] and not key.startswith(("train_", "best_")):
            assert value == pytest.approx(summary["metrics"][key], rel=1e-5, abs=1e-6), key


def test_load_and_eval_work_on_an_rl_run(tmp_path):
    pytest.importorskip("gymnasium")
    raw = {"algo": {"name": "qlearning"}, "env": {"id": "FrozenLake-v1", "eval_episodes": 5},
           "train": {"loop": "rl", "steps": 200, "eval_every": 100}}
    summary = _quiet(raw, tmp_path / "run")
    agent = archlab.load(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["kind"] == "agent"
    assert agent.algo == "qlearning" and int(agent.predict(0)) in range(4)
    again = evaluate(tmp_path / "run", device="cpu")
    assert again["eval_return_mean"] == summary["metrics"]["eval_return_mean"]
    with pytest.raises(ArchlabError, match="pass env="):
        archlab.create("ppo")


# Layers, lowest first: a module may import its own layer and the layers below, never one above.
LAYERS = [
    # __version__ is set at the top of archlab/__init__.py, before it imports anything.
    {"errors", "config", "io", "registry", "debug", "__version__"},
    {"nn", "graph", "quantum"},  # the quantum simulator needs only torch
    {"models"},
    {"data"},
    {"engine", "plots"},
    # algorithms use engine services (progress); the registry finds them by name, not by import
    # compress: pruning/quantization need only torch and the registry; its command reads runs through data/engine
    {"rl", "federated", "privacy", "meta", "continual", "compress"},
    {"train"},
    {"recipe"},
    {"runner"},
    # explain: attribution methods need only torch; its command reads runs. toolbox: ensembles load finished runs
    # export: ONNX export of a finished run's model
    {"reproduce", "bench", "search", "explain", "toolbox", "export"},
    # flower_apps: Flower's ClientApp / ServerApp entry points rebuild runs from recipes
    {"cli", "__init__", "__main__", "flower_apps"},
]


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_import_layers_point_one_way():
    root = Path(archlab.__file__).parent
    wrong = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only or not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{target}.{a.name}" for a in node.names] if target == "archlab" else [target]
            for t in targets:
                if t.startswith("archlab.") and _layer(t) > _layer(module):
                    wrong.append(f"{module} -> {t} (line {node.lineno})")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(sorted(wrong))
