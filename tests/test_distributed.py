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

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from archlab.engine.metrics import read_metrics
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
