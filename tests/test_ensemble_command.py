"""The ensemble methods from the command line: ``archlab ensemble-train METHOD RECIPE`` and
``archlab ensemble RUN_DIR ... --stack`` (archlab/toolbox/command.py, ensemble.py): each method trains
its members as run directories and writes the same scores as calling the toolbox directly; argument
mistakes are one line and exit 2 before any member trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import toolbox_tiny_toml

from archlab.cli import main
from archlab.toolbox.ensemble import ensemble
from archlab.toolbox.stacking import stacking

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = toolbox_tiny_toml(steps=20, log_every=10)
GRAPH_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "graph" / "gcn_cora.toml"


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _train(method: str, recipe: Path, out: Path, *extra: str) -> dict:
    assert main(["ensemble-train", method, str(recipe), "--out", str(out), *extra]) == 0
    return json.loads((out / "ensemble.json").read_text())


def test_deep_and_stacking_from_the_command_line(recipe_file, tmp_path, capsys):
    deep = _train("deep", recipe_file, tmp_path / "deep", "--members", "2", "--seed", "3")
    dirs = [tmp_path / "deep" / f"member-{m}" for m in range(2)]
    assert [m["run_dir"] for m in deep["members"]] == [str(d) for d in dirs]
    assert deep["method"] == "deep ensemble" and deep["seed"] == 3
    again = ensemble(dirs, "test")  # the file holds what the toolbox computes from the member runs
    assert deep["ensemble"] == pytest.approx(again["ensemble"]) and deep["best_member_acc"] == again["best_member_acc"]
    assert "deep ensemble of 2 on test" in capsys.readouterr().out
    # the same members stacked by `archlab ensemble --stack` and by ensemble-train stacking
    out_file = tmp_path / "stacked.json"
    assert main(["ensemble", *map(str, dirs), "--stack", "--C", "0.5", "--out", str(out_file)]) == 0
    stacked = json.loads(out_file.read_text())
    direct = stacking(dirs, 0.5)
    assert stacked["method"] == "stacking" and stacked["C"] == 0.5
    assert stacked["ensemble"] == pytest.approx(direct["ensemble"], rel=1e-6)
    assert "stacked ensemble of 2 on test" in capsys.readouterr().out
    trained = _train("stacking", recipe_file, tmp_path / "stack", "--members", "2", "--seed", "3", "--C", "0.5")
    assert trained["ensemble"] == pytest.approx(direct["ensemble"], rel=1e-6)  # same seeds: same members


def test_bagging_snapshot_adaboost_from_the_command_line(recipe_file, tmp_path):
    bag = _train("bagging", recipe_file, tmp_path / "bag", "--members", "2", "--split", "val")
    assert bag["method"] == "bagging" and bag["split"] == "val" and len(bag["members"]) == 2
    snap = _train("snapshot", recipe_file, tmp_path / "snap", "--members", "2", "--steps-per-cycle", "10")
    assert snap["method"] == "snapshot ensemble" and snap["steps_per_cycle"] == 10
    assert (tmp_path / "snap" / "cycle-1" / "recipe.toml").is_file()
    boost = _train("adaboost", recipe_file, tmp_path / "boost", "--members", "2", "--learning-rate", "0.5")
    assert boost["method"] == "adaboost (SAMME)" and 1 <= len(boost["alphas"]) <= 2
    assert all(m["alpha"] > 0 for m in boost["members"])


@pytest.mark.parametrize(("argv", "message"), [
    (["deep", "{recipe}", "--split", "train"], "--split must be val or test"),
    (["bagging", "{recipe}", "--members", "1"], "--members must be at least 2"),
    (["stacking", "{recipe}", "--split", "val"], "stacking fits its meta-learner on val"),
    (["stacking", "{recipe}", "--C", "0"], "--C must be a positive number"),
    (["stacking", "{recipe}", "--set", "data.val_fraction=0.0"], "its validation split is empty"),
    (["snapshot", "{recipe}", "--use-last", "1"], "use_last must be 0 (all) or in [2, 5]"),
    (["snapshot", "{recipe}", "--steps-per-cycle", "0"], "steps_per_cycle must be >= 1"),
    (["adaboost", "{recipe}", "--learning-rate", "0"], "learning_rate must be in (0, 100]"),
    (["deep", "{missing}"], "recipe file not found"),
    (["deep", "{graph}"], "combines classifiers of array datasets"),
    (["deep", "{recipe}", "--set", "optim.nope=1"], "nope"),
])
def test_mistakes_are_one_line_before_training(recipe_file, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    names = {"recipe": str(recipe_file), "missing": str(tmp_path / "nope.toml"), "graph": str(GRAPH_RECIPE)}
    assert main(["ensemble-train", *[a.format(**names) for a in argv], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("archlab: error:") and message in err and err.count("\n") == 1
    assert not out.exists()  # nothing trained


def test_stack_flag_mistakes(recipe_file, tmp_path, capsys):
    assert main(["ensemble", str(tmp_path), str(tmp_path), "--stack", "--split", "val"]) == 2
    assert "--stack fits on val and scores on test" in capsys.readouterr().err
