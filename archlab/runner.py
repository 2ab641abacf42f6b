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

import contextlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import __version__
from . import recipe as recipe_mod
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
    # A `recipe:` init_from: the prerequisite's finished run, trained first when needed (before this run's
    # seeding, so this run computes the same whether the prerequisite was trained now or reused).
    prerequisite = _prerequisite(recipe, run_dir, seed, device, resume, progress, log) \
        if recipe_mod.prerequisite_ref(recipe) is not None else None
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

        source = prerequisite["run_dir"] if prerequisite else tc.init_from
        fresh = init_from(model, source, tc.init_skip, tc.init_rename)
        log(f"archlab: initialized from {tc.init_from}" + (f" ({source})" if prerequisite else "") +
            (f"; {len(fresh)} tensor(s) keep their fresh "
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
    if prerequisite is not None:
        summary["prerequisite"] = prerequisite
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


def prerequisite_dir(run_dir: Path, path: Path, seed: int) -> Path:
    """Where the ``recipe:`` prerequisite ``path`` of a run in ``run_dir`` lives: next to that run, as
    ``<file stem>-s<seed>`` -- the folder ``archlab reproduce`` gives the prerequisite's own runs."""
    return run_dir.parent / f"{path.stem}-s{seed}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing): concurrent runs needing one prerequisite
    (parallel tuning trials) train it once."""
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prerequisite(recipe: Recipe, run_dir: Path, seed: int, device: str | None, resume: bool, progress: bool,
                  log: Any) -> dict[str, Any]:
    """Resolve ``train.init_from = "recipe:REF"`` for a run of ``recipe`` at ``seed`` in ``run_dir``.

    The prerequisite's run directory (:func:`prerequisite_dir`) is reused when it holds a finished run of
    the same recipe content (:func:`archlab.recipe.fingerprint` of its recipe.toml); an unfinished run of the
    same content is resumed; a run of other content (the recipe file changed since) is moved aside to
    ``DIR-stale-<time>`` and the recipe trained anew. The prerequisite is the recipe file as written, at this
    run's seed: the caller's overrides do not reach it (``device`` does: it says where, not what). Returns
    what the summary records: the reference, seed, run directory, and ``wall_s`` of the prerequisite's whole
    chain (its own training plus its own prerequisite's), whether trained now or earlier."""
    if resume:  # the checkpoint holds the weights; only the record is looked up, as far as it can be
        ref = recipe_mod.prerequisite_ref(recipe)
        try:
            target = prerequisite_dir(run_dir, recipe_mod.recipe_path(ref), seed)
        except ArchlabError:
            return {"recipe": ref, "seed": seed, "run_dir": None, "wall_s": 0.0}
        done = read_summary(target) if (target / SUMMARY).is_file() else {}
        return {"recipe": ref, "seed": seed, "run_dir": str(target), "wall_s": _chain_wall(done)}
    chain = recipe_mod.prerequisites(recipe)  # unknown names, broken recipes, cycles: one line, nothing trained
    ref, path = chain[0]
    target = prerequisite_dir(run_dir, path, seed)
    what = f"the prerequisite recipe {ref} (seed {seed})"
    if target.resolve() == run_dir.resolve():
        raise ArchlabError(f"train.init_from: {what} would train into this run's own directory {run_dir}; "
                           "use another --out")
    want = recipe_mod.load(path)
    want.seed = seed
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        state = _run_state(target, recipe_mod.fingerprint(want))
        if state == "stale":
            aside = target.with_name(f"{target.name}-stale-{time.strftime('%Y%m%d-%H%M%S')}")
            target.rename(aside)
            log(f"init_from: {target} held a run of another version of {ref}; moved it to {aside}")
            state = "missing"
        if state != "finished":
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ArchlabError(f"train.init_from: {what} has no finished run in {target}; train it first "
                                   f"(archlab train {path} --seed {seed} --out {target}), then use --nproc")
            if state == "unfinished":
                log(f"init_from: resuming the unfinished prerequisite recipe {ref} (seed {seed}) in {target}")
                want = recipe_mod.load(target / RECIPE)
            else:
                log(f"init_from: training the prerequisite recipe {ref} (seed {seed}) into {target}")
            threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
            try:
                done = train(want, out=target, seed=seed, device=device, resume=state == "unfinished",
                             progress=progress, log=log)
                log(f"init_from: {ref} (seed {seed}) {done['status']} after {done['steps']} steps, "
                    f"{done['wall_s']:.1f} s")
            except ArchlabError as exc:
                raise ArchlabError(f"train.init_from: {what} failed: {exc}") from None
            except NonFiniteLoss as exc:
                raise ArchlabError(f"train.init_from: {what} stopped: {exc}") from None
            except Interrupted:
                raise ArchlabError(f"train.init_from: interrupted while training {what} in {target}; the same "
                                   "command resumes it") from None
            finally:  # process-wide settings the prerequisite's recipe may have changed
                torch.set_num_threads(threads)
                torch.use_deterministic_algorithms(deterministic)
        else:
            log(f"init_from: reusing the finished run of {ref} (seed {seed}) in {target}")
    return {"recipe": ref, "seed": seed, "run_dir": str(target), "wall_s": _chain_wall(read_summary(target))}


def _run_state(run_dir: Path, fingerprint: str) -> str:
    """missing | finished | unfinished (same recipe content) | stale (another recipe's or version's run)."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "missing"
    if not is_run_dir(run_dir):
        raise ArchlabError(f"train.init_from: {run_dir} exists but is not a run directory (no {RECIPE}); move it "
                           "away so the prerequisite can train there")
    try:
        same = recipe_mod.fingerprint(recipe_mod.load(run_dir / RECIPE)) == fingerprint
    except ArchlabError:  # written by an older archlab whose keys have moved: not this recipe's run
        same = False
    if not same:
        return "stale"
    return "finished" if (run_dir / SUMMARY).is_file() and (run_dir / "model.safetensors").is_file() else "unfinished"


def _chain_wall(summary: dict[str, Any]) -> float:
    """Training wall time of a run plus that of its ``recipe:`` prerequisites (0 for an empty summary)."""
    return round(summary.get("wall_s", 0.0) + summary.get("prerequisite", {}).get("wall_s", 0.0), 3)


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
