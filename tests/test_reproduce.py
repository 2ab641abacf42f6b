"""``archlab reproduce``: which dataset a report names, when a target applies, the exit code, the plots.

Most tests replace the training subprocess with canned summaries (reproduce's own logic is what they
check); one trains for real, to see the overridden dataset reach the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from archlab import reproduce as reproduce_mod
from archlab.errors import ArchlabError


def tiny_recipe(folder: Path, name: str, dataset: str, in_features: int, target: float) -> Path:
    """Logistic regression for a few steps; target: test_acc >= ``target`` on ``dataset``, seeds 0 and 1."""
    raw = {"name": name, "model": {"name": "logistic", "num_classes": 10, "in_features": in_features},
           "data": {"name": dataset, "batch_size": 64, "val_fraction": 0.1},
           "optim": {"name": "adam", "lr": 1e-2},
           "train": {"steps": 30, "eval_every": 30, "log_every": 10},
           "expect": {"metric": "test_acc", "value": target, "compare": "min", "seeds": [0, 1],
                      "source": "a test"}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


@pytest.fixture
def recipes(tmp_path: Path) -> dict[str, Path]:
    return {"dig": tiny_recipe(tmp_path / "recipes", "dig", "digits", 64, target=0.9),
            "m1d": tiny_recipe(tmp_path / "recipes", "m1d", "mnist1d", 40, target=0.3)}


@pytest.fixture
def fake_runs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace each training run by a summary: test_acc ``accuracy[recipe]``, or an error when that is None.
    Yields that dict (fill it in) and records the calls under ``"calls"``."""
    accuracy: dict[str, Any] = {"calls": []}

    def run_one(path: Path, seed: int, out: Path, threads: int, extra: list[str]) -> dict[str, Any]:
        accuracy["calls"].append((path.stem, seed, extra))
        if accuracy[path.stem] is None:
            return {"recipe": path.stem, "seed": seed, "error": "boom"}
        summary = {"metrics": {"test_acc": accuracy[path.stem] + 0.01 * seed}, "wall_s": 2.0 + seed,
                   "num_params": 650}
        return {"recipe": path.stem, "seed": seed, "summary": summary}

    monkeypatch.setattr(reproduce_mod, "_run_one", run_one)
    return accuracy


def run(recipes: list[Path], out: Path, *overrides: str) -> tuple[dict[str, dict[str, Any]], int, str]:
    """reproduce with ``--set`` overrides; returns rows by recipe, exit code and report.md."""
    extra = [x for o in overrides for x in ("--set", o)]
    rows, code = reproduce_mod.reproduce([str(p) for p in recipes], out, extra=extra, log=lambda _m: None)
    saved = json.loads((out / "report.json").read_text())["rows"]
    assert [(r["recipe"], r["dataset"], r["passed"]) for r in saved] == [(r["recipe"], r["dataset"], r["passed"])
                                                                          for r in rows]
    return {r["recipe"]: r for r in rows}, code, (out / "report.md").read_text()


def test_without_overrides_every_target_is_judged(recipes: dict[str, Path], fake_runs: dict[str, Any],
                                                  tmp_path: Path) -> None:
    fake_runs.update(dig=0.95, m1d=0.1)
    rows, code, md = run(list(recipes.values()), tmp_path / "out")
    assert code == 1
    assert (rows["dig"]["dataset"], rows["dig"]["passed"]) == ("digits", True)
    assert (rows["m1d"]["dataset"], rows["m1d"]["passed"]) == ("mnist1d", False)
    assert "| dig | logistic | 650 | digits | test_acc | ≥ 0.9 | 0.9550 ± 0.0071 | 2 | 2 s | pass |" in md
    assert "| m1d | logistic | 650 | mnist1d | test_acc | ≥ 0.3 | 0.1050 ± 0.0071 | 2 | 2 s | FAIL |" in md
    assert "n/a" not in md


def test_a_target_for_another_dataset_is_not_applicable(recipes: dict[str, Path], fake_runs: dict[str, Any],
                                                        tmp_path: Path) -> None:
    fake_runs.update(dig=0.95, m1d=0.1)  # m1d trained on digits: far below its MNIST-1D target, but that is moot
    rows, code, md = run(list(recipes.values()), tmp_path / "out", "data.name=digits")
    assert code == 0
    assert rows["m1d"]["dataset"] == "digits" and rows["m1d"]["target_dataset"] == "mnist1d"
    assert rows["m1d"]["passed"] is None and rows["m1d"]["target_applies"] is False
    assert "| m1d | logistic | 650 | digits | test_acc | ≥ 0.3 on mnist1d | 0.1050 ± 0.0071 | 2 | 2 s | n/a |" in md
    assert rows["dig"]["passed"] is True and "| dig | logistic | 650 | digits |" in md
    assert "n/a: trained on another dataset" in md
    assert all(extra == ["--set", "data.name=digits"] for _, _, extra in fake_runs["calls"])

    fake_runs.update(dig=0.5)  # a missed target on its own dataset still fails the reproduction
    _, code, _ = run(list(recipes.values()), tmp_path / "out2", "data.name=digits")
    assert code == 1


def test_failed_runs_fail_even_where_the_target_does_not_apply(recipes: dict[str, Path],
                                                               fake_runs: dict[str, Any], tmp_path: Path) -> None:
    fake_runs.update(m1d=None)
    rows, code, md = run([recipes["m1d"]], tmp_path / "out", "data.name=digits")
    assert code == 1 and rows["m1d"]["passed"] is False and rows["m1d"]["errors"] == ["boom", "boom"]
    assert "| FAIL |" in md and "- m1d: boom" in md


def test_a_target_set_with_the_overrides_applies_to_their_dataset(recipes: dict[str, Path],
                                                                  fake_runs: dict[str, Any], tmp_path: Path) -> None:
    fake_runs.update(m1d=0.1)
    rows, code, _ = run([recipes["m1d"]], tmp_path / "out", "data.name=digits", "expect.value=0.2")
    assert code == 1 and rows["m1d"]["target_applies"] is True and rows["m1d"]["passed"] is False
    rows, code, _ = run([recipes["m1d"]], tmp_path / "out2", "data.name=digits", "expect.value=0.1")
    assert code == 0 and rows["m1d"]["passed"] is True and rows["m1d"]["target"] == 0.1


def test_a_bad_override_fails_before_any_run(recipes: dict[str, Path], fake_runs: dict[str, Any],
                                             tmp_path: Path) -> None:
    with pytest.raises(ArchlabError, match="data.name"):
        run([recipes["dig"]], tmp_path / "out", "data.name=no_such_dataset")
    assert fake_runs["calls"] == [] and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- plots


def marks(ax: Any, marker: str) -> list[Any]:
    """The lines of ``ax`` drawn with ``marker`` that hold data: not error-bar caps, not legend proxies."""
    caps = {id(cap) for container in ax.containers for cap in container.lines[1]}
    return [line for line in ax.lines if line.get_marker() == marker and id(line) not in caps
            and len(line.get_xdata())]


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The matplotlib figures the code closes after saving them, kept open for inspection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    close = plt.close
    kept: list[Any] = []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def test_plots_have_titles_and_each_recipe_its_own_target(recipes: dict[str, Path], fake_runs: dict[str, Any],
                                                          figures: list[Any], tmp_path: Path) -> None:
    fake_runs.update(dig=0.95, m1d=0.1)
    run(list(recipes.values()), tmp_path / "out")
    assert (tmp_path / "out" / "report.png").is_file() and (tmp_path / "out" / "tradeoff.png").is_file()
    summary_fig, tradeoff_fig = figures
    (ax,) = summary_fig.axes
    assert ax.get_title().startswith("archlab reproduce dig m1d\n")
    assert sorted(line.get_xdata()[0] for line in marks(ax, "|")) == [0.3, 0.9]

    (ax,) = tradeoff_fig.axes
    assert "archlab reproduce dig m1d" in ax.get_title()
    points = {round(line.get_ydata()[0], 3): line.get_color() for line in marks(ax, "o")}  # mean of 2 seeds
    targets = {line.get_ydata()[0]: line.get_color() for line in marks(ax, "_")}
    assert targets == {0.9: points[0.955], 0.3: points[0.105]} and points[0.955] != points[0.105]


def test_a_recipe_whose_target_does_not_apply_has_no_target_drawn(recipes: dict[str, Path],
                                                                  fake_runs: dict[str, Any], figures: list[Any],
                                                                  tmp_path: Path) -> None:
    fake_runs.update(dig=0.95, m1d=0.1)
    run(list(recipes.values()), tmp_path / "out", "data.name=digits")
    summary_fig, tradeoff_fig = figures
    (ax,) = summary_fig.axes
    assert [line.get_xdata()[0] for line in marks(ax, "|")] == [0.9]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dig", "m1d\n(on digits)"]
    (ax,) = tradeoff_fig.axes
    assert [line.get_ydata()[0] for line in marks(ax, "_")] == [0.9]


# ---------------------------------------------------------------- one real reproduction


def test_the_overridden_dataset_is_trained_on_and_reported(tmp_path: Path) -> None:
    path = tiny_recipe(tmp_path, "dig", "digits", 64, target=0.99)
    out = tmp_path / "out"
    rows, code, md = run([path], out, "data.name=mnist1d", "data.options.num_samples=1000", "model.in_features=40",
                         "expect.seeds=[0]")  # other seeds do not change the target: still n/a
    summary = json.loads((out / "runs" / "dig-s0" / "summary.json").read_text())
    assert summary["dataset"] == "mnist1d" and rows["dig"]["dataset"] == "mnist1d"
    assert rows["dig"]["values"] == [summary["metrics"]["test_acc"]]
    assert code == 0 and rows["dig"]["passed"] is None and "| n/a |" in md
