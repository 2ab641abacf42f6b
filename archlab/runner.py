"""Recipe -> trained run directory, and re-evaluation of a run directory.

Run directory contract (other tools rely on it)::

    RUN/recipe.toml        the resolved recipe (overrides and seed applied)
    RUN/metrics.jsonl      one JSON record per log/eval event
    RUN/checkpoints/       step-*.safetensors (model, optimizer, scheduler, RNG, step), newest K kept
    RUN/plots/*.png        loss and accuracy curves
    RUN/config.json        final model: registered name + config
    RUN/model.safetensors  final model weights          -> archlab.load(RUN)
    RUN/summary.json       written last: recipe, seed, metrics, expect, passed, status, wall_s, device, versions
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import to_dict
from .data import load_dataset
from .engine.checkpoint import CheckpointManager
from .io import atomic_write_bytes
from .engine.device import Precision, resolve_device
from .engine.distributed import DistInfo
from .engine.distributed import init as dist_init
from .engine.driver import Driver, DriverConfig, Interrupted
from .engine.metrics import MetricsLogger, require_tensorboard
from .engine.seed import seed_everything
from .errors import ArchlabError, NonFiniteLoss
from .models.base import load as load_model
from .recipe import Recipe
from .registry import create
from .train import Context, get_loop

SUMMARY = "summary.json"
RECIPE = "recipe.toml"


def versions() -> dict[str, str]:
    import numpy

    return {"archlab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__}


def default_run_dir(recipe: Recipe, seed: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{recipe.name}-s{seed}-{stamp}"


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def is_run_dir(path: Path) -> bool:
    return (path / RECIPE).is_file()


def train(recipe: Recipe, out: str | os.PathLike | None = None, seed: int | None = None, device: str | None = None,
          resume: bool = False, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Train ``recipe`` into a run directory; return the summary (also written as summary.json).

    ``resume`` continues from the newest valid checkpoint of ``out``. User mistakes raise ArchlabError
    before anything is written; a fresh run directory is removed again if setup fails.
    """
    seed = recipe.seed if seed is None else seed
    recipe.seed = seed
    tc = recipe.train
    dev = resolve_device(device or tc.device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    precision = Precision(tc.precision, dev)
    run_dir = Path(out) if out is not None else default_run_dir(recipe, seed)
    if resume:
        if not is_run_dir(run_dir):
            raise ArchlabError(f"--resume: {run_dir} is not a run directory (no {RECIPE})")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ArchlabError(f"run directory {run_dir} exists and is not empty; use --resume or another --out")
    # Join workers only after checking: rank 0 cannot pass the rendezvous (and create run_dir) before
    # every rank has looked at run_dir, so no rank mistakes rank 0's fresh files for an old run.
    dist = dist_init(dev.type)

    # Everything that can fail on user input happens before the run directory is created.
    if tc.tensorboard:
        require_tensorboard()
    seed_everything(seed, tc.deterministic)
    loop_cls = get_loop(tc.loop)
    data, model = build_data_and_model(loop_cls, recipe)
    ctx = Context(device=dev, precision=precision, dist=dist, seed=seed)
    paradigm = loop_cls(recipe, model, data, ctx)

    created = not run_dir.exists()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SUMMARY).unlink(missing_ok=True)  # a resumed run is not finished until it says so
        atomic_write_bytes(run_dir / RECIPE, recipe.to_toml().encode())
    metrics = MetricsLogger(run_dir / "metrics.jsonl", tc.tensorboard) if dist.is_main else None
    ckpt = CheckpointManager(run_dir / "checkpoints", tc.keep_checkpoints)
    # A loop may count steps its own way (RL: environment steps) and convert the intervals.
    log_every = getattr(paradigm, "log_every", tc.log_every)
    checkpoint_every = getattr(paradigm, "checkpoint_every", tc.checkpoint_every)
    driver = Driver(paradigm, DriverConfig(log_every=log_every, checkpoint_every=checkpoint_every,
                                           keep_checkpoints=tc.keep_checkpoints, early_stopping=tc.early_stopping,
                                           monitor=tc.monitor, monitor_mode=tc.monitor_mode,
                                           progress=progress, desc=recipe.name),
                    ckpt, metrics, dist, dev)
    start = 0
    if resume:
        start = driver.restore(warn=lambda m: log(f"archlab: {m}"))
        if start:
            log(f"archlab: resuming {run_dir} from step {start}")
    t0 = time.perf_counter()
    prior_wall = 0.0
    wall_file = run_dir / "checkpoints" / "wall_s"
    if resume and wall_file.is_file():
        prior_wall = float(wall_file.read_text() or 0)
    try:
        outcome = driver.run(start)
    except (Interrupted, NonFiniteLoss):
        if dist.is_main:
            atomic_write_bytes(wall_file, str(prior_wall + time.perf_counter() - t0).encode())
        raise
    except BaseException:
        if created and dist.is_main and not any((run_dir / "checkpoints").glob("step-*")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if metrics is not None:
            metrics.close()
    wall = prior_wall + time.perf_counter() - t0
    final = paradigm.final_metrics()
    summary: dict[str, Any] = {
        "recipe": recipe.name, "model": recipe.model_name, "dataset": recipe.dataset, "seed": seed,
        "metrics": final, "steps": outcome.steps, "status": outcome.status,
        "expect": to_dict(recipe.expect) if recipe.expect else None, "passed": None,
        "wall_s": round(wall, 3), "num_params": sum(p.numel() for p in model.parameters()),
        "device": describe_device(dev), "world_size": dist.world_size,
        "versions": versions(), "run_dir": str(run_dir),
    }
    if recipe.expect is not None:
        achieved = final.get(recipe.expect.metric)
        summary["achieved"] = achieved
        summary["passed"] = achieved is not None and recipe.expect.met(achieved)
    if dist.is_main:
        from .plots import plot_run

        model.save_pretrained(run_dir)
        plot_run(run_dir)
        if hasattr(paradigm, "write_artifacts"):  # loop-specific files: tokenizer, attention maps ...
            paradigm.write_artifacts(run_dir)
        _write_json(run_dir / SUMMARY, summary)
    return summary


def build_data_and_model(loop_cls: type, recipe: Recipe) -> tuple[Any, Any]:
    """The loop's data and a fresh model. A loop may define ``load_data(recipe)`` (default: the array
    datasets) and ``model_defaults(recipe, data) -> dict`` (config keys the data decides, such as a
    graph's feature count; keys the recipe sets win), or build both itself with
    ``build_data_and_model(recipe)`` (reinforcement learning: the environment and the agent)."""
    if hasattr(loop_cls, "build_data_and_model"):
        return loop_cls.build_data_and_model(recipe)
    if hasattr(loop_cls, "load_data"):
        data = loop_cls.load_data(recipe)
    else:
        data = load_dataset(recipe.data.name, recipe.data.options, recipe.data.val_fraction, recipe.data.split_seed)
    overrides = dict(recipe.model_config)
    if hasattr(loop_cls, "model_defaults"):
        overrides = {**loop_cls.model_defaults(recipe, data), **overrides}
    return data, create(recipe.model_name, **overrides)


def describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise ArchlabError(f"{run_dir} has no {SUMMARY}: the run did not finish")
    return json.loads(path.read_text())


def evaluate(run_dir: str | os.PathLike, device: str = "auto") -> dict[str, float]:
    """Re-evaluate the final model of a finished run on its validation and test splits."""
    from . import recipe as recipe_mod

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not is_run_dir(run_dir):
        raise ArchlabError(f"{run_dir} is not a run directory (no {RECIPE}); pass the folder `archlab train` wrote")
    if not (run_dir / "config.json").is_file():
        raise ArchlabError(f"{run_dir} has no final model (config.json): the run did not finish")
    recipe = recipe_mod.load(run_dir / RECIPE)
    dev = resolve_device(device)
    loop_cls = get_loop(recipe.train.loop)
    if hasattr(loop_cls, "evaluate_run"):  # loops whose final "model" is not an ArchModel (RL agents)
        return loop_cls.evaluate_run(run_dir, recipe, str(dev))
    model = load_model(run_dir, map_location=str(dev))
    data, _ = build_data_and_model(loop_cls, recipe)
    ctx = Context(device=dev, precision=Precision(recipe.train.precision, dev), dist=DistInfo(), seed=recipe.seed)
    recipe.train.compile = False
    loop = loop_cls(recipe, model, data, ctx)
    return loop.final_metrics()
