"""``archlab train --nproc 2`` computes the same training as one process.

Both ranks draw the same global batch order and augmentation, each takes half of every global batch,
and gradients are averaged with one all-reduce, so two workers must reproduce the single-process run.
Not bit for bit: the single process sums the per-example gradients of all 32 examples in one
reduction, while two workers each reduce 16 and the all-reduce adds the two halves, a different
floating-point summation order (differences ~1e-8 per step). Hence allclose with atol 1e-6.
The recipe has no dropout (each worker would draw masks for its own half from the same global RNG
state, i.e. different masks than one process) and no BatchNorm (statistics over half batches).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from archlab.engine import distributed
from archlab.engine.metrics import read_metrics
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import train

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

REPO = Path(__file__).resolve().parents[1]
STEPS = 20

RAW = {
    "name": "ddp",
    "seed": 1,
    "model": {"name": "mlp", "in_features": 64, "num_classes": 10, "hidden": [32, 32]},
    "data": {"name": "digits", "batch_size": 32, "augment": ["shift:1"]},
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05, "schedule": "cosine", "warmup_steps": 3},
    "train": {"steps": STEPS, "checkpoint_every": 10, "log_every": 1, "eval_every": 10, "grad_clip": 1.0,
              "threads": 1, "device": "cpu"},
}


# Loaded by every process of the --nproc run as `sitecustomize` (PYTHONPATH): rank 1 lingers after
# joining the process group, long after rank 0 has created the run directory. A rank that checked
# "run directory exists and is not empty" only after joining would then refuse to start.
LATE_RANK_1 = """
import os
import time

from archlab.engine import distributed

_init = distributed.init


def _late_init(device_type):
    info = _init(device_type)
    if info.rank == 1:
        time.sleep(3.0)
    return info


distributed.init = _late_init
"""


def test_two_processes_equal_one(tmp_path: Path) -> None:
    single = tmp_path / "single"
    one = train(from_dict(RAW), out=single, progress=False, log=lambda _msg: None)

    recipe = tmp_path / "ddp.toml"
    recipe.write_text(tomli_w.dumps(RAW))
    ddp = tmp_path / "ddp"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(LATE_RANK_1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "archlab", "train", str(recipe), "--nproc", "2", "--out", str(ddp),
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    two = json.loads((ddp / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["steps"] == one["steps"] == STEPS
    assert two["status"] == one["status"] == "completed"

    a, b = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=lambda m, k=key: f"{k}: {m}")
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, abs=1e-5), name

    # Same log: same steps and learning rates; the train loss is the global-batch loss on every rank.
    rec_1, rec_2 = read_metrics(single / "metrics.jsonl"), read_metrics(ddp / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in rec_1] == [(r["step"], r["split"]) for r in rec_2]
    for r1, r2 in zip(rec_1, rec_2, strict=True):
        assert r1.keys() == r2.keys()
        for k in r1:
            assert r2[k] == pytest.approx(r1[k], abs=1e-5), (r1["step"], r1["split"], k)
    # Only rank 0 writes checkpoints, under the usual names.
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["step-00000010.safetensors",
                                                                        "step-00000020.safetensors"]


# ------------------------------------------------------------------------------ launcher and workers
def _hooked_launch(tmp_path: Path, hook_source: str, **popen: Any) -> subprocess.Popen:
    """Start ``archlab train --nproc 2`` on the RAW recipe, with ``hook_source`` as every process's
    ``sitecustomize``; allowed on machines with fewer than 2 cores."""
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(tomli_w.dumps(RAW))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(hook_source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]), "OMP_NUM_THREADS": "1",
           distributed.OVERSUBSCRIBE_ENV: "1", "PIDS": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-m", "archlab", "train", str(recipe), "--nproc", "2",
                             "--out", str(tmp_path / "run"), "--no-progress"], cwd=tmp_path, env=env, **popen)


# Every worker writes its pid to $PIDS/<rank>.pid once it has joined, then "trains" for two minutes.
TRAIN_FOR_MINUTES = """
import os
import time
from pathlib import Path

from archlab.engine import distributed

_init = distributed.init


def _init_then_train(device_type):
    info = _init(device_type)
    tmp = Path(os.environ["PIDS"], f"{info.rank}.tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(tmp.with_suffix(".pid"))  # whole or not at all: the test reads it while we run
    time.sleep(120)
    return info


distributed.init = _init_then_train
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, waiting for its new parent to reap it) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows the parenthesized command name


@pytest.mark.skipif(sys.platform != "linux", reason="reads process states from /proc")
def test_workers_end_when_the_launcher_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "launcher.log"
    with log.open("w") as out:
        launcher = _hooked_launch(tmp_path, TRAIN_FOR_MINUTES, stdout=out, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(pid_files := list(tmp_path.glob("*.pid"))) < 2:
            assert launcher.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the workers did not start:\n" + log.read_text()
            time.sleep(0.1)
        workers = [int(p.read_text()) for p in pid_files]
        assert all(_running(pid) for pid in workers)
        launcher.kill()  # SIGKILL, as the OOM killer sends: the launcher cannot clean up
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(pid) for pid in workers), "workers outlived their launcher"
    finally:
        launcher.kill()
        for pid in workers:  # a failed test must not leave two-minute orphans behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# Rank 1 hits a user error after joining; rank 0 is fine and keeps training.
RANK_1_USER_ERROR = """
import time

from archlab.engine import distributed
from archlab.errors import ArchlabError

_init = distributed.init


def _init_rank_1_fails(device_type):
    info = _init(device_type)
    if info.rank == 1:
        raise ArchlabError("rank 1 cannot read its shard")
    time.sleep(120)
    return info


distributed.init = _init_rank_1_fails
"""


def test_a_user_error_in_one_worker_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # torch's agent stops rank 0 as soon as rank 1 has failed, so the launcher must not wait for rank 0 to print.
    launcher = _hooked_launch(tmp_path, RANK_1_USER_ERROR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = launcher.communicate(timeout=180)
    finally:
        launcher.kill()
    assert launcher.returncode == 2, out + err
    assert (out + err).count("rank 1 cannot read its shard") == 1, out + err
    assert "Traceback" not in err and "distributed run failed" not in err, err


def _child_failed(codes: dict[int, int]) -> ChildFailedError:
    failures = {rank: ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="<none>")
                for rank, code in codes.items()}
    return ChildFailedError("archlab", failures)


def test_the_launcher_prints_each_worker_user_error_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv(distributed.ERRORS_ENV, str(tmp_path))
    for rank, message in enumerate(["no data", "no data", "bad shard"]):  # what report_to_launcher leaves behind
        monkeypatch.setenv("RANK", str(rank))
        assert distributed.report_to_launcher(ArchlabError(message))
    # ranks 0 and 1 hit a user error; torch's agent then stopped rank 2 with SIGTERM
    assert distributed._report_failure(_child_failed({0: 2, 1: 2, 2: -15}), tmp_path) == 2
    assert capsys.readouterr().err.splitlines() == ["archlab: error: no data"]
    assert distributed._report_failure(_child_failed({0: 2, 2: 2}), tmp_path) == 2
    assert capsys.readouterr().err.splitlines() == ["archlab: error: no data", "archlab: error: bad shard"]
    # a crash (a bug: exit 1, traceback above) or a kill is not a user error, even next to one
    assert distributed._report_failure(_child_failed({0: 2, 1: 1}), tmp_path) == 1
    assert "worker rank 1 exited with code 1" in capsys.readouterr().err
    assert distributed._report_failure(_child_failed({0: -9, 1: -15}), tmp_path) == 1
    assert "worker rank 0 was killed by signal 9" in capsys.readouterr().err


def test_report_to_launcher_outside_a_launch_leaves_printing_to_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(distributed.ERRORS_ENV, raising=False)
    assert not distributed.report_to_launcher(ArchlabError("x"))


def test_nproc_beyond_the_cores_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert 1 <= distributed.usable_cores() <= (os.cpu_count() or 1)
    monkeypatch.setattr(distributed, "usable_cores", lambda: 2)
    monkeypatch.delenv(distributed.OVERSUBSCRIBE_ENV, raising=False)
    distributed.check_nproc(2)
    with pytest.raises(ArchlabError, match=r"^--nproc 64 is more workers than the 2 CPU core\(s\)") as info:
        distributed.check_nproc(64)
    assert "\n" not in str(info.value) and distributed.OVERSUBSCRIBE_ENV in str(info.value)
    with pytest.raises(ArchlabError, match="--nproc must be >= 1"):
        distributed.check_nproc(0)
    monkeypatch.setenv(distributed.OVERSUBSCRIBE_ENV, "1")
    distributed.check_nproc(64)
