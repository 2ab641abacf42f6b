"""The ``archlab`` command: bad input -> one line + exit 2; the run-directory contract; eval, reproduce, bench.

Commands run in-process through :func:`archlab.cli.main` (fast, capsys captures the output); two
subprocess checks make sure ``python -m archlab`` itself works and keeps tracebacks away from users.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from test_recipe import BAD_CASES, BASE_TOML, CASE_IDS, write_recipe

import archlab
from archlab import recipe as recipe_mod
from archlab.cli import main
from archlab.config import to_dict
from archlab.engine.checkpoint import load_state
from archlab.registry import entries

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CNN = ROOT / "recipes" / "classic" / "digits_cnn.toml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_TRAIN = ["--set", "train.steps=30", "--set", "train.threads=1", "--set", "train.log_every=10",
              "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    """``train.threads=1`` sets torch's thread count for the whole process; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``archlab ARGV`` in-process -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors exit from inside parse_args
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("archlab: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# ---------------------------------------------------------------- bad input -> one line, exit 2, nothing written


@pytest.mark.parametrize("case_id, text, overrides, fragments", BAD_CASES, ids=CASE_IDS)
def test_train_bad_recipe_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     case_id: str, text: str | bytes | None,
                                                     overrides: list[str], fragments: list[str]) -> None:
    path = write_recipe(tmp_path, text)
    out = tmp_path / "run"
    sets = [x for o in overrides for x in ("--set", o)]
    code, stdout, err = run(capsys, "train", str(path), *sets, "--out", str(out), "--no-progress")
    assert code == 2
    assert_one_line_error(err, *(f.replace("{path}", str(path)) for f in fragments))
    assert not out.exists()
    assert "run directory" not in stdout


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["train", "{tmp}/nope.toml"], ["recipe file not found", "nope.toml"]),
        (["train", "{recipe}", "--nproc", "0"], ["--nproc must be >= 1"]),
        (["train", "{recipe}", "--out", "{tmp}/a_file"], ["is a file, not a directory"]),
        (["train", "{recipe}", "--resume", "--out", "{tmp}/not_a_run"], ["--resume", "not a run directory"]),
        (["train", "{recipe}", "--resume", "--out", "{tmp}/not_a_run", "--set", "train.steps=3"],
         ["--resume", "--set and --seed cannot change them"]),
        (["train", "{recipe}", "--resume", "--out", "{tmp}/not_a_run", "--seed", "3"],
         ["--resume", "--set and --seed cannot change them"]),
        (["train", "{recipe}", "--device", "tpu"], ["invalid choice: 'tpu'", "'auto', 'cpu', 'cuda'"]),
        (["train", "{recipe}", "--seed", "one"], ["--seed", "invalid int value"]),
        (["train"], ["recipe"]),
        (["trian", "{recipe}"], ["invalid choice: 'trian'", "train"]),
        ([], ["command"]),
        (["eval", "{tmp}/not_a_run"], ["not a run directory"]),
        (["eval", "{tmp}/missing"], ["not a run directory"]),
        (["reproduce", "nosuchsuite"], ["unknown suite or recipe 'nosuchsuite'", "suites: quick, full, classic",
                                        "digits_cnn"]),
        (["reproduce", "{recipe}", "--seeds", "0"], ["--seeds must be >= 1"]),
        (["reproduce", "{recipe_no_expect}"], ["no [expect] table"]),
        (["bench", "nosuchspec"], ["unknown bench spec 'nosuchspec'", "specs:"]),
        (["list", "nosuchfamily"], ["unknown family 'nosuchfamily'", "families: classic"]),
    ],
)
def test_bad_command_line_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                  fragments: list[str]) -> None:
    recipe = write_recipe(tmp_path, None)
    raw = tomllib.loads(BASE_TOML)
    del raw["expect"]
    no_expect = write_recipe(tmp_path, tomli_w.dumps(raw), "no_expect.toml")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "notes.txt").write_text("x")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    subs = {"{tmp}": str(tmp_path), "{recipe}": str(recipe), "{recipe_no_expect}": str(no_expect)}
    for key, value in subs.items():
        argv = [a.replace(key, value) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_missing_tensorboard_leaves_no_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", str(write_recipe(tmp_path, None)), "--set", "train.tensorboard=true",
                       "--set", "train.steps=2", "--out", str(out), "--no-progress")
    assert code == 2
    assert_one_line_error(err, "tensorboard")
    assert not out.exists()


# ---------------------------------------------------------------- list and info


def test_list_shows_every_model_with_its_family(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list")
    assert code == 0 and not err
    rows = {line.split()[0]: line.split()[1] for line in out.strip().splitlines()}
    from archlab.rl import algo_names

    # models from the model registry, RL algorithms from archlab.rl's own registry
    assert rows == {**{e.name: e.family for e in entries()}, **{a: "rl" for a in algo_names()}}
    assert set(rows) == set(archlab.list()) | set(algo_names())


def test_list_family(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "classic")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [e.name for e in entries("classic")]
    assert all(line.split()[1] == "classic" for line in lines)
    assert {"logistic", "mlp", "cnn1d", "cnn2d", "lenet5", "resnet20", "gru"} <= {line.split()[0] for line in lines}
    for e in entries("classic"):
        assert e.description and e.description in out


def test_info(capsys: pytest.CaptureFixture[str], archlab_data: Path) -> None:
    code, out, err = run(capsys, "info")
    assert code == 0 and not err
    assert f"archlab   {archlab.__version__}" in out
    assert torch.__version__ in out
    assert f"data      {archlab_data}" in out
    assert "threads" in out and "extras" in out


# ---------------------------------------------------------------- train: the run directory contract


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny digits_cnn run (30 steps, ~1 s) shared by the run-directory tests."""
    out = tmp_path_factory.mktemp("train") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["train", str(DIGITS_CNN), *TINY_TRAIN, "--out", str(out)])
    return {"code": code, "dir": out, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def test_train_exits_0_and_writes_the_run_directory(trained: dict[str, Any]) -> None:
    assert trained["code"] == 0, trained["stderr"]
    run_dir = trained["dir"]
    assert f"run directory: {run_dir}" in trained["stdout"]
    assert "digits_cnn (seed 0): " in trained["stdout"] and "test_acc=" in trained["stdout"]
    for name in ("recipe.toml", "metrics.jsonl", "summary.json", "config.json", "model.safetensors",
                 "checkpoints", "plots/loss.png", "plots/metrics.png"):
        assert (run_dir / name).exists(), name


def test_run_recipe_is_resolved_and_reloadable(trained: dict[str, Any]) -> None:
    saved = recipe_mod.load(trained["dir"] / "recipe.toml")
    wanted = recipe_mod.load(DIGITS_CNN, [o for o in TINY_TRAIN if "=" in o])
    assert saved.name == "digits_cnn"  # the file stem survives although the saved file is recipe.toml
    assert saved.train.steps == 30 and saved.train.threads == 1 and saved.seed == 0
    assert saved == wanted


def test_metrics_jsonl(trained: dict[str, Any]) -> None:
    records = [json.loads(line) for line in (trained["dir"] / "metrics.jsonl").read_text().splitlines()]
    assert records
    for r in records:
        assert isinstance(r["step"], int) and 1 <= r["step"] <= 30
        assert r["split"] in {"train", "val"}
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == [10, 20, 30]
    assert all(r["loss"] > 0 for r in train)
    assert [r["step"] for r in val] == [10, 20, 30]
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in val)


def test_summary_json(trained: dict[str, Any]) -> None:
    summary = json.loads((trained["dir"] / "summary.json").read_text())
    for key in ("recipe", "seed", "metrics", "expect", "passed", "wall_s", "device", "versions"):
        assert key in summary, key
    assert summary["recipe"] == "digits_cnn" and summary["seed"] == 0
    metrics = summary["metrics"]
    for key in ("test_acc", "val_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test_acc"] > 0.2  # 30 steps already beat chance (0.1) on digits
    rec = recipe_mod.load(DIGITS_CNN)
    assert rec.expect is not None
    assert summary["expect"] == to_dict(rec.expect)
    assert summary["passed"] is rec.expect.met(metrics["test_acc"])
    assert isinstance(summary["wall_s"], float) and summary["wall_s"] > 0
    assert summary["device"].startswith("cpu")
    assert summary["versions"]["torch"] == torch.__version__
    assert summary["versions"]["archlab"] == archlab.__version__


def test_checkpoints_and_plots(trained: dict[str, Any]) -> None:
    ckpts = sorted(p.name for p in (trained["dir"] / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000010.safetensors", "step-00000020.safetensors", "step-00000030.safetensors"]
    for name in ("loss.png", "metrics.png"):
        data = (trained["dir"] / "plots" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_final_model_loads_and_matches_the_last_checkpoint(trained: dict[str, Any]) -> None:
    run_dir = trained["dir"]
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["kind"] == "model" and meta["name"] == "cnn2d" and meta["config"]["image_size"] == 8
    model = archlab.load(run_dir).eval()
    reference = archlab.create(meta["name"], **meta["config"])
    state = load_state(run_dir / "checkpoints" / "step-00000030.safetensors")["paradigm"]["model"]["module"]
    reference.load_state_dict(state)
    reference.eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_eval_reproduces_the_summary(trained: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    summary = json.loads((trained["dir"] / "summary.json").read_text())
    code, out, err = run(capsys, "eval", str(trained["dir"]), "--device", "cpu")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["test_acc"] == summary["metrics"]["test_acc"]
    assert metrics["val_acc"] == summary["metrics"]["val_acc"]
    assert metrics["test_loss"] == pytest.approx(summary["metrics"]["test_loss"], rel=1e-5)


def test_train_refuses_a_non_empty_out_dir(trained: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = trained["dir"]
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    code, _, err = run(capsys, "train", str(DIGITS_CNN), *TINY_TRAIN, "--out", str(run_dir))
    assert code == 2
    assert_one_line_error(err, "exists and is not empty", "--resume")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # the finished run is untouched


def test_eval_of_an_unfinished_run(trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(trained["dir"] / "recipe.toml", partial / "recipe.toml")
    code, _, err = run(capsys, "eval", str(partial))
    assert code == 2
    assert_one_line_error(err, "no final model", "did not finish")


def test_expect_metric_that_the_run_does_not_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", str(write_recipe(tmp_path, None)), "--set", "expect.metric=test_f1",
                            "--set", "train.steps=2", "--out", str(out), "--no-progress")
    assert code == 2
    assert_one_line_error(err, "expect.metric:", "does not report 'test_f1'", "test_acc", "val_acc")
    # Checked against the loop's declared metrics before training: no run, so no summary claims success.
    assert not out.exists() and "run directory" not in stdout


# ---------------------------------------------------------------- python -m archlab (true subprocesses)


def test_module_entry_point_list() -> None:
    proc = subprocess.run([sys.executable, "-m", "archlab", "list"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from archlab.rl import algo_names

    assert {line.split()[0] for line in proc.stdout.splitlines()} == set(archlab.list()) | set(algo_names())


def test_module_entry_point_bad_input_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "archlab", "train", str(write_recipe(tmp_path, None)),
                           "--set", "train.precision=fp8", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "train.precision", "'fp32', 'bf16', 'fp16'")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- reproduce
# One real reproduction (two seeds, two `archlab train` subprocesses in parallel); the other cases copy its
# finished runs into their own report folder, which reproduce reuses instead of retraining.


def _reproduce_recipe(folder: Path, expect: dict[str, Any]) -> Path:
    raw = tomllib.loads((ROOT / "recipes" / "classic" / "mnist1d_logistic.toml").read_text())
    raw["name"] = "tiny_logistic"
    raw["data"]["options"] = {"num_samples": 1000}  # generating 5000 examples costs a second per process
    raw["train"].update(steps=200, eval_every=100, log_every=100)
    raw["expect"].update(expect)
    folder.mkdir(parents=True, exist_ok=True)
    return write_recipe(folder, tomli_w.dumps(raw), "tiny_logistic.toml")


def _report(out: Path) -> dict[str, Any]:
    for name in ("report.md", "report.json", "report.png"):
        assert (out / name).is_file(), name
    assert (out / "report.png").read_bytes().startswith(PNG_SIGNATURE)
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("reproduce")
    path = _reproduce_recipe(folder / "recipe", {"seeds": [0, 1], "compare": "approx", "value": 0.3,
                                                 "tolerance": 0.7})
    out = folder / "report"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["reproduce", str(path), "--out", str(out), "--jobs", "2"])
    return {"code": code, "out": out, "path": path, "stdout": stdout.getvalue()}


def _copy_runs(reproduced: dict[str, Any], out: Path) -> dict[int, float]:
    """Copy the finished runs into ``out``; return seed -> mtime of its summary.json."""
    shutil.copytree(reproduced["out"] / "runs", out / "runs")
    return {s: (out / "runs" / f"tiny_logistic-s{s}" / "summary.json").stat().st_mtime_ns for s in (0, 1)}


def test_reproduce_passes(reproduced: dict[str, Any]) -> None:
    assert reproduced["code"] == 0, reproduced["stdout"]
    out = reproduced["out"]
    report = _report(out)
    assert report["machine"] and report["wall_s"] > 0
    (row,) = report["rows"]
    assert row["recipe"] == "tiny_logistic" and row["metric"] == "test_acc" and row["errors"] == []
    assert sorted(row["seeds"]) == [0, 1] and len(row["values"]) == 2
    runs = {s: json.loads((out / "runs" / f"tiny_logistic-s{s}" / "summary.json").read_text()) for s in (0, 1)}
    assert all(r["seed"] == s and r["steps"] == 200 for s, r in runs.items())
    assert sorted(row["values"]) == sorted(r["metrics"]["test_acc"] for r in runs.values())
    assert row["mean"] == pytest.approx(statistics.fmean(row["values"]))
    assert row["std"] == pytest.approx(statistics.stdev(row["values"]))
    assert row["target"] == 0.3 and row["tolerance"] == 0.7 and row["passed"] is True
    md = (out / "report.md").read_text()
    n_params = runs[0]["num_params"]
    assert n_params == row["num_params"] == 40 * 10 + 10  # logistic regression on 40 features, 10 classes
    assert f"| tiny_logistic | logistic | {n_params:,} | mnist1d | test_acc | 0.3 ± 0.7 |" in md and "| pass |" in md


def test_reproduce_seeds_option_uses_that_many_seeds(reproduced: dict[str, Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    mtimes = _copy_runs(reproduced, out)
    code, stdout, err = run(capsys, "reproduce", str(reproduced["path"]), "--out", str(out), "--seeds", "1")
    assert code == 0, stdout + err
    (row,) = _report(out)["rows"]
    assert row["seeds"] == [0] and len(row["values"]) == 1 and row["std"] == 0.0
    summary = json.loads((out / "runs" / "tiny_logistic-s0" / "summary.json").read_text())
    assert row["values"] == [summary["metrics"]["test_acc"]]
    assert (out / "runs" / "tiny_logistic-s0" / "summary.json").stat().st_mtime_ns == mtimes[0]  # reused


def test_reproduce_missed_target_exits_1(reproduced: dict[str, Any], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    mtimes = _copy_runs(reproduced, out)
    path = _reproduce_recipe(tmp_path / "impossible", {"seeds": [0, 1], "compare": "min", "value": 1.5})
    code, stdout, err = run(capsys, "reproduce", str(path), "--out", str(out))
    assert code == 1, stdout + err
    (row,) = _report(out)["rows"]
    assert row["passed"] is False and row["errors"] == [] and len(row["values"]) == 2
    assert row["expected"] == "≥ 1.5"
    assert "| FAIL |" in (out / "report.md").read_text()
    assert {s: (out / "runs" / f"tiny_logistic-s{s}" / "summary.json").stat().st_mtime_ns for s in (0, 1)} == mtimes


# ---------------------------------------------------------------- bench

FACTORIES = '''
def _side(name, log, n):
    def call():
        with open(log, "a") as fh:
            fh.write(name + "\\n")
        return sum(range(n))
    return call


def ours(log, n):
    return _side("ours", log, n)


def peer(log, n):
    return _side("peer", log, n)
'''


def _bench_spec(folder: Path, requires: list[str] | None = None) -> Path:
    (folder / "toy_bench.py").write_text(FACTORIES)
    spec = {"name": "toy", "description": "two trivial sides", "warmup": 1, "repeats": 5,
            "params": {"log": str(folder / "calls.log"), "n": 1000},
            "ours": {"target": "toy_bench.py:ours", "label": "ours-label"},
            "peer": {"target": "toy_bench.py:peer", "label": "peer-label", "requires": requires or []}}
    path = folder / "toy.toml"
    path.write_text(tomli_w.dumps(spec))
    return path


def test_bench_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _bench_spec(tmp_path)
    out = tmp_path / "results"
    code, stdout, err = run(capsys, "bench", str(spec), "--out", str(out), "--repeats", "4")
    assert code == 0, err
    result = json.loads((out / "toy.json").read_text())
    assert result["repeats"] == 4 and result["warmup"] == 1
    assert len(result["ours"]["times_s"]) == len(result["peer"]["times_s"]) == 4
    assert result["ours"]["label"] == "ours-label" and result["peer"]["label"] == "peer-label"
    assert result["ours"]["median_s"] == statistics.median(result["ours"]["times_s"])
    assert result["ratio_peer_over_ours"] == pytest.approx(result["peer"]["median_s"] / result["ours"]["median_s"])
    md = (out / "toy.md").read_text()
    assert "ours-label" in md and "peer-label" in md and "peer / ours" in md
    # warm-up (ours, peer), then the timed calls interleaved A B, B A, ...
    calls = (tmp_path / "calls.log").read_text().split()
    assert calls == ["ours", "peer"] + ["ours", "peer", "peer", "ours"] * 2


def test_bench_repeats_from_the_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bench", str(_bench_spec(tmp_path)), "--out", str(tmp_path / "results"))
    assert code == 0, err
    result = json.loads((tmp_path / "results" / "toy.json").read_text())
    assert result["repeats"] == 5 and len(result["ours"]["times_s"]) == 5


@pytest.mark.parametrize("repeats", ["0", "-1"])
def test_bench_rejects_non_positive_repeats(tmp_path: Path, capsys: pytest.CaptureFixture[str], repeats: str) -> None:
    code, _, err = run(capsys, "bench", str(_bench_spec(tmp_path)), "--out", str(tmp_path / "r"), "--repeats", repeats)
    assert code == 2
    assert_one_line_error(err, "repeats must be >= 1")
    assert not (tmp_path / "r").exists()


def test_bench_missing_peer_module_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _bench_spec(tmp_path, requires=["archlab_no_such_peer_pkg", "archlab_no_such.sub"])
    out = tmp_path / "results"
    code, _, err = run(capsys, "bench", str(spec), "--out", str(out))
    assert code == 2
    assert_one_line_error(err, "skipped", "archlab_no_such_peer_pkg", "archlab_no_such.sub")
    assert not out.exists() and not (tmp_path / "calls.log").exists()


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda s: s.pop("peer"), "missing key 'peer'"),
        (lambda s: s.update(ours="toy_bench.py:ours"), "[ours] must be a table"),
        (lambda s: s["ours"].pop("target"), "[ours] must be a table"),
        (lambda s: s["peer"].update(requires="torch"), "peer.requires must be a list"),
        (lambda s: s["peer"].update(target="toy_bench.py:nope"), "has no factory 'nope'"),
        (lambda s: s["peer"].update(target="missing.py:peer"), "not found"),
        (lambda s: s["peer"].update(target="toy_bench.py"), "must look like file.py:factory"),
    ],
)
def test_bench_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any, fragment: str) -> None:
    path = _bench_spec(tmp_path)
    spec = tomllib.loads(path.read_text())
    edit(spec)
    path.write_text(tomli_w.dumps(spec))
    code, _, err = run(capsys, "bench", str(path), "--out", str(tmp_path / "results"))
    assert code == 2
    assert_one_line_error(err, fragment)
    assert not (tmp_path / "results").exists()


def test_init_from_starts_from_the_weights_of_a_finished_run(trained: dict[str, Any], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``train.init_from``: a run with lr 0 from a finished run keeps its parameters exactly (batch-norm
    running statistics still move, as they do in any training step)."""
    out = tmp_path / "tuned"
    code, stdout, err = run(capsys, "train", str(DIGITS_CNN), *TINY_TRAIN, "--set", "train.steps=2",
                            "--set", "optim.lr=0", "--set", f"train.init_from={trained['dir']}", "--out", str(out))
    assert code == 0, err
    assert f"initialized from {trained['dir']}" in stdout
    before = dict(archlab.load(trained["dir"]).named_parameters())
    after = dict(archlab.load(out).named_parameters())
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    first = next(iter(before))  # and the copy is not what a fresh build would give anyway
    assert not torch.equal(dict(archlab.load(trained["dir"]).__class__.create(
        **archlab.registry.read_saved(out)["config"]).named_parameters())[first], after[first])


@pytest.mark.parametrize("override, fragment", [
    ("model.channels=[4, 8]", "has shape"),
    ("train.init_from=/nonexistent/run", "has no model.safetensors"),
])
def test_init_from_mismatch_is_one_line(trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        override: str, fragment: str) -> None:
    out = tmp_path / "bad"
    code, _, err = run(capsys, "train", str(DIGITS_CNN), *TINY_TRAIN, "--set", f"train.init_from={trained['dir']}",
                       "--set", override, "--out", str(out))
    assert code == 2
    assert_one_line_error(err, fragment)
    assert not out.exists()
