"""``archlab compress``: a new run directory with the compressed model and a before/after table; bad input
is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import archlab
from archlab.cli import main
from archlab.compress.command import METHODS, method_module
from archlab.recipe import from_dict
from archlab.runner import evaluate, train

pytestmark = pytest.mark.usefixtures("single_thread")

RAW = {"name": "digits_cnn_tiny", "seed": 0,
       "model": {"name": "cnn2d", "image_size": 8, "channels": [8, 16], "hidden": 32, "norm": "batch"},
       "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1},
       "optim": {"name": "adam", "lr": 3e-3},
       "train": {"loop": "supervised", "steps": 60, "log_every": 30}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compress") / "run"
    train(from_dict(RAW), out=out, progress=False, log=lambda _m: None)
    return out


def _compress(run: Path, out: Path, *extra: str) -> int:
    return main(["compress", str(run), "--method", "prune", "--out", str(out), "--latency-repeats", "5", *extra])


def test_structured_prune_writes_a_smaller_loadable_run(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "small"
    assert _compress(run_dir, out, "--structured", "--sparsity", "0.5") == 0
    report = json.loads((out / "compress.json").read_text())
    before, after = report["before"], report["after"]
    assert after["params"] < 0.5 * before["params"]  # conv and hidden widths halved: weights ~ quartered
    assert after["size_bytes"] < before["size_bytes"]
    model = archlab.load(out)
    assert model.num_parameters() == after["params"]
    assert set(before) == set(after) == {"test_acc", "params", "params_nonzero", "size_bytes", "latency_ms"}
    assert "| test accuracy |" in (out / "compress.md").read_text()
    # archlab eval works on the new run directory and recomputes the accuracy the table reports.
    assert evaluate(out, device="cpu")["test_acc"] == pytest.approx(after["test_acc"])
    assert "wrote" in capsys.readouterr().out


def test_unstructured_prune_keeps_zeros_through_finetuning(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sparse"
    assert _compress(run_dir, out, "--sparsity", "0.8", "--scope", "global", "--finetune-epochs", "1") == 0
    report = json.loads((out / "compress.json").read_text())
    model = archlab.load(out)
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.8, abs=1e-3)  # fine-tuning did not revive a pruned weight
    assert report["after"]["params_nonzero"] < 0.3 * report["before"]["params_nonzero"]
    assert report["settings"]["weights_remaining"] == pytest.approx(0.2, abs=1e-3)


def test_every_method_module_provides_the_interface() -> None:
    for name in METHODS:
        module = method_module(name)
        assert isinstance(module.HELP, str) and callable(module.add_arguments) and callable(module.apply)


@pytest.mark.parametrize("argv, message", [
    (["--method", "nope"], "unknown compression method 'nope'"),
    (["--method", "prune", "--sparsity", "1.5"], "--sparsity must be in (0, 1)"),
    (["--method", "prune", "--latency-repeats", "0"], "--latency-repeats must be >= 1"),
])
def test_bad_options_are_one_line(run_dir: Path, tmp_path: Path, capsys, argv, message) -> None:
    assert main(["compress", str(run_dir), "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_bad_run_directories_are_one_line(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["compress", str(tmp_path / "missing"), "--method", "prune"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compress", str(tmp_path / "empty"), "--method", "prune"]) == 2
    assert "has no final model" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert _compress(run_dir, tmp_path / "full") == 2
    assert "exists and is not empty" in capsys.readouterr().err
