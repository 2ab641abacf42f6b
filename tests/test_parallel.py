"""``train.parallel`` on two gloo processes equals one process (docs/scale.md, archlab/engine/parallel.py).

Two workers are started once (torch.multiprocessing, spawn) and train every scenario below in one process
group, through the same :func:`archlab.runner.train` that ``archlab train --nproc 2`` runs in each worker;
each scenario is then resumed from its middle checkpoint into a second run directory. The tests compare,
in this process:

* fsdp, tensor, pipeline (GPipe and 1F1B): the per-step train losses, final metrics and final weights
  equal the one-process run of the same recipe (<= 1e-5; not bit for bit: the reductions add in another
  order), on a tiny GPT (lm loop) and, for fsdp, an MLP (supervised loop);
* local SGD / DiLoCo: the final weights equal a one-process simulation of the two workers written out
  here (inner AdamW steps on each worker's half batch, outer Nesterov step every H steps);
* every strategy: the resumed run ends with the weights of the uninterrupted one;
* fsdp: each rank holds about half of the parameter and optimizer-state bytes (local shards measured).

The recipes have no dropout (each worker or stage would draw other masks than one process). AdamW's eps is
1e-6: the key bias of attention has an exactly zero gradient, so what reaches the optimizer there is
rounding noise (~1e-10), which eps = 1e-8 would scale up to lr-sized steps that differ between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file

from archlab.engine.metrics import read_metrics
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import train

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this torch build")

WORLD = 2
STEPS = 6
TIMEOUT_S = 420  # all scenarios of both workers; a hang (a collective one rank never reaches) fails here

GPT = {"seed": 3, "model": {"name": "gpt", "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16},
       "data": {"name": "text_toy", "batch_size": 8},
       "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1, "schedule": "cosine", "warmup_steps": 2,
                 "eps": 1e-6},
       "train": {"loop": "lm", "steps": STEPS, "eval_every": STEPS, "checkpoint_every": STEPS // 2, "log_every": 1,
                 "grad_clip": 0.5, "threads": 1, "device": "cpu", "checkpoint_minutes": 0},
       "loop": {"eval_iters": 2}}
MLP = {"seed": 5, "model": {"name": "mlp", "in_features": 64, "num_classes": 10, "hidden": [24, 16]},
       "data": {"name": "digits", "batch_size": 16},
       "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.05},
       "train": {"steps": STEPS, "eval_every": STEPS, "checkpoint_every": STEPS // 2, "log_every": 1,
                 "grad_clip": 1.0, "threads": 1, "device": "cpu", "checkpoint_minutes": 0}}
H = 4  # local SGD: outer steps after steps 4 and 6 (the last); the checkpoint at step 3 falls between


def _with(raw: dict[str, Any], **train: Any) -> dict[str, Any]:
    return {**raw, "train": {**raw["train"], **train}}


SCENARIOS = {
    "fsdp_gpt": _with(GPT, parallel="fsdp"),
    "fsdp_mlp": _with(MLP, parallel="fsdp"),
    "tensor_gpt": _with(GPT, parallel="tensor"),
    "gpipe_gpt": _with(GPT, parallel="pipeline", pipeline_schedule="gpipe", microbatches=2),
    "1f1b_gpt": _with(GPT, parallel="pipeline", pipeline_schedule="1f1b", microbatches=4),
    "diloco_mlp": _with(MLP, parallel="local_sgd", local_sgd_every=H, outer_lr=0.7, outer_momentum=0.9,
                        eval_every=H * 2),
}


# ------------------------------------------------------------------------------------- the two workers
def _fsdp_memory() -> dict[str, float]:
    """Bytes of parameters and AdamW state this rank holds under fsdp, and of the whole model."""
    from torch.distributed.tensor import DTensor

    from archlab import create
    from archlab.engine.device import Precision
    from archlab.engine.distributed import DistInfo
    from archlab.engine.loop import Context, Trainable
    from archlab.engine.optim import OptimConfig
    from archlab.engine.parallel import FSDP, ParallelConfig

    info = DistInfo(dist.get_rank(), dist.get_world_size())
    cpu = torch.device("cpu")
    model = create("gpt", vocab_size=96, block_size=16, n_layer=4, n_head=4, n_embd=64)
    full_params = sum(p.numel() * p.element_size() for p in model.parameters())
    ctx = Context(cpu, Precision("fp32", cpu), info, seed=0)
    t = Trainable("model", model, OptimConfig(), 1, ctx, 0.0, FSDP(ParallelConfig("fsdp"), info, cpu, 1))
    t.zero_grad()
    t.backward(F.cross_entropy(model(torch.zeros(2, 16, dtype=torch.long)).flatten(0, 1),
                               torch.ones(32, dtype=torch.long)))
    t.step()

    def local(x: torch.Tensor) -> int:
        x = x.to_local() if isinstance(x, DTensor) else x
        return x.numel() * x.element_size()

    states = [v for s in t.optimizer.state.values() for k, v in s.items() if k != "step"]
    return {"params": sum(local(p) for p in model.parameters()), "optimizer": sum(local(v) for v in states),
            "full_params": full_params, "full_optimizer": 2 * full_params}


def _resume(name: str, recipe: Any, root: Path) -> None:
    """Run ``name`` again from its middle checkpoint (its copy, with the later state removed)."""
    a, b = root / name, root / f"{name}_resumed"
    if dist.get_rank() == 0:
        shutil.copytree(a, b)
        keep = f"step-{STEPS // 2:08d}.safetensors"
        later = [p for p in (b / "checkpoints").glob("step-*") if p.name != keep]
        for late in [b / "summary.json", b / "model.safetensors", b / "config.json", *later]:
            late.unlink()
    dist.barrier()
    train(recipe, out=b, resume=True, progress=False, log=lambda _m: None)


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    out = Path(root)
    try:
        for name, raw in SCENARIOS.items():
            train(from_dict(raw), out=out / name, progress=False, log=lambda _m: None)
            _resume(name, from_dict(raw), out)
        (out / f"memory-{rank}.json").write_text(json.dumps(_fsdp_memory()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parallel")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(root)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, f"the two workers did not finish within {TIMEOUT_S} s"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return root


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One-process runs of the two recipes (ddp on one process is plain training)."""
    root = tmp_path_factory.mktemp("single")
    for name, raw in (("gpt", GPT), ("mlp", MLP)):
        train(from_dict(raw), out=root / name, progress=False, log=lambda _m: None)
    return {"gpt": root / "gpt", "mlp": root / "mlp"}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=atol, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


# -------------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", ["fsdp_gpt", "fsdp_mlp", "tensor_gpt", "gpipe_gpt", "1f1b_gpt"])
def test_two_processes_equal_one(name: str, runs: Path, single: dict[str, Path]) -> None:
    ref = single["mlp" if name.endswith("mlp") else "gpt"]
    two, one = json.loads((runs / name / "summary.json").read_text()), json.loads((ref / "summary.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == STEPS
    _assert_same_weights(_weights(ref), _weights(runs / name), atol=1e-5)
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, abs=1e-5), key
    # the logged train loss of every step is the global batch's, as one process computes it
    rec_1 = [r for r in read_metrics(ref / "metrics.jsonl") if r["split"] == "train"]
    rec_2 = [r for r in read_metrics(runs / name / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in rec_1] == [r["step"] for r in rec_2] == list(range(1, STEPS + 1))
    for r1, r2 in zip(rec_1, rec_2, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-5) and r2["lr"] == pytest.approx(r1["lr"])


def _diloco_reference(raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Two local-SGD workers simulated in one process, written out from the algorithm (DiLoCo, Alg. 1)."""
    from archlab.engine.optim import build_optimizer
    from archlab.engine.seed import seed_everything
    from archlab.train.supervised import BatchStream, Supervised

    recipe = from_dict(raw)
    tc = recipe.train
    seed_everything(recipe.seed)  # as the runner does before loading data and building the model
    data = Supervised.load_data(recipe)
    start = Supervised.build_model(recipe, data, torch.device("cpu"))
    workers = [Supervised.build_model(recipe, data, torch.device("cpu")) for _ in range(WORLD)]
    for w in workers:
        w.load_state_dict(start.state_dict())
    opts = [build_optimizer(w, recipe.optim["model"]) for w in workers]
    outer = {k: v.clone() for k, v in start.state_dict().items()}
    momentum = {k: torch.zeros_like(v) for k, v in outer.items()}
    stream = BatchStream(len(data.train), recipe.data.batch_size, seed=recipe.seed)
    half = recipe.data.batch_size // WORLD
    for step in range(1, tc.steps + 1):
        idx = stream.next()
        for r, (w, opt) in enumerate(zip(workers, opts, strict=True)):
            x, y = data.train.x[idx[r * half:(r + 1) * half]], data.train.y[idx[r * half:(r + 1) * half]]
            opt.zero_grad()
            F.cross_entropy(w(x), y).backward()
            torch.nn.utils.clip_grad_norm_(w.parameters(), tc.grad_clip)
            opt.step()
        if step % tc.local_sgd_every == 0 or step == tc.steps:
            mean = {k: sum(w.state_dict()[k] for w in workers) / WORLD for k in outer}
            for k in outer:
                delta = outer[k] - mean[k]                          # pseudo-gradient
                momentum[k] = tc.outer_momentum * momentum[k] + delta
                outer[k] = outer[k] - tc.outer_lr * (delta + tc.outer_momentum * momentum[k])  # Nesterov
            for w in workers:
                w.load_state_dict(outer)
    return outer


def test_local_sgd_diloco_equals_a_one_process_simulation(runs: Path) -> None:
    raw = SCENARIOS["diloco_mlp"]
    _assert_same_weights(_diloco_reference(raw), _weights(runs / "diloco_mlp"), atol=1e-5)
    # and it is not plain data parallelism: the outer momentum moved the weights elsewhere
    plain = train(from_dict(_with(MLP, eval_every=H * 2)), out=runs / "plain_mlp", progress=False, log=lambda _m: None)
    assert plain["steps"] == STEPS
    diff = max((a - b).abs().max().item() for a, b in zip(_weights(runs / "plain_mlp").values(),
                                                          _weights(runs / "diloco_mlp").values(), strict=True))
    assert diff > 1e-3


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(name: str, runs: Path) -> None:
    resumed = json.loads((runs / f"{name}_resumed" / "summary.json").read_text())
    assert resumed["steps"] == STEPS and resumed["world_size"] == 2
    _assert_same_weights(_weights(runs / name), _weights(runs / f"{name}_resumed"), atol=1e-6)


def test_fsdp_keeps_about_half_of_the_parameter_and_optimizer_bytes_per_rank(runs: Path) -> None:
    ranks = [json.loads((runs / f"memory-{r}.json").read_text()) for r in range(WORLD)]
    for kind in ("params", "optimizer"):
        full = ranks[0][f"full_{kind}"]
        assert sum(m[kind] for m in ranks) == full  # the shards add up to the whole, nothing replicated
        for m in ranks:
            assert m[kind] <= full / WORLD * 1.05, (kind, m)  # row shards differ by at most one row


def test_checkpoints_hold_full_tensors_in_the_model_layout(runs: Path, single: dict[str, Path]) -> None:
    """A tensor-parallel checkpoint stores the fused qkv in the model's [q; k; v] layout, unsharded."""
    from archlab.engine.checkpoint import load_state

    state = load_state(runs / "tensor_gpt" / "checkpoints" / f"step-{STEPS:08d}.safetensors")
    module = state["paradigm"]["model"]["module"]
    _assert_same_weights(_weights(runs / "tensor_gpt"), dict(module), atol=0)


# ------------------------------------------------------------------------------------ one-line errors
@pytest.mark.parametrize(("raw", "message"), [
    (_with(MLP, parallel="pipeline"), "pipeline needs a GPT model"),
    (_with(MLP, parallel="tensor"), "tensor parallel supports the transformer family"),
    (_with({**MLP, "model": {"name": "vit", "image_size": 8, "patch_size": 4, "in_channels": 1, "num_classes": 10,
                             "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32}}, parallel="fsdp"),
     "cannot shard ViT: its class-token shortcut"),
    (_with(GPT, parallel="fsdp", compile=True), "does not support train.compile"),
    (_with(GPT, parallel="local_sgd", local_sgd_every=4, eval_every=6), "make train.eval_every a multiple of 4"),
])
def test_a_strategy_that_does_not_fit_is_a_one_line_error_before_training(raw: dict[str, Any], message: str,
                                                                          tmp_path: Path) -> None:
    with pytest.raises(ArchlabError, match=message) as info:
        train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("train_keys", "message"), [
    ({"parallel": "zero"}, "train.parallel"),
    ({"parallel": "pipeline", "microbatches": 3}, "divisible by train.microbatches 3"),
    ({"local_sgd_every": 0}, "local_sgd_every"),
    ({"outer_momentum": 1.0}, "outer_momentum"),
    ({"pipeline_schedule": "zb"}, "pipeline_schedule"),
])
def test_bad_parallel_keys_fail_in_the_recipe(train_keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ArchlabError, match=message):
        from_dict(_with(GPT, **train_keys))


def test_a_loop_without_the_capability_rejects_the_strategy() -> None:
    raw = {"model": {"name": "t5", "d_model": 16, "num_heads": 2, "d_ff": 32, "num_layers": 1,
                     "num_decoder_layers": 1, "vocab_size": 32},
           "data": {"name": "seq2seq"}, "train": {"loop": "seq2seq", "steps": 1, "parallel": "fsdp"}}
    with pytest.raises(ArchlabError, match="loop 'seq2seq' supports ddp, not 'fsdp'"):
        from_dict(raw)
