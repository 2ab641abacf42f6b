"""``archlab bench parallel``: step time and per-rank memory of each ``train.parallel`` strategy, 2 processes vs 1.

The bench harness runs in one process, so :func:`run` starts the workers itself: this file, run as a
script (``python parallel.py WORLD RANK PORT OUT PARAMS_JSON``), is one worker. Each worker joins a gloo
process group (none for 1 process), and for every strategy builds the same GPT (seeded), wraps it in a
:class:`~archlab.engine.loop.Trainable` under that strategy, and times ``Trainable.batch_step`` on random
token batches (the global batch is the same for every strategy and world size). Memory is what the
rank's tensors hold, counted from their local parts: parameters, gradients, optimizer state.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STRATEGIES = [("ddp", {}), ("fsdp", {}), ("tensor", {}), ("pipeline", {"pipeline_schedule": "gpipe"}),
              ("pipeline", {"pipeline_schedule": "1f1b"}), ("local_sgd", {"local_sgd_every": 4})]


def _label(name: str, extra: dict[str, Any]) -> str:
    return f"{name} ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else name


def _bytes(tensors: Any) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def worker(world: int, rank: int, port: int, out: str, params: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from archlab import create
    from archlab.engine.device import Precision
    from archlab.engine.distributed import DistInfo
    from archlab.engine.loop import Context, Trainable
    from archlab.engine.optim import OptimConfig
    from archlab.engine.parallel import ParallelConfig, make_strategy

    torch.set_num_threads(params["threads"])
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    info = DistInfo(rank, world)
    cpu = torch.device("cpu")
    ctx = Context(cpu, Precision("fp32", cpu), info, seed=0)
    m = params["model"]
    batch, block, steps, warmup = params["batch"], m["block_size"], params["steps"], params["warmup"]
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, m["vocab_size"], (batch, block + 1), generator=gen) for _ in range(warmup + steps)]
    strategies = STRATEGIES if world > 1 else [("ddp", {})]
    results = []
    for name, extra in strategies:
        cfg = ParallelConfig(name, microbatches=params["microbatches"], **extra)
        torch.manual_seed(0)
        model = create("gpt", **m)
        total = warmup + steps
        t = Trainable("model", model, OptimConfig(lr=1e-3), total, ctx, 1.0, make_strategy(cfg, info, cpu, total))
        times = []
        for i, b in enumerate(batches):
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            out_ = t.batch_step(1, 0.0, lambda b=b: (b[:, :-1], b[:, 1:]), model,
                                lambda logits, y: F.cross_entropy(logits.flatten(0, 1), y.flatten()))
            loss = float(out_["loss"])
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        params_b = _bytes(model.parameters())
        grads_b = _bytes(p.grad for p in model.parameters() if p.grad is not None)
        optim_b = _bytes(v for s in t.optimizer.state.values() for v in s.values() if v.dim() > 0)
        results.append({"strategy": _label(name, extra), "world": world, "rank": rank,
                        "step_ms": 1000 * statistics.median(times), "params_mb": params_b / 2**20,
                        "grads_mb": grads_b / 2**20, "optimizer_mb": optim_b / 2**20, "final_loss": loss})
    Path(out, f"{world}-{rank}.json").write_text(json.dumps(results))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, out: str, params: dict[str, Any]) -> None:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(params["threads"])}
    procs = [subprocess.Popen([sys.executable, __file__, str(world), str(r), str(port), out, json.dumps(params)],
                              env=env) for r in range(world)]
    try:
        codes = [p.wait(timeout=params["timeout_s"]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    if any(codes):
        raise RuntimeError(f"a benchmark worker failed (exit codes {codes})")


def run(params: dict[str, Any], log: Any = print) -> tuple[dict[str, Any], str]:
    with tempfile.TemporaryDirectory(prefix="archlab-bench-parallel-") as out:
        for world in (1, 2):
            log(f"parallel: {world} process(es) ...")
            _launch(world, out, params)
        rows = [r for f in sorted(Path(out).glob("*.json")) for r in json.loads(f.read_text())]
    base = next(r for r in rows if r["world"] == 1)
    table = []
    for r in rows:
        if r["world"] == 2 and r["rank"] == 1:
            continue
        ranks = [x for x in rows if x["world"] == r["world"] and x["strategy"] == r["strategy"]]
        table.append({"strategy": r["strategy"], "processes": r["world"],
                      "step_ms": max(x["step_ms"] for x in ranks),
                      "slowdown_vs_1": max(x["step_ms"] for x in ranks) / base["step_ms"],
                      **{k: max(x[k] for x in ranks) for k in ("params_mb", "grads_mb", "optimizer_mb")},
                      "final_loss": [round(x["final_loss"], 6) for x in ranks]})
    md = ["| strategy | processes | step (ms) | time vs 1 process | params MB / rank | grads MB / rank | "
          "optimizer MB / rank | final loss |", "|---|---|---|---|---|---|---|---|"]
    for t in table:
        md.append(f"| {t['strategy']} | {t['processes']} | {t['step_ms']:.1f} | {t['slowdown_vs_1']:.2f}x | "
                  f"{t['params_mb']:.2f} | {t['grads_mb']:.2f} | {t['optimizer_mb']:.2f} | "
                  f"{', '.join(f'{v:.4f}' for v in t['final_loss'])} |")
    md.append("")
    md.append("Step time: median of the slowest rank; memory: the larger rank's local tensor bytes (DTensor "
              "shards counted by their local part). The final loss column (per rank) checks that every "
              "strategy trained the same model on the same batches: all but local SGD equal the 1-process "
              "run up to summation order.")
    return {"params": params, "rows": table}, "\n".join(md) + "\n"


if __name__ == "__main__":
    w, r, p, o, js = sys.argv[1:6]
    worker(int(w), int(r), int(p), o, json.loads(js))
