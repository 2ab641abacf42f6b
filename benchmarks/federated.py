"""``archlab bench federated``: one FedAvg round in-process vs the same round on Flower's Simulation Engine.

Both sides build the same run from ``recipes/federated/fedavg_mnist_2nn_iid.toml`` (MNIST split IID among 100
clients, 10 sampled per round, E = 1, B = 10: 60 local SGD steps of the 2NN each) with the same seed, and one
timed call is one :meth:`Federated.train_step` of the next round (sampling, local training, aggregation, server
step). The sides start at round 0 and are called equally often, interleaved, so they train the same clients on
the same batches; ``flower-sim`` sends each sampled client to a simulated SuperNode (a Ray worker of 1 CPU) and
gets its local model back as Flower messages. Ray's start and the nodes' first build of the dataset and model
happen in the warm-up calls, outside the timing.

Every ``sim_nodes`` case runs in a fresh process (this file run as a script), so each starts its own Ray
cluster and no case inherits another's workers or memory.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "federated" / "fedavg_mnist_2nn_iid.toml"


def _round_fn(backend: str, sim_nodes: int, seed: int) -> tuple[Callable[[], Any], Any]:
    import torch

    from archlab.engine.device import Precision
    from archlab.engine.distributed import DistInfo
    from archlab.engine.loop import Context
    from archlab.recipe import load

    torch.set_num_threads(1)
    recipe = load(str(RECIPE), [f'loop.backend="{backend}"', f"loop.sim_nodes={sim_nodes}"])
    recipe.seed = seed
    loop_cls = recipe.loop_class
    data = loop_cls.load_data(recipe)
    cpu = torch.device("cpu")
    torch.manual_seed(seed)
    model = loop_cls.build_model(recipe, data, cpu)
    loop = loop_cls(recipe, model, data, Context(device=cpu, precision=Precision("fp32", cpu), dist=DistInfo(),
                                                 seed=seed))
    rounds = itertools.count()
    return lambda: loop.train_step(next(rounds)), loop


def worker(sim_nodes: int, warmup: int, repeats: int, seed: int) -> dict[str, Any]:
    """One case in this process: warm-up, then ``repeats`` interleaved timed rounds of each side."""
    sides = {"ours": _round_fn("inprocess", sim_nodes, seed), "peer": _round_fn("flower-sim", sim_nodes, seed)}
    try:
        for _ in range(warmup):
            for fn, _loop in sides.values():
                fn()
        times: dict[str, list[float]] = {"ours": [], "peer": []}
        load = [os.getloadavg()[0]]  # the machine is shared: its 1-minute load average around the timed rounds
        for i in range(repeats):
            for key in ("ours", "peer") if i % 2 == 0 else ("peer", "ours"):
                t0 = time.perf_counter()
                sides[key][0]()
                times[key].append(time.perf_counter() - t0)
        load.append(os.getloadavg()[0])
        a, b = sides["ours"][1].model.state_dict(), sides["peer"][1].model.state_dict()
        diff = max((a[k] - b[k]).abs().max().item() for k in a)  # the same rounds, so the same global model
    finally:
        sides["peer"][1].close()  # the ServerApp thread, the simulated nodes and Ray
    return {"times": times, "max_abs_diff": diff, "load_avg_1min": load}


def run(params: dict[str, Any], log: Any) -> tuple[dict[str, Any], str]:
    """``mode = "custom"``: every case in its own process; medians, ratio and the models' agreement."""
    rows = []
    for nodes in params.get("sim_nodes", [1, 2]):
        log(f"bench federated: {nodes} simulated node(s), warm-up {params['warmup']}, {params['repeats']} repeats")
        args = [sys.executable, __file__, json.dumps({"sim_nodes": nodes, "warmup": params["warmup"],
                                                      "repeats": params["repeats"], "seed": params.get("seed", 0)})]
        done = subprocess.run(args, capture_output=True, text=True, timeout=params.get("timeout_s", 1500))
        if done.returncode != 0:
            raise RuntimeError(f"bench federated worker failed: {done.stderr[-2000:]}")
        res = json.loads(done.stdout.strip().splitlines()[-1])
        med = {k: statistics.median(v) for k, v in res["times"].items()}
        rows.append({"sim_nodes": nodes, "ours": {"median_s": med["ours"], "times_s": res["times"]["ours"]},
                     "peer": {"median_s": med["peer"], "times_s": res["times"]["peer"]},
                     "ratio_peer_over_ours": med["peer"] / med["ours"], "max_abs_diff": res["max_abs_diff"],
                     "load_avg_1min": res["load_avg_1min"]})
    lines = ["| case | archlab in-process (s / round) | Flower Simulation Engine (s / round) | Flower / in-process "
             "| max abs. diff. of the global models | load average (1 min), start / end |", "|---|---|---|---|---|---|"]
    for r in rows:
        case = f"{r['sim_nodes']} simulated node{'s' if r['sim_nodes'] > 1 else ''}"
        lines.append(f"| {case} | {r['ours']['median_s']:.3f} | {r['peer']['median_s']:.3f} "
                     f"| **{r['ratio_peer_over_ours']:.2f}x** | {r['max_abs_diff']:.1e} "
                     f"| {r['load_avg_1min'][0]:.1f} / {r['load_avg_1min'][1]:.1f} |")
    lines += ["", f"Medians of {params['repeats']} interleaved rounds per side after {params['warmup']} warm-up rounds "
              "(each case in a fresh process); > 1 means in-process is faster.", ""]
    return {"params": params, "cases": rows}, "\n".join(lines)


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    print(json.dumps(worker(cfg["sim_nodes"], cfg["warmup"], cfg["repeats"], cfg["seed"])))
