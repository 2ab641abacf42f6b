"""``train.init_from = "recipe:FAMILY/NAME"``: a two-stage recipe trains (or reuses) its prerequisite's run of
the same seed, next to its own run directory, and ``archlab reproduce`` reproduces the chain in one command.

The prerequisite is the shared tiny digits MLP (``tiny_digits`` in conftest.py) under ``tiny/pre``; the fine-tune
``tiny/ft`` is the same network started from it. ``ARCHLAB_RECIPES`` points at a folder in tmp_path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from archlab import recipe as recipe_mod
from archlab import reproduce as reproduce_mod
from archlab.cli import main
from archlab.errors import ArchlabError
from archlab.runner import train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "recipes"
    (folder / "tiny").mkdir(parents=True)
    monkeypatch.setenv("ARCHLAB_RECIPES", str(folder))
    return folder


@pytest.fixture
def chain(root: Path, tiny_digits: Callable[..., dict[str, Any]]) -> dict[str, Path]:
    """tiny/pre (20 steps from scratch) and tiny/ft (10 steps from tiny/pre's run of the same seed)."""
    return {"pre": write(root, "pre", tiny_digits("pre")),
            "ft": write(root, "ft", tiny_digits("ft", optim={"lr": 1e-3}, train={"steps": 10, "eval_every": 10,
                                                                                  "init_from": "recipe:tiny/pre"}))}


def write(root: Path, name: str, raw: dict[str, Any]) -> Path:
    path = root / "tiny" / f"{name}.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


def run(path: Path, out: Path, seed: int | None = None, overrides: list[str] | None = None) -> tuple[dict, list[str]]:
    """Train the recipe file into ``out``; returns the summary and the log lines."""
    lines: list[str] = []
    summary = train(recipe_mod.load(path, overrides), out=out, seed=seed, progress=False, log=lines.append)
    return summary, lines


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def init_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("init_from:")]


def test_trains_the_prerequisite_once_then_reuses_it(chain: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first, lines = run(chain["ft"], runs / "ft-a")
    pre = runs / "pre-s0"
    pre_summary = json.loads((pre / "summary.json").read_text())
    wall = pre_summary["wall_s"]
    assert init_lines(lines) == [f"init_from: training the prerequisite recipe tiny/pre (seed 0) into {pre}",
                                 f"init_from: tiny/pre (seed 0) completed after 20 steps, {wall:.1f} s"]
    assert pre_summary["recipe"] == "pre" and pre_summary["steps"] == 20
    assert first["prerequisite"] == {"recipe": "tiny/pre", "seed": 0, "run_dir": str(pre),
                                     "wall_s": pre_summary["wall_s"]}
    stamp = (pre / "summary.json").stat().st_mtime_ns

    second, lines = run(chain["ft"], runs / "ft-b")
    assert init_lines(lines) == [f"init_from: reusing the finished run of tiny/pre (seed 0) in {pre}"]
    assert (pre / "summary.json").stat().st_mtime_ns == stamp and second["prerequisite"] == first["prerequisite"]
    # The fine-tune computes the same whether its prerequisite was trained in the same process or reused.
    a, b = weights(runs / "ft-a"), weights(runs / "ft-b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], weights(pre)[k]) for k in a)  # it trained on from there


def test_the_seed_is_passed_and_overrides_stay_with_the_caller(chain: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # lr 0: the fine-tune's final weights are exactly the ones it started from
    for seed in (1, 2):
        summary, _ = run(chain["ft"], runs / f"ft-s{seed}", seed=seed, overrides=["optim.lr=0", "train.steps=3"])
        assert summary["seed"] == seed and summary["steps"] == 3
        pre = runs / f"pre-s{seed}"
        assert json.loads((pre / "summary.json").read_text())["seed"] == seed
        saved = recipe_mod.load(pre / "recipe.toml")
        assert (saved.seed, saved.optim["model"].lr, saved.train.steps) == (seed, 1e-2, 20)  # no --set leaked
        ft, start = weights(runs / f"ft-s{seed}"), weights(pre)
        assert all(torch.equal(ft[k], start[k]) for k in ft)
    assert not torch.equal(weights(runs / "pre-s1")["head.weight"], weights(runs / "pre-s2")["head.weight"])


def test_a_changed_prerequisite_is_retrained_and_the_old_run_kept(chain: dict[str, Path], root: Path,
                                                                  tiny_digits: Callable[..., dict[str, Any]],
                                                                  tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run(chain["ft"], runs / "ft-a")
    # What a run computes is unchanged by its description, target or thread count: still reused.
    write(root, "pre", tiny_digits("pre", train={"threads": 2}, expect={"value": 0.6}) | {"description": "edited"})
    _, lines = run(chain["ft"], runs / "ft-b")
    assert init_lines(lines)[0].startswith("init_from: reusing")
    write(root, "pre", tiny_digits("pre", optim={"lr": 5e-3}))
    _, lines = run(chain["ft"], runs / "ft-c")
    stale = [p for p in runs.iterdir() if p.name.startswith("pre-s0-stale-")]
    assert len(stale) == 1 and recipe_mod.load(stale[0] / "recipe.toml").optim["model"].lr == 1e-2
    pre = runs / "pre-s0"
    assert init_lines(lines)[:2] == [f"init_from: {pre} held a run of another version of tiny/pre; moved it to "
                                     f"{stale[0]}", f"init_from: training the prerequisite recipe tiny/pre (seed 0) "
                                                    f"into {pre}"]
    assert recipe_mod.load(runs / "pre-s0" / "recipe.toml").optim["model"].lr == 5e-3


def test_an_unfinished_prerequisite_is_resumed(chain: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run(chain["pre"], runs / "pre-s0")
    (runs / "pre-s0" / "summary.json").unlink()  # as if killed after its last checkpoint
    _, lines = run(chain["ft"], runs / "ft")
    assert f"init_from: resuming the unfinished prerequisite recipe tiny/pre (seed 0) in {runs / 'pre-s0'}" in lines
    assert (runs / "pre-s0" / "summary.json").is_file()


def test_plain_paths_work_as_before(chain: dict[str, Path], tmp_path: Path) -> None:
    run(chain["pre"], tmp_path / "somewhere")
    summary, lines = run(chain["ft"], tmp_path / "runs" / "ft", overrides=[f"train.init_from={tmp_path / 'somewhere'}"])
    assert "prerequisite" not in summary and not init_lines(lines)
    assert f"archlab: initialized from {tmp_path / 'somewhere'}" in lines
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ft"]


def one_line(exc: pytest.ExceptionInfo[ArchlabError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_cycle_is_one_line_before_anything_trains(root: Path, tiny_digits: Callable[..., dict[str, Any]],
                                                   tmp_path: Path) -> None:
    a = write(root, "a", tiny_digits("a", train={"init_from": "recipe:tiny/b"}))
    write(root, "b", tiny_digits("b", train={"init_from": "recipe:tiny/a.toml"}))
    with pytest.raises(ArchlabError) as exc:
        run(a, tmp_path / "runs" / "a")
    assert one_line(exc) == ("train.init_from: the recipes start from each other in a cycle: "
                             "a -> tiny/b -> tiny/a.toml -> tiny/b")
    assert not (tmp_path / "runs").exists()


def test_an_unknown_recipe_is_one_line(chain: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ArchlabError) as exc:
        run(chain["ft"], tmp_path / "runs" / "ft", overrides=["train.init_from=recipe:tiny/nope"])
    message = one_line(exc)
    assert message.startswith("train.init_from: no recipe recipe:tiny/nope (looked for ")
    assert message.endswith("recipes there: tiny/ft, tiny/pre")
    with pytest.raises(ArchlabError, match="after 'recipe:' comes a recipe path relative to recipes/"):
        recipe_mod.load(chain["ft"], ["train.init_from=recipe:../tiny/pre"])
    assert not (tmp_path / "runs").exists()


def test_a_failing_prerequisite_is_one_line(root: Path, chain: dict[str, Path],
                                            tiny_digits: Callable[..., dict[str, Any]], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    write(root, "pre", tiny_digits("pre", train={"init_from": str(tmp_path / "no_such_run")}))
    code = main(["train", str(chain["ft"]), "--out", str(tmp_path / "runs" / "ft"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("archlab: error: train.init_from: the prerequisite recipe tiny/pre (seed 0) failed: "
                             "train.init_from: ") and err[0].endswith("no_such_run has no model.safetensors "
                                                                      "(give a finished run directory or a "
                                                                      "save_pretrained folder)")
    assert not (tmp_path / "runs" / "ft").exists() and not (tmp_path / "runs" / "pre-s0").exists()


# ---------------------------------------------------------------- archlab reproduce


def test_reproduce_with_two_seeds_trains_two_prerequisites(chain: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows, code = reproduce_mod.reproduce([str(chain["ft"])], out, jobs=2, log=lambda _m: None,
                                         extra=["--set", "optim.lr=2e-3", "--set", "train.device=cpu"])
    assert code == 0
    (row,) = rows
    walls = []
    for seed in (0, 1):
        pre = json.loads((out / "runs" / f"pre-s{seed}" / "summary.json").read_text())
        ft = json.loads((out / "runs" / f"ft-s{seed}" / "summary.json").read_text())
        assert pre["seed"] == ft["seed"] == seed
        assert ft["prerequisite"]["run_dir"] == str(out / "runs" / f"pre-s{seed}")
        assert recipe_mod.load(out / "runs" / f"pre-s{seed}" / "recipe.toml").optim["model"].lr == 1e-2  # not 2e-3
        assert recipe_mod.load(out / "runs" / f"ft-s{seed}" / "recipe.toml").optim["model"].lr == 2e-3
        walls.append((ft["wall_s"] + pre["wall_s"], pre["wall_s"]))
    assert row["wall_s_per_seed"] == pytest.approx(sum(w for w, _ in walls) / 2)
    assert row["prerequisite_wall_s_per_seed"] == pytest.approx(sum(p for _, p in walls) / 2)
    md = (out / "report.md").read_text()
    assert f"{row['wall_s_per_seed']:.0f} s (incl. {row['prerequisite_wall_s_per_seed']:.0f} s tiny/pre)" in md
    assert "wall/seed includes the training of the run" in md
    assert sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith(".")) == \
        ["ft-s0", "ft-s1", "pre-s0", "pre-s1"]  # (and the prerequisites' lock files, .pre-s0.lock ...)


@pytest.fixture
def fake_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, list[str]]]:
    """Replace each training run by a canned summary (a fine-tune records a 5 s prerequisite); records the calls."""
    calls: list[tuple[str, int, list[str]]] = []

    def run_one(path: Path, seed: int, out: Path, threads: int, extra: list[str]) -> dict[str, Any]:
        calls.append((path.stem, seed, extra))
        summary: dict[str, Any] = {"metrics": {"test_acc": 0.9}, "wall_s": 2.0, "num_params": 1}
        if path.stem == "ft":
            summary["prerequisite"] = {"recipe": "tiny/pre", "seed": seed, "wall_s": 5.0}
        return {"recipe": path.stem, "seed": seed, "summary": summary}

    monkeypatch.setattr(reproduce_mod, "_run_one", run_one)
    return calls


def test_reproduce_trains_each_prerequisite_once_before_its_fine_tunes(
        chain: dict[str, Path], fake_runs: list[tuple[str, int, list[str]]], tmp_path: Path) -> None:
    rows, _ = reproduce_mod.reproduce([str(chain["ft"]), str(chain["pre"])], tmp_path / "out", jobs=2,
                                      log=lambda _m: None, extra=["--set", "train.device=cpu"])
    cpu = ["--set", "train.device=cpu"]
    assert sorted(fake_runs) == sorted((name, s, cpu) for name in ("ft", "pre") for s in (0, 1))
    for s in (0, 1):
        assert fake_runs.index(("pre", s, cpu)) < fake_runs.index(("ft", s, cpu))
    ft, pre = rows
    assert (ft["wall_s_per_seed"], ft["prerequisite_wall_s_per_seed"], pre["wall_s_per_seed"]) == (7.0, 5.0, 2.0)


def test_reproduce_refuses_overrides_that_change_a_prerequisite_it_also_runs(
        chain: dict[str, Path], fake_runs: list[tuple[str, int, list[str]]], tmp_path: Path) -> None:
    with pytest.raises(ArchlabError) as exc:
        reproduce_mod.reproduce([str(chain["ft"]), str(chain["pre"])], tmp_path / "out", log=lambda _m: None,
                                extra=["--set", "optim.lr=1e-4"])
    assert one_line(exc).startswith("reproduce: --set changes pre, which ft starts from") and fake_runs == []
