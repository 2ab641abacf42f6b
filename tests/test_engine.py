"""Engine tests: exact resume, atomic and verified checkpoints, NaN guard, Ctrl-C, schedules,
accumulation, early stopping, clipping and precision.

Every run is tiny (an MLP with 32-unit hidden layers on the 8x8 ``digits`` set, batch 32, one CPU
thread) so the whole file takes seconds. The resume recipe deliberately has dropout (global torch
RNG), a ``shift`` augmentation (its own generator), a shuffled batch stream that crosses an epoch
boundary (the stream's generator and position), AdamW with weight decay and a warm-up + cosine
schedule (optimizer and scheduler state) and gradient clipping, so a resume that forgets any of
them changes the final weights.
"""

from __future__ import annotations

import copy
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from safetensors.torch import save_file as st_save_file

import archlab.engine.checkpoint as ckmod
from archlab import cli
from archlab.data import load_dataset
from archlab.engine.checkpoint import CheckpointError, CheckpointManager, load_state, save_state
from archlab.engine.device import Precision
from archlab.engine.distributed import DistInfo
from archlab.engine.driver import Driver, DriverConfig, Interrupted
from archlab.engine.loop import Context, Loop
from archlab.engine.metrics import read_metrics
from archlab.engine.optim import OptimConfig, build_optimizer, lr_factor, param_groups
from archlab.engine.seed import MAX_SEED, check_seed, rng_state, seed_everything, set_rng_state
from archlab.engine.stopping import EarlyStopping
from archlab.errors import ArchlabError, NonFiniteLoss
from archlab.recipe import from_dict
from archlab.registry import create
from archlab.runner import train
from archlab.train.supervised import Supervised

REPO = Path(__file__).resolve().parents[1]
TOTAL = 45  # digits has 1,294 training examples = 40 batches of 32: the resume runs cross an epoch
EVERY = 5  # checkpoint_every


# -- helpers --------------------------------------------------------------------------------------


def recipe_raw(**sections: dict[str, Any]) -> dict[str, Any]:
    """The resume recipe as a raw dict; ``sections`` update its tables key by key."""
    raw: dict[str, Any] = {
        "name": "engine",
        "seed": 3,
        "model": {"name": "mlp", "in_features": 64, "num_classes": 10, "hidden": [32, 32], "dropout": 0.2},
        "data": {"name": "digits", "batch_size": 32, "augment": ["shift:1"]},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05, "schedule": "cosine", "warmup_steps": 4,
                  "min_lr_ratio": 0.1},
        "train": {"steps": TOTAL, "checkpoint_every": EVERY, "keep_checkpoints": 3, "log_every": 1,
                  "eval_every": 10, "grad_clip": 1.0, "threads": 1, "device": "cpu"},
    }
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return raw


def run(raw: dict[str, Any], out: Path, resume: bool = False, log: Callable[[str], None] | None = None) -> dict:
    return train(from_dict(copy.deepcopy(raw)), out=out, resume=resume, progress=False,
                 log=log or (lambda _msg: None))


def write_recipe(raw: dict[str, Any], path: Path) -> Path:
    path.write_text(tomli_w.dumps(raw))
    return path


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_bit_identical(expected: Path, actual: Path) -> None:
    """Same final tensors bit for bit, and the same metrics.jsonl records (train and val)."""
    a, b = final_weights(expected), final_weights(actual)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    records_a = read_metrics(expected / "metrics.jsonl")
    records_b = read_metrics(actual / "metrics.jsonl")
    assert [r for r in records_a if r["split"] == "train"] == [r for r in records_b if r["split"] == "train"]
    assert records_a == records_b


def checkpoint_steps(run_dir: Path) -> list[int]:
    return CheckpointManager(run_dir / "checkpoints").steps()


def patch_step(monkeypatch: pytest.MonkeyPatch, after: Callable[[int, dict[str, Any]], dict[str, Any]]) -> None:
    """Wrap Supervised.train_step: ``after(step, result)`` sees (and may replace) each step's result."""
    original = Supervised.train_step

    def train_step(self: Supervised, step: int) -> dict[str, Any]:
        return after(step, original(self, step))

    monkeypatch.setattr(Supervised, "train_step", train_step)


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit in the tensor data (after the 8-byte length and the JSON header) of a safetensors file."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    assert start < len(data), "file has no tensor data"
    data[start + (len(data) - start) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module", autouse=True)
def _no_plots() -> Iterator[None]:
    """Plotting is not under test here and costs ~0.5 s per run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("archlab.plots.plot_run", lambda run_dir: [])
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, _no_plots: None) -> tuple[Path, dict]:
    """The uninterrupted run every resume is compared with (read-only: copy it before changing it)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    summary = run(recipe_raw(), out)
    return out, summary


# -- 1. resume is bit-identical -------------------------------------------------------------------

# Loaded by the CLI subprocesses below as `sitecustomize` (PYTHONPATH): every supervised step first
# sleeps, so the test can signal the run while it is surely mid-way. Sleeping changes no numbers.
SLOW_STEPS = '''
import os
import time

from archlab.train import supervised

_delay = float(os.environ["ARCHLAB_TEST_STEP_DELAY"])
_step = supervised.Supervised.train_step


def _slow_step(self, step):
    time.sleep(_delay)
    return _step(self, step)


supervised.Supervised.train_step = _slow_step
'''


def start_cli_run(recipe: Path, out: Path, tmp_path: Path, delay: float = 0.1) -> subprocess.Popen:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SLOW_STEPS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]),
           "ARCHLAB_TEST_STEP_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, "-m", "archlab", "train", str(recipe), "--out", str(out), "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before the test could signal it:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.01)


def test_sigint_cli_exits_130_with_checkpoint_and_resume_is_bit_identical(
        tmp_path: Path, reference: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(recipe_raw(), tmp_path / "engine.toml")
    out = tmp_path / "run"
    proc = start_cli_run(recipe, out, tmp_path)
    wait_until(lambda: bool(checkpoint_steps(out)), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if "interrupted" in ln]
    assert len(lines) == 1, stderr
    m = re.search(r"interrupted after step (\d+); checkpoint (\S+?\.safetensors)", lines[0])
    assert m, lines[0]
    step, path = int(m.group(1)), Path(m.group(2))
    assert EVERY <= step < TOTAL
    assert path == out / "checkpoints" / f"step-{step:08d}.safetensors" and path.is_file()
    assert checkpoint_steps(out)[-1] == step
    assert load_state(path)["step"] == step
    assert not (out / "summary.json").exists() and not (out / "model.safetensors").exists()
    assert "run directory" not in stdout  # no success report

    # Continue exactly as the message says: the CLI re-reads the run's own recipe.toml.
    assert cli.main(["train", str(recipe), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert f"resuming {out} from step {step}" in capsys.readouterr().out
    assert_bit_identical(reference[0], out)


def test_sigkill_cli_resumes_from_last_periodic_checkpoint_bit_identical(
        tmp_path: Path, reference: tuple[Path, dict]) -> None:
    raw = recipe_raw()
    out = tmp_path / "run"
    proc = start_cli_run(write_recipe(raw, tmp_path / "engine.toml"), out, tmp_path)

    def logged_past_second_checkpoint() -> bool:
        return any(r["step"] >= 2 * EVERY + 2 for r in read_metrics(out / "metrics.jsonl"))

    wait_until(logged_past_second_checkpoint, proc)
    proc.send_signal(signal.SIGKILL)  # no handler, no final checkpoint
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    newest = checkpoint_steps(out)[-1]
    assert newest % EVERY == 0
    # metrics.jsonl holds records past the checkpoint: resume must drop them, not duplicate them.
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) > newest
    assert not (out / "summary.json").exists()

    logs: list[str] = []
    summary = run(raw, out, resume=True, log=logs.append)
    assert any(f"from step {newest}" in m for m in logs), logs
    assert summary["steps"] == TOTAL and summary["status"] == "completed"
    assert_bit_identical(reference[0], out)


# -- 5. Ctrl-C in-process -------------------------------------------------------------------------


def test_ctrl_c_in_process_checkpoints_last_completed_step_and_resumes(
        tmp_path: Path, reference: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    raw = recipe_raw()
    out = tmp_path / "run"
    original_handler = signal.getsignal(signal.SIGINT)

    def ctrl_c_during_step_8(step: int, result: dict[str, Any]) -> dict[str, Any]:
        if step == 7:  # 0-based: the 8th step
            # Only signal when the driver is listening: a real SIGINT would otherwise end pytest.
            assert signal.getsignal(signal.SIGINT) is not original_handler, "driver installed no SIGINT handler"
            os.kill(os.getpid(), signal.SIGINT)
        return result

    patch_step(monkeypatch, ctrl_c_during_step_8)
    with pytest.raises(Interrupted) as info:
        run(raw, out)
    assert signal.getsignal(signal.SIGINT) is original_handler  # handlers restored
    assert info.value.step == 8
    assert Path(info.value.path) == out / "checkpoints" / "step-00000008.safetensors"
    assert load_state(info.value.path)["step"] == 8
    assert checkpoint_steps(out) == [5, 8]
    assert not (out / "summary.json").exists()

    monkeypatch.undo()
    run(raw, out, resume=True)
    assert_bit_identical(reference[0], out)


class Counter(Loop):
    """A minimal loop: step k adds 1 to ``w`` (no recipe; every hook not defined here is Loop's default)."""

    def __init__(self, on_step: Callable[[int], None] = lambda step: None) -> None:
        self.total_steps = 6
        self.eval_every = 0
        self.w = torch.zeros(())
        self.done: list[int] = []
        self.on_step = on_step

    def train_step(self, step: int) -> dict[str, Any]:
        self.w += 1
        self.done.append(step)
        self.on_step(step)
        return {"loss": torch.tensor(1.0 / (step + 1))}

    def evaluate(self, split: str) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.clone(), "done": list(self.done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w, self.done = state["w"].clone(), list(state["done"])


def test_driver_signal_handler_stops_after_the_step_and_resume_continues(tmp_path: Path) -> None:
    def press_ctrl_c(step: int) -> None:
        if step == 2:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # the handler the driver installed

    ckpt = CheckpointManager(tmp_path / "ck")
    with pytest.raises(Interrupted) as info:
        Driver(Counter(press_ctrl_c), DriverConfig(progress=False), ckpt, None).run()
    assert info.value.step == 3
    assert Path(info.value.path) == ckpt.path_for(3)
    assert ckpt.load_latest()[1]["paradigm"]["w"].item() == 3.0

    counter = Counter()
    driver = Driver(counter, DriverConfig(progress=False), ckpt, None)
    start = driver.restore()
    outcome = driver.run(start)
    assert start == 3 and counter.done == [0, 1, 2, 3, 4, 5] and counter.w.item() == 6.0
    assert outcome.steps == 6 and outcome.status == "completed"


def test_driver_checkpoints_by_wall_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.checkpoint_minutes: a checkpoint once that much wall time passed since the last one."""
    import types

    import archlab.engine.driver as driver_mod

    clock = [0.0]
    monkeypatch.setattr(driver_mod, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    def forty_seconds(step: int) -> None:
        clock[0] += 40.0

    ckpt = CheckpointManager(tmp_path / "ck", keep=10)
    Driver(Counter(forty_seconds), DriverConfig(progress=False, checkpoint_minutes=1.0), ckpt, None).run()
    assert ckpt.steps() == [2, 4, 6]  # 80 s and 160 s after the last save, then the final checkpoint
    off = CheckpointManager(tmp_path / "off", keep=10)
    Driver(Counter(forty_seconds), DriverConfig(progress=False, checkpoint_minutes=0.0), off, None).run()
    assert off.steps() == [6]  # 0: only the final checkpoint


def test_second_ctrl_c_gives_up_immediately() -> None:
    def press_twice(step: int) -> None:
        handler = signal.getsignal(signal.SIGINT)
        handler(signal.SIGINT, None)
        handler(signal.SIGINT, None)

    original = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        Driver(Counter(press_twice), DriverConfig(progress=False), None, None).run()
    assert signal.getsignal(signal.SIGINT) is original


# -- 2. atomicity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["write", "fsync", "replace"])
def test_crash_during_checkpoint_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      failure: str) -> None:
    folder = tmp_path / "ck"
    mgr = CheckpointManager(folder, keep=3)
    first = {"w": torch.arange(6.0), "note": "first"}
    mgr.save(1, first)
    seen_at_crash: list[list[str]] = []

    def crash(exc: BaseException) -> None:
        seen_at_crash.append(sorted(p.name for p in folder.iterdir()))
        raise exc

    if failure == "write":  # half the bytes reach the temp file, then the disk fills up
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, fh: Any) -> None:
                self.fh = fh

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: object) -> None:
                self.fh.close()

            def write(self, data: bytes) -> int:
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                crash(OSError(28, "No space left on device"))
                return 0

        monkeypatch.setattr(ckmod.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
        expected: type[BaseException] = OSError
    elif failure == "fsync":
        monkeypatch.setattr(ckmod.os, "fsync", lambda fd: crash(OSError(5, "Input/output error")))
        expected = OSError
    else:  # Ctrl-C right before the rename
        monkeypatch.setattr(ckmod.os, "replace", lambda src, dst: crash(KeyboardInterrupt()))
        expected = KeyboardInterrupt

    with pytest.raises(expected):
        mgr.save(2, {"w": torch.ones(10_000), "note": "second"})
    monkeypatch.undo()

    # The crash really happened with a temp file on disk ...
    assert len(seen_at_crash) == 1
    assert any(name.endswith(".tmp") for name in seen_at_crash[0]), seen_at_crash
    # ... and left nothing behind: no partial file under a checkpoint name, no temp file.
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000001.safetensors"]
    step, state = mgr.load_latest()
    assert step == 1 and state["note"] == "first" and torch.equal(state["w"], first["w"])


def test_crash_in_periodic_checkpoint_of_a_run_then_resume(
        tmp_path: Path, reference: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    raw = recipe_raw()
    out = tmp_path / "run"
    real_replace = os.replace

    def full_disk_at_step_10(src: Any, dst: Any) -> None:
        if Path(dst).name == "step-00000010.safetensors":
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(ckmod.os, "replace", full_disk_at_step_10)
    with pytest.raises(OSError, match="No space"):
        run(raw, out)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000005.safetensors"]

    logs: list[str] = []
    run(raw, out, resume=True, log=logs.append)
    assert any("from step 5" in m for m in logs), logs
    assert_bit_identical(reference[0], out)


# -- 3. corrupted checkpoints are skipped ---------------------------------------------------------


def _truncate_data(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-7])


def _truncate_header(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:20])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _foreign(p: Path) -> None:  # a valid safetensors file that is not an archlab checkpoint
    st_save_file({"w": torch.zeros(3)}, str(p))


CORRUPTIONS = {"flip-tensor-byte": flip_tensor_byte, "truncate-data": _truncate_data,
               "truncate-header": _truncate_header, "empty": _empty, "foreign": _foreign}


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path: Path, corrupt: str) -> None:
    mgr = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        mgr.save(step, {"w": torch.full((64,), float(step)), "step": step})
    CORRUPTIONS[corrupt](mgr.path_for(3))

    with pytest.raises(CheckpointError):
        load_state(mgr.path_for(3))
    warnings: list[str] = []
    step, state = mgr.load_latest(warn=warnings.append)
    assert step == 2 and state["step"] == 2 and torch.equal(state["w"], torch.full((64,), 2.0))
    assert len(warnings) == 1 and "step-00000003.safetensors" in warnings[0]


def test_all_checkpoints_damaged_gives_none(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    for step in (1, 2):
        mgr.save(step, {"w": torch.ones(8)})
        flip_tensor_byte(mgr.path_for(step))
    warnings: list[str] = []
    assert mgr.load_latest(warn=warnings.append) is None
    assert len(warnings) == 2


def test_resume_skips_damaged_final_checkpoint(tmp_path: Path, reference: tuple[Path, dict]) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    newest = out / "checkpoints" / f"step-{TOTAL:08d}.safetensors"
    flip_tensor_byte(newest)
    (out / "model.safetensors").unlink()

    logs: list[str] = []
    run(recipe_raw(), out, resume=True, log=logs.append)
    assert any("skipping damaged checkpoint" in m and newest.name in m for m in logs), logs
    assert any(f"from step {TOTAL - EVERY}" in m for m in logs), logs
    assert_bit_identical(reference[0], out)


def test_resume_without_any_checkpoint_starts_over_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that died before its first checkpoint restarts from step 0 with a clean metrics log."""
    raw = recipe_raw(train={"steps": 12, "checkpoint_every": 0})
    out = tmp_path / "run"

    def nan_at_step_7(step: int, result: dict[str, Any]) -> dict[str, Any]:
        return {**result, "loss": torch.tensor(math.nan)} if step == 6 else result

    patch_step(monkeypatch, nan_at_step_7)
    with pytest.raises(NonFiniteLoss):
        run(raw, out)
    monkeypatch.undo()
    assert checkpoint_steps(out) == [] and read_metrics(out / "metrics.jsonl")

    logs: list[str] = []
    run(raw, out, resume=True, log=logs.append)
    assert any("has no valid checkpoint; starting from step 0" in m for m in logs), logs
    fresh = tmp_path / "fresh"
    run(raw, fresh)
    assert_bit_identical(fresh, out)


# -- 4. NaN guard ---------------------------------------------------------------------------------


def test_nan_guard_names_the_step_and_keeps_last_good_checkpoint(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"

    def nan_at_step_13(step: int, result: dict[str, Any]) -> dict[str, Any]:
        return {**result, "loss": torch.tensor(math.nan)} if step == 12 else result

    patch_step(monkeypatch, nan_at_step_13)
    with pytest.raises(NonFiniteLoss, match=r"\bstep 13\b"):
        run(recipe_raw(), out)
    assert checkpoint_steps(out) == [5, 10]
    step, state = CheckpointManager(out / "checkpoints").load_latest()
    assert step == 10 and state["step"] == 10
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 12  # nothing logged for step 13
    for name in ("summary.json", "model.safetensors", "config.json"):
        assert not (out / name).exists()


def test_nan_guard_on_real_divergence_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # lr is bounded by 100 (OptimConfig): a deeper residual MLP still blows up at that rate.
    raw = recipe_raw(model={"dropout": 0.0, "hidden": [32, 32, 32, 32], "residual": True},
                     optim={"name": "sgd", "lr": 100.0, "weight_decay": 0.0},
                     train={"steps": 40, "checkpoint_every": 1, "keep_checkpoints": 2, "grad_clip": 0.0})
    recipe = write_recipe(raw, tmp_path / "diverge.toml")
    out = tmp_path / "run"
    code = cli.main(["train", str(recipe), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1
    m = re.search(r"loss is (nan|inf|-inf) at step (\d+)", err)
    assert m, err
    bad_step = int(m.group(2))
    assert 1 < bad_step < 40
    step, state = CheckpointManager(out / "checkpoints").load_latest()
    assert step == bad_step - 1 and state["step"] == bad_step - 1
    assert not (out / "summary.json").exists()


# -- 6. checkpoint files, naming, round trips -----------------------------------------------------


def test_keep_last_k_and_step_naming(tmp_path: Path, reference: tuple[Path, dict]) -> None:
    mgr = CheckpointManager(tmp_path, keep=2)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    for step in (5, 10, 99_999_999, 100_000_000):  # numeric, not lexicographic, order
        mgr.save(step, {"step": step})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "step-100000000.safetensors", "step-99999999.safetensors"]
    assert mgr.steps() == [99_999_999, 100_000_000]
    assert mgr.load_latest()[0] == 100_000_000
    assert CheckpointManager(tmp_path / "one", keep=0).keep == 1

    run_dir, summary = reference
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"step-{s:08d}.safetensors" for s in (TOTAL - 2 * EVERY, TOTAL - EVERY, TOTAL)]
    assert summary["status"] == "completed" and summary["steps"] == TOTAL


def test_final_metrics_add_the_best_evaluation(reference: tuple[Path, dict]) -> None:
    """The driver adds best_<monitor> and best_step (1-based, the step logged with that evaluation)."""
    run_dir, summary = reference
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in evals] == [10, 20, 30, 40, 45]
    best = max(evals, key=lambda r: r["val_acc"])  # the first of equal scores, as the driver keeps it
    assert summary["metrics"]["best_val_acc"] == best["val_acc"] and summary["metrics"]["best_step"] == best["step"]


def assert_same_tree(a: Any, b: Any, path: str = "root") -> None:
    """Equal values *and* kinds: int keys stay int, tuples stay tuples, tensors keep dtype and shape."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}/{k!r}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{path}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"


def test_state_round_trip_preserves_optimizer_state_and_python_types(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("mlp", in_features=6, num_classes=3, hidden=[5], norm="layer")
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2, betas=(0.9, 0.99))
    x = torch.randn(4, 6)
    model(x).square().sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7,
        "misc": {"tuple": (1, "two", None, 3.5, (True, [4])), "none": None, "empty": {}, "list": [],
                 "int_keys": {0: "a", 7: torch.tensor([1, 2])}, "inf": -math.inf, "nan": math.nan,
                 "bf16": torch.ones(3, dtype=torch.bfloat16), "scalar": torch.tensor(2.5, dtype=torch.float64),
                 "bool": torch.tensor([True, False]), "zero_size": torch.zeros(0, 3)},
    }
    assert isinstance(opt.state_dict()["state"], dict) and 0 in opt.state_dict()["state"]  # int keys present
    path = tmp_path / "state.safetensors"
    save_state(state, path)
    loaded = load_state(path)
    assert_same_tree(state, loaded)

    # The restored optimizer continues exactly like the original one.
    twin = create("mlp", in_features=6, num_classes=3, hidden=[5], norm="layer")
    twin_opt = torch.optim.AdamW(param_groups(twin, 0.1), lr=1e-2, betas=(0.9, 0.99))
    twin.load_state_dict(loaded["model"])
    twin_opt.load_state_dict(loaded["optimizer"])
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_round_trip_with_shared_and_colliding_tensors(tmp_path: Path) -> None:
    """Tied weights (one storage, two names) and keys containing '/' must survive a checkpoint."""
    w = torch.randn(4, 4)
    state = {"embed": w, "head": w, "row": w[1], "a/b": torch.zeros(2), "a": {"b": torch.ones(2)}}
    path = tmp_path / "state.safetensors"
    save_state(state, path)
    assert_same_tree(state, load_state(path))


def _draws() -> tuple:
    return (random.random(), random.gauss(0.0, 1.0), np.random.rand(3).tolist(), np.random.randn(3).tolist(),
            torch.rand(3), torch.randn(3))


def test_rng_state_round_trip_reproduces_the_next_draws(tmp_path: Path) -> None:
    seed_everything(11)
    random.gauss(0.0, 1.0)  # leaves a cached gaussian in Python's state
    np.random.randn(1)  # and in NumPy's
    path = tmp_path / "rng.safetensors"
    save_state({"rng": rng_state()}, path)
    expected = _draws()
    seed_everything(12345)
    assert _draws()[0] != expected[0]
    set_rng_state(load_state(path)["rng"])
    again = _draws()
    assert again[:4] == expected[:4]
    assert torch.equal(again[4], expected[4]) and torch.equal(again[5], expected[5])


# -- 7. schedules, weight decay, accumulation, early stopping, clipping ---------------------------


@pytest.mark.parametrize(("cfg", "total", "expected"), [
    (OptimConfig(schedule="cosine", warmup_steps=4, min_lr_ratio=0.1), 14,
     {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 6: 0.9140576474687264, 9: 0.55, 14: 0.1, 20: 0.1}),
    (OptimConfig(schedule="cosine"), 10, {0: 1.0, 5: 0.5, 10: 0.0}),
    (OptimConfig(schedule="linear"), 10, {0: 1.0, 5: 0.5, 9: 0.1, 10: 0.0, 11: 0.0}),
    (OptimConfig(schedule="linear", warmup_steps=2, min_lr_ratio=0.2), 12, {0: 0.5, 1: 1.0, 2: 1.0, 7: 0.6, 12: 0.2}),
    (OptimConfig(schedule="step", step_size=3, gamma=0.5), 20, {0: 1.0, 2: 1.0, 3: 0.5, 8: 0.25, 9: 0.125}),
    (OptimConfig(schedule="step", milestones=[2, 5], gamma=0.1), 20, {1: 1.0, 2: 0.1, 4: 0.1, 5: 0.01, 100: 0.01}),
    (OptimConfig(schedule="constant", warmup_steps=4), 20, {0: 0.25, 2: 0.75, 3: 1.0, 50: 1.0}),
])
def test_lr_factor_values(cfg: OptimConfig, total: int, expected: dict[int, float]) -> None:
    for step, value in expected.items():
        assert lr_factor(step, total, cfg) == pytest.approx(value, rel=1e-12, abs=1e-15), f"step {step}"


def test_logged_lr_follows_the_schedule_across_resumes(reference: tuple[Path, dict]) -> None:
    cfg = from_dict(recipe_raw()).optim["model"]
    train_records = [r for r in read_metrics(reference[0] / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, TOTAL + 1))
    for r in train_records:  # the record of step s was logged after optimizer step s - 1 (0-based)
        assert r["lr"] == pytest.approx(cfg.lr * lr_factor(r["step"] - 1, TOTAL, cfg), rel=1e-12)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_weight_decay_groups_exclude_biases_and_norm_weights(norm: str) -> None:
    model = create("mlp", in_features=64, hidden=[16, 16], norm=norm)
    named = dict(model.named_parameters())
    matrices = {n for n, p in named.items() if n.endswith("linear.weight") or n == "head.weight"}
    others = set(named) - matrices
    assert any(".norm." in n for n in others) and any(n.endswith("bias") for n in others)

    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05))
    by_id = {id(p): n for n, p in named.items()}
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {by_id[id(p)] for p in decay["params"]} == matrices
    assert {by_id[id(p)] for p in no_decay["params"]} == others


def test_grad_accumulation_equals_the_large_batch(tmp_path: Path) -> None:
    """accumulate=2 x batch 32 == accumulate=1 x batch 64, up to float summation order.

    Same data order: BatchStream draws one ``randperm(n)`` per epoch from the same seeded generator in
    both runs, and with 40 batches of 32 = 20 batches of 64 per epoch, micro-batches 2k and 2k+1 are
    exactly the halves of batch k, also after the epoch boundary at step 20 (25 steps run). No
    dropout or augmentation, whose random draws would be consumed per micro-batch.
    """
    n_train = len(load_dataset("digits").train)
    assert n_train // 32 == 2 * (n_train // 64)
    base = recipe_raw(model={"dropout": 0.0}, data={"augment": []},
                      train={"steps": 25, "checkpoint_every": 0, "eval_every": 0})
    small = copy.deepcopy(base)
    small["train"]["accumulate"] = 2
    large = copy.deepcopy(base)
    large["data"]["batch_size"] = 64
    run(small, tmp_path / "small")
    run(large, tmp_path / "large")

    a, b = final_weights(tmp_path / "small"), final_weights(tmp_path / "large")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    init = create("mlp", **from_dict(base).model_config).state_dict()
    assert any((a[k] - init[k]).abs().max() > 1e-2 for k in a)  # it did train
    loss_a = [r["loss"] for r in read_metrics(tmp_path / "small" / "metrics.jsonl") if r["split"] == "train"]
    loss_b = [r["loss"] for r in read_metrics(tmp_path / "large" / "metrics.jsonl") if r["split"] == "train"]
    assert len(loss_a) == len(loss_b) == 25
    np.testing.assert_allclose(loss_a, loss_b, atol=1e-6, rtol=0)


def test_early_stopping_stops_when_val_metric_stalls(tmp_path: Path) -> None:
    # lr 0: val_acc never changes, so evaluations 2 and 3 do not improve on evaluation 1.
    raw = recipe_raw(optim={"lr": 0.0}, train={"eval_every": 1, "early_stopping": 2})
    out = tmp_path / "run"
    summary = run(raw, out)
    assert summary["status"] == "early_stopped" and summary["steps"] == 3
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "val"] == [1, 2, 3]
    assert checkpoint_steps(out)[-1] == 3  # the final checkpoint is at the stopping step


def test_early_stopping_tracker_min_mode_and_state() -> None:
    es = EarlyStopping(patience=2, mode="min", min_delta=0.01)
    assert es.update(1.0) and es.update(0.95)
    assert not es.update(0.945) and not es.should_stop  # improved by less than min_delta
    twin = EarlyStopping(patience=2, mode="min", min_delta=0.01)
    twin.load_state_dict(es.state_dict())
    assert not twin.update(0.96) and twin.should_stop and twin.best == 0.95
    assert not EarlyStopping(patience=0).should_stop


def make_supervised(raw: dict[str, Any]) -> Supervised:
    recipe = from_dict(copy.deepcopy(raw))
    seed_everything(recipe.seed)
    cpu = torch.device("cpu")
    data = load_dataset(recipe.data.name, recipe.data.options, recipe.data.val_fraction, recipe.data.split_seed)
    model = create(recipe.model_name, **recipe.model_config)
    ctx = Context(device=cpu, precision=Precision(recipe.train.precision, cpu), dist=DistInfo(), seed=recipe.seed)
    return Supervised(recipe, model, data, ctx)


def grads_after_first_step(grad_clip: float) -> list[torch.Tensor]:
    raw = recipe_raw(model={"dropout": 0.0}, data={"augment": []}, train={"grad_clip": grad_clip})
    loop = make_supervised(raw)
    loop.train_step(0)
    return [p.grad.clone() for p in loop.model.parameters()]


def test_gradient_clipping_bounds_the_global_norm() -> None:
    clip = 0.01
    unclipped = grads_after_first_step(0.0)
    clipped = grads_after_first_step(clip)
    norm_u = torch.linalg.vector_norm(torch.cat([g.flatten() for g in unclipped]))
    norm_c = torch.linalg.vector_norm(torch.cat([g.flatten() for g in clipped]))
    assert norm_u > 10 * clip  # so clipping has work to do
    assert clip * 0.999 <= norm_c <= clip * (1 + 1e-5)
    for gu, gc in zip(unclipped, clipped, strict=True):  # same direction, scaled
        torch.testing.assert_close(gc * (norm_u / norm_c), gu, atol=1e-6, rtol=1e-4)


# -- 8. precision ---------------------------------------------------------------------------------


def test_bf16_on_cpu_trains_with_finite_loss(tmp_path: Path) -> None:
    with Precision("bf16", torch.device("cpu")).autocast():
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.bfloat16
    raw = recipe_raw(train={"precision": "bf16", "steps": 6, "checkpoint_every": 0, "eval_every": 3})
    summary = run(raw, tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 6 and all(isinstance(v, float) and math.isfinite(v) for v in losses)
    assert summary["steps"] == 6 and all(math.isfinite(v) for v in summary["metrics"].values())


def test_fp16_on_cpu_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = recipe_raw(train={"precision": "fp16"})
    with pytest.raises(ArchlabError, match="fp16"):
        run(raw, tmp_path / "run")
    assert not (tmp_path / "run").exists()

    recipe = write_recipe(raw, tmp_path / "fp16.toml")
    assert cli.main(["train", str(recipe), "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fp16" in err
    assert not (tmp_path / "cli").exists()


# -- 9. seeds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7, MAX_SEED, np.int64(5)])
def test_check_seed_accepts_the_range_every_library_takes(seed: Any) -> None:
    assert check_seed(seed) == int(seed) and type(check_seed(seed)) is int


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**63, 1180591620717411303424, True, 1.5, "3", None])
def test_check_seed_rejects_the_rest_in_one_line(seed: Any) -> None:
    # 1 and 1 + 2**32 used to be one NumPy stream; 2**64 and up, and negative seeds, were tracebacks
    with pytest.raises(ArchlabError, match=r"^seed must be an integer in \[0, 4294967295\]") as info:
        check_seed(seed)
    assert "\n" not in str(info.value) and repr(seed) in str(info.value)


def test_seed_everything_checks_its_seed() -> None:
    with pytest.raises(ArchlabError, match="seed must be"):
        seed_everything(1180591620717411303424)
    seed_everything(MAX_SEED)  # the top of the range: Python, NumPy's legacy seeding and torch all take it
