"""``archlab bench activation_checkpointing``: peak memory and time of one training step of a recipe's model
with and without ``train.activation_checkpointing``.

Peak memory, measured: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free of
PyTorch's CPU allocator together with a running "Total Allocated" counter (bytes allocated inside the profiled
window and not yet freed). One forward + backward is profiled after a warm-up step, starting with every
``.grad`` set to None, so the peak of that counter is the step's peak tensor memory above the parameters:
activations kept for the backward, temporaries, and the new gradients (equal on both sides). The process's
``maxrss`` cannot show this: it is process-wide, never decreases, and includes the allocator's caching.

Time: process CPU time of the same step (1 thread), median of ``repeats``, so that a shared machine's load
does not enter; checkpointing pays one extra forward of every block. The loss and every gradient are checked
equal (<= 1e-6) between the two runs, so the numbers compare the same computation.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import archlab
from archlab.recipe import load

ROOT = Path(__file__).resolve().parents[1]


def _step_fn(recipe_path: str, checkpointing: bool):
    recipe = load(ROOT / recipe_path)
    torch.manual_seed(0)
    model = archlab.create(recipe.model_name, **recipe.model_config).train()
    model.set_activation_checkpointing(checkpointing)
    batch = recipe.data.batch_size
    torch.manual_seed(1)
    x = type(model).example_input(model.config, batch_size=batch)
    inputs = x if isinstance(x, tuple) else (x,)
    bf16 = recipe.train.precision == "bf16"

    def step() -> torch.Tensor:
        torch.manual_seed(2)  # the same dropout masks on both sides
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            logits = model(*inputs)
        logits = logits.float().flatten(0, -2)
        target = torch.arange(logits.shape[0]) % logits.shape[-1]
        loss = F.cross_entropy(logits, target)
        loss.backward()
        return loss.detach()

    return model, step, recipe


def _peak_bytes(model: torch.nn.Module, step) -> int:
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    return max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0)


def _cpu_seconds(model: torch.nn.Module, step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.process_time()
        step()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def run(params: dict[str, Any], log: Any) -> tuple[dict[str, Any], str]:
    torch.set_num_threads(1)
    rows = []
    for case in params["cases"]:
        sides = {}
        grads = {}
        for checkpointing in (False, True):
            model, step, recipe = _step_fn(case["recipe"], checkpointing)
            model.zero_grad(set_to_none=True)
            loss = step()  # warm-up (and the gradients to compare)
            grads[checkpointing] = (loss, {n: p.grad.clone() for n, p in model.named_parameters()})
            sides[checkpointing] = {"peak_mib": _peak_bytes(model, step) / 2**20,
                                    "cpu_s": _cpu_seconds(model, step, params.get("repeats", 3))}
        (loss_a, ga), (loss_b, gb) = grads[False], grads[True]
        diff = max(float((ga[k] - gb[k]).abs().max()) for k in ga)
        if not torch.equal(loss_a, loss_b) or diff > 1e-6:
            raise AssertionError(f"{case['name']}: checkpointed step differs (loss {loss_a} vs {loss_b}, grad {diff})")
        row = {"case": case["name"], "recipe": case["recipe"], "batch": recipe.data.batch_size,
               "precision": recipe.train.precision, "plain": sides[False], "checkpointed": sides[True],
               "max_grad_diff": diff,
               "memory_ratio": sides[True]["peak_mib"] / sides[False]["peak_mib"],
               "time_ratio": sides[True]["cpu_s"] / sides[False]["cpu_s"]}
        log(f"{row['case']}: {row['plain']['peak_mib']:.1f} -> {row['checkpointed']['peak_mib']:.1f} MiB, "
            f"time x{row['time_ratio']:.2f}")
        rows.append(row)
    lines = ["| recipe (model, batch, precision) | peak step memory, plain (MiB) | checkpointed (MiB) | "
             "memory ratio | CPU time per step, plain (s) | checkpointed (s) | time ratio | max grad diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} (batch {r['batch']}, {r['precision']}) | {r['plain']['peak_mib']:.1f} | "
                     f"{r['checkpointed']['peak_mib']:.1f} | **{r['memory_ratio']:.2f}** | {r['plain']['cpu_s']:.3f} | "
                     f"{r['checkpointed']['cpu_s']:.3f} | {r['time_ratio']:.2f} | {r['max_grad_diff']:.1e} |")
    return {"cases": rows}, "\n".join(lines) + "\n"
