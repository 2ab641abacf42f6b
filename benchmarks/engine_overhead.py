"""Factories for the engine-overhead bench: each returns a zero-argument callable doing `steps` steps."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from archlab import create, recipe
from archlab.data import load_dataset
from archlab.engine.device import Precision
from archlab.engine.distributed import DistInfo
from archlab.engine.driver import Driver, DriverConfig
from archlab.engine.loop import Context
from archlab.engine.metrics import MetricsLogger
from archlab.train.supervised import Supervised

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "classic" / "mnist1d_mlp.toml"


def ours(steps: int) -> Callable[[], None]:
    torch.set_num_threads(1)
    rec = recipe.load(RECIPE, [f"train.steps={steps}", "train.eval_every=0"])
    data = load_dataset("mnist1d", val_fraction=0.0)
    model = create(rec.model_name, **rec.model_config)
    cpu = torch.device("cpu")
    ctx = Context(cpu, Precision("fp32", cpu), DistInfo(), seed=0)
    loop = Supervised(rec, model, data, ctx)
    log_dir = Path(tempfile.mkdtemp())
    metrics = MetricsLogger(log_dir / "metrics.jsonl")
    driver = Driver(loop, DriverConfig(log_every=rec.train.log_every, progress=False), None, metrics)
    return lambda: driver.run(0)


def peer(steps: int) -> Callable[[], None]:
    torch.set_num_threads(1)
    data = load_dataset("mnist1d", val_fraction=0.0)
    ds = torch.utils.data.TensorDataset(data.train.x, data.train.y)
    loader = torch.utils.data.DataLoader(ds, batch_size=100, shuffle=True, drop_last=True)
    rec = recipe.load(RECIPE)
    model = create(rec.model_name, **rec.model_config)  # same network: only the loop differs
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> None:
        done = 0
        while done < steps:
            for x, y in loader:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                loss.item()
                done += 1
                if done == steps:
                    break

    return run
