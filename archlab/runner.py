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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import to_dict
from .engine.checkpoint import CheckpointManager
from .engine.device import Precision, resolve_device
from .engine.distributed import DistInfo
from .engine.distributed import init as dist_init
from .engine.driver import Driver, DriverConfig, Interrupted
from .engine.loop import Context
from .engine.metrics import MetricsLogger, require_tensorboard
from .engine.seed import check_seed, seed_everything
from .errors import ArchlabError, NonFiniteLoss
from .io import atomic_write_bytes
from .nn.checkpointing import enable_activation_checkpointing
from .recipe import Recipe
from .registry import CONFIG_FILE

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
          resume: bool = False, progress: bool = True, log: Any = print,
          on_eval: Callable[[int, dict[str, float]], bool] | None = None, data: Any = None) -> dict[str, Any]:
    """Train ``recipe`` into a run directory; return the summary (also written as summary.json).

    ``resume`` continues from the newest valid checkpoint of ``out``. User mistakes raise ArchlabError
    before anything is written; a fresh run directory is removed again if setup fails. ``on_eval(step,
    scores)`` is called after every validation evaluation; returning True ends the run there (status
    ``stopped``), e.g. a tuner's pruner. ``data``: a prepared dataset to train on instead of the loop's
    ``load_data(recipe)`` (e.g. one cross-validation fold).
    """
    seed = recipe.seed if seed is None else check_seed(seed)
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
    loop_cls = recipe.loop_class
    if data is None:
        data = loop_cls.load_data(recipe) if loop_cls.uses_data else None
    model = loop_cls.build_model(recipe, data, dev)
    if tc.activation_checkpointing:  # any loop: the model recomputes its blocks (one line if it cannot)
        enable_activation_checkpointing(model)
    if tc.init_from and not resume:  # a resumed run gets every tensor from its checkpoint
        from .engine.init import init_from

        fresh = init_from(model, tc.init_from, tc.init_skip, tc.init_rename)
        log(f"archlab: initialized from {tc.init_from}" + (f"; {len(fresh)} tensor(s) keep their fresh "
            f"initialization ({', '.join(fresh[:3])}{', ...' if len(fresh) > 3 else ''})" if fresh else ""))
    if tc.freeze:  # before the loop builds its optimizers; also on resume
        from .engine.init import freeze

        frozen = freeze(model, tc.freeze)
        log(f"archlab: froze {len(frozen)} parameter tensor(s) under {', '.join(tc.freeze)}")
    loop_cls.check_fit(recipe, data, model)
    ctx = Context(device=dev, precision=precision, dist=dist, seed=seed)
    loop = loop_cls(recipe, model, data, ctx)
    monitor, mode = recipe.monitor()

    created = not run_dir.exists()
    try:
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / SUMMARY).unlink(missing_ok=True)  # a resumed run is not finished until it says so
            atomic_write_bytes(run_dir / RECIPE, recipe.to_toml().encode())
    except OSError as exc:
        loop.close()
        raise ArchlabError(f"cannot write the run directory {str(run_dir)[:200]}: {exc.strerror or exc}") from None
    metrics = MetricsLogger(run_dir / "metrics.jsonl", tc.tensorboard) if dist.is_main else None
    ckpt = CheckpointManager(run_dir / "checkpoints", tc.keep_checkpoints)
    driver = Driver(loop, DriverConfig(log_every=loop.log_every, checkpoint_every=loop.checkpoint_every,
                                       checkpoint_minutes=tc.checkpoint_minutes,
                                       keep_checkpoints=tc.keep_checkpoints, early_stopping=tc.early_stopping,
                                       monitor=monitor, monitor_mode=mode, keep_best=loop_cls.keep_best,
                                       tie_break=loop_cls.tie_break, progress=progress, desc=recipe.name),
                    ckpt, metrics, dist, dev, on_eval=on_eval)
    start = 0
    if resume:
        start = driver.restore(warn=lambda m: log(f"archlab: {m}"))
        log(f"archlab: resuming {run_dir} from step {start}" if start else
            f"archlab: {run_dir} has no valid checkpoint; starting from step 0")
    t0 = time.perf_counter()
    prior_wall = 0.0
    wall_file = run_dir / "checkpoints" / "wall_s"
    if resume and wall_file.is_file():
        prior_wall = float(wall_file.read_text() or 0)
    try:
        outcome = driver.run(start)
        final = driver.final_metrics()
        loop.unshard()  # every worker: plain modules with the full weights, for rank 0 to save
    except (Interrupted, NonFiniteLoss):
        if dist.is_main:
            atomic_write_bytes(wall_file, str(prior_wall + time.perf_counter() - t0).encode())
        loop.close()
        raise
    except BaseException:
        loop.close()
        if created and dist.is_main and not any((run_dir / "checkpoints").glob("step-*")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if metrics is not None:
            metrics.close()
    wall = prior_wall + time.perf_counter() - t0
    trained = loop.final_object()
    summary: dict[str, Any] = {
        "recipe": recipe.name, "loop": recipe.train.loop, "model": recipe.model_name, "dataset": recipe.dataset,
        "seed": seed, "metrics": final, "steps": outcome.steps, "status": outcome.status,
        "expect": to_dict(recipe.expect) if recipe.expect else None, "passed": None,
        "wall_s": round(wall, 3), "num_params": sum(p.numel() for p in trained.parameters()),
        "device": describe_device(dev), "world_size": dist.world_size,
        "versions": versions(), "run_dir": str(run_dir),
    }
    if recipe.expect is not None:
        achieved = final.get(recipe.expect.metric)
        summary["achieved"] = achieved
        summary["passed"] = achieved is not None and recipe.expect.met(achieved)
    try:
        if dist.is_main:
            from .plots import plot_run

            trained.save_pretrained(run_dir)
            plot_run(run_dir)
            loop.write_artifacts(run_dir)  # loop-specific files: tokenizer, episode log, attention maps ...
            _write_json(run_dir / SUMMARY, summary)
    finally:
        loop.close()
    return summary


def describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise ArchlabError(f"{run_dir} has no {SUMMARY}: the run did not finish")
    return json.loads(path.read_text())


def evaluate(run_dir: str | os.PathLike, device: str = "auto", overrides: list[str] | None = None) -> dict[str, float]:
    """Re-evaluate the final model (or agent) of a finished run, as its loop defines it.

    ``overrides`` (``KEY=VALUE``, as ``--set``) change the run's recipe for this evaluation only, e.g.
    ``data.name=omniglot_runs`` to score a few-shot learner on another dataset; the metrics are then
    also appended to ``evaluations`` in the run's summary.json (with the overrides that produced them)."""
    from . import recipe as recipe_mod

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not is_run_dir(run_dir):
        raise ArchlabError(f"{run_dir} is not a run directory (no {RECIPE}); pass the folder `archlab train` wrote")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ArchlabError(f"{run_dir} has no final model ({CONFIG_FILE}): the run did not finish")
    recipe = recipe_mod.load(run_dir / RECIPE, overrides)
    recipe.train.compile = False
    dev = resolve_device(device)
    ctx = Context(device=dev, precision=Precision(recipe.train.precision, dev), dist=DistInfo(), seed=recipe.seed)
    metrics = recipe.loop_class.evaluate_run(run_dir, recipe, ctx)
    if overrides and (run_dir / SUMMARY).is_file():
        summary = read_summary(run_dir)
        summary.setdefault("evaluations", []).append({"overrides": list(overrides), "metrics": metrics})
        _write_json(run_dir / SUMMARY, summary)
    return metrics
