"""``archlab reproduce``: run recipes over seeds, aggregate mean ± std, compare to published targets.

Each (recipe, seed) trains in its own subprocess (``archlab train``), ``jobs`` at a time with the CPU
threads split between them, so small models use both cores without fighting over them. The report
(markdown + JSON + plot) lands in the output folder; the exit code says whether every target was met
(a target set for another dataset than the one trained on, via ``--set``, is "n/a", not a failure).
A recipe with ``train.init_from = "recipe:..."`` gets its prerequisite's run of each seed trained first, once,
in the same ``runs/`` folder; its wall time per seed includes that prerequisite's (docs/engine.md).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from . import recipe as recipe_mod
from .errors import ArchlabError
from .recipe import recipes_root

EMBEDDED_DATASETS = {"digits", "mnist1d"}


def all_recipes() -> list[Path]:
    root = recipes_root()
    return sorted(root.glob("*/*.toml")) if root.is_dir() else []


def select(suite: list[str]) -> list[Path]:
    """Recipe files for ``quick`` | ``full`` | a family name | recipe paths or names."""
    available = all_recipes()
    families = sorted({p.parent.name for p in available})
    chosen: list[Path] = []
    for item in suite:
        if item == "full":
            chosen += available
        elif item == "quick":
            chosen += [p for p in available if (r := recipe_mod.load(p)).dataset in EMBEDDED_DATASETS and r.quick]
        elif item in families:
            chosen += [p for p in available if p.parent.name == item]
        elif Path(item).is_file():
            chosen.append(Path(item))
        elif any(p.stem == item for p in available):
            chosen += [p for p in available if p.stem == item]
        else:
            names = ", ".join(p.stem for p in available)
            raise ArchlabError(f"unknown suite or recipe {item!r}; suites: quick, full, {', '.join(families)}; "
                               f"recipes: {names}")
    seen: set[Path] = set()
    return [p for p in chosen if not (p.resolve() in seen or seen.add(p.resolve()))]


def _run_one(path: Path, seed: int, out: Path, threads: int, extra: list[str]) -> dict[str, Any]:
    run_dir = out / "runs" / f"{path.stem}-s{seed}"
    cmd = [sys.executable, "-m", "archlab", "train", str(path), "--seed", str(seed), "--out", str(run_dir),
           "--no-progress", "--set", f"train.threads={threads}", *extra]
    resume = (run_dir / "summary.json").is_file()
    if not resume:
        if run_dir.exists():  # an earlier reproduce was cut off: continue that run
            cmd.append("--resume")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        # Exit 1 without a summary (e.g. a NaN loss stopped training) is an error like any other.
        if proc.returncode not in (0, 1) or not (run_dir / "summary.json").is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            return {"recipe": path.stem, "seed": seed, "error": tail[0]}
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"recipe": path.stem, "seed": seed, "summary": summary}


def _overrides(extra: list[str]) -> list[str]:
    """The ``KEY=VALUE`` items of the ``--set`` pairs among the arguments passed on to ``archlab train``."""
    return [value for flag, value in zip(extra[::2], extra[1::2], strict=True) if flag == "--set"]


def _runtime(extra: list[str]) -> list[str]:
    """The ``--set`` pairs of ``extra`` that only say how a run executes (:data:`recipe.RUNTIME_TRAIN_KEYS`):
    all a ``recipe:`` prerequisite receives of the caller's overrides."""
    keys = {f"train.{k}" for k in recipe_mod.RUNTIME_TRAIN_KEYS}
    return [x for flag, value in zip(extra[::2], extra[1::2], strict=True) if flag == "--set"
            and value.split("=", 1)[0].strip() in keys for x in (flag, value)]


def _target(exp: recipe_mod.ExpectConfig | None) -> tuple[str, float, str, float] | None:
    """What a target claims; a target the overrides change is theirs, and applies to their dataset."""
    return None if exp is None else (exp.metric, exp.value, exp.compare, exp.tolerance)


def aggregate(path: Path, results: list[dict[str, Any]], overrides: list[str] | None = None) -> dict[str, Any]:
    """One report row: mean ± std of the target metric over the seeds' results, judged against the target.

    The target belongs to the dataset the recipe file names. When ``overrides`` train on another one
    (``--set data.name=citeseer`` on a Cora recipe) without setting a target of their own, the target
    does not apply: ``passed`` is None and the result reads "n/a" (runs that failed still fail)."""
    rec = recipe_mod.load(path, overrides)
    exp = rec.expect
    if exp is None:
        raise ArchlabError(f"{path}: recipe has no [expect] table; reproduce needs a target")
    own = recipe_mod.load(path)
    applicable = rec.dataset == own.dataset or _target(exp) != _target(own.expect)
    values = [r["summary"]["metrics"][exp.metric] for r in results if "summary" in r]
    errors = [r["error"] for r in results if "error" in r]
    mean = statistics.fmean(values) if values else float("nan")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    # A run that started from a `recipe:` prerequisite costs that prerequisite's training too (its chain's
    # wall_s, recorded in the summary, whether trained in this reproduce or reused from an earlier one).
    walls = [r["summary"]["wall_s"] + r["summary"].get("prerequisite", {}).get("wall_s", 0.0)
             for r in results if "summary" in r]
    pre_walls = [r["summary"].get("prerequisite", {}).get("wall_s", 0.0) for r in results if "summary" in r]
    params = [r["summary"].get("num_params") for r in results if "summary" in r]
    if errors or not values:
        passed: bool | None = False
    else:
        passed = exp.met(mean) if applicable else None
    return {
        "recipe": rec.name, "file": str(path), "model": rec.model_name, "dataset": rec.dataset,
        "target_dataset": own.dataset, "target_applies": applicable,
        "metric": exp.metric, "target": exp.value, "compare": exp.compare, "tolerance": exp.tolerance,
        "expected": exp.describe(), "source": exp.source, "seeds": [r["seed"] for r in results],
        "values": values, "mean": mean, "std": std, "passed": passed,
        "wall_s_per_seed": statistics.fmean(walls) if walls else None,
        "prerequisite": recipe_mod.prerequisite_ref(rec),
        "prerequisite_wall_s_per_seed": statistics.fmean(pre_walls) if pre_walls else None, "errors": errors,
        "num_params": params[0] if params else None,
    }


def markdown(rows: list[dict[str, Any]], machine: str, wall: float) -> str:
    lines = [
        "| recipe | model | params | dataset | metric | target | achieved (mean ± std) | seeds | wall/seed | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wall_s = f"{r['wall_s_per_seed']:.0f} s" if r["wall_s_per_seed"] is not None else "-"
        if r.get("prerequisite") and r["wall_s_per_seed"] is not None:
            wall_s += f" (incl. {r['prerequisite_wall_s_per_seed']:.0f} s {r['prerequisite']})"
        n_params = f"{r['num_params']:,}" if r.get("num_params") else "-"
        target = r["expected"] if r["target_applies"] else f"{r['expected']} on {r['target_dataset']}"
        result = {True: "pass", False: "FAIL", None: "n/a"}[r["passed"]]
        lines.append(
            f"| {r['recipe']} | {r['model']} | {n_params} | {r['dataset']} | {r['metric']} | {target} "
            f"| {r['mean']:.4f} ± {r['std']:.4f} | {len(r['values'])} | {wall_s} | {result} |"
        )
    if not all(r["target_applies"] for r in rows):
        lines += ["", "n/a: trained on another dataset than the one the published target belongs to."]
    if any(r.get("prerequisite") for r in rows):
        lines += ["", "wall/seed includes the training of the run a `train.init_from = \"recipe:...\"` recipe starts "
                  "from (the prerequisite's wall time, trained in this reproduction or reused from an earlier one)."]
    lines += ["", f"Machine: {machine}. Total wall time: {wall:.0f} s.", "", "Sources:"]
    lines += [f"- {r['recipe']}: {r['source']}" for r in rows]
    errs = [(r["recipe"], e) for r in rows for e in r["errors"]]
    if errs:
        lines += ["", "Errors:"] + [f"- {name}: {e}" for name, e in errs]
    return "\n".join(lines) + "\n"


def machine_description() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} CPU cores ({cpu}){gpu}, torch {torch.__version__}"


def reproduce(suite: list[str], out: Path, seeds: int | None = None, jobs: int | None = None,
              extra: list[str] | None = None, log: Any = print) -> tuple[list[dict[str, Any]], int]:
    if seeds is not None and seeds < 1:
        raise ArchlabError(f"--seeds must be >= 1, got {seeds}")
    if jobs is not None and jobs < 1:
        raise ArchlabError(f"--jobs must be >= 1, got {jobs}")
    paths = select(suite)
    if not paths:
        raise ArchlabError(f"no recipes found for {' '.join(suite)} under {recipes_root()}")
    extra = extra or []
    overrides = _overrides(extra)
    # Resolved as the runs will see them: a bad --set fails here once, not in every run.
    recipes = {p: recipe_mod.load(p, overrides) for p in paths}
    named = {Path(item).resolve() for item in suite if Path(item).is_file()} | \
        {p.resolve() for p in paths if p.stem in suite}
    for p, r in list(recipes.items()):
        if r.expect is None:
            if p.resolve() in named:
                raise ArchlabError(f"{p}: recipe has no [expect] table; reproduce needs a target")
            # An experiment without a published reference (e.g. on synthetic data) is not a reproduction.
            log(f"reproduce: skipping {p.stem} (no [expect] table)")
            del recipes[p]
    paths = list(recipes)
    if not paths:
        raise ArchlabError(f"no recipes with an [expect] table for {' '.join(suite)}")
    # `train.init_from = "recipe:..."`: each seed of such a recipe starts from its prerequisite's run of that
    # seed, which lands where this reproduce puts that recipe's own runs (runner.prerequisite_dir). They are
    # trained first, once per seed, with only the runtime --set keys: the caller's other overrides stay out.
    chains = {p: [q for _, q in recipe_mod.prerequisites(r)] for p, r in recipes.items()}
    for p, chain in chains.items():
        for q in chain:
            if any(q.resolve() == o.resolve() for o in paths) and \
                    recipe_mod.fingerprint(recipe_mod.load(q, overrides)) != recipe_mod.fingerprint(recipe_mod.load(q)):
                raise ArchlabError(f"reproduce: --set changes {q.stem}, which {p.stem} starts from (train.init_from "
                                   f"= \"recipe:...\") as written; reproduce them in separate commands")
    tasks = [(p, s) for p in paths for s in (range(seeds) if seeds else recipes[p].expect.seeds)]
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or cores, len(tasks)))
    threads = max(1, cores // jobs)
    out.mkdir(parents=True, exist_ok=True)
    log(f"reproduce: {len(paths)} recipes, {len(tasks)} runs, {jobs} at a time x {threads} threads -> {out}")
    t0 = time.perf_counter()
    # Longest first (a run's prerequisites included) keeps both workers busy until the end.
    cost = {p: _cost_hint(recipes[p]) + sum(_cost_hint(recipe_mod.load(q)) for q in chains[p]) for p in paths}
    order = sorted(tasks, key=lambda t: -cost[t[0]])
    results: dict[tuple[Path, int], dict[str, Any]] = {}
    done_runs: dict[tuple[Path, int], dict[str, Any]] = {}
    locks: dict[tuple[Path, int], threading.Lock] = {}
    guard = threading.Lock()

    def once(p: Path, s: int, args: list[str]) -> dict[str, Any]:
        """Run (p, s) once, whether a task or a prerequisite: a second asker waits for the first's result."""
        key = (p.resolve(), s)
        with guard:
            lock = locks.setdefault(key, threading.Lock())
        with lock:
            if key not in done_runs:
                done_runs[key] = _run_one(p, s, out, threads, args)
            return done_runs[key]

    def task(p: Path, s: int) -> dict[str, Any]:
        for q in reversed(chains[p]):  # deepest first
            pre = once(q, s, _runtime(extra))
            if "error" in pre:
                return {"recipe": p.stem, "seed": s, "error": f"prerequisite {q.stem} (seed {s}): {pre['error']}"}
            log(f"  prerequisite {q.stem} seed {s}: ready ({pre['summary']['wall_s']:.0f} s)")
        return once(p, s, extra)

    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(task, p, s): (p, s) for p, s in order}
        for done, fut in enumerate(as_completed(futures), 1):
            p, s = futures[fut]
            res = fut.result()
            results[(p, s)] = res
            if "error" in res:
                log(f"  [{done}/{len(tasks)}] {p.stem} seed {s}: ERROR {res['error']}")
            else:
                sm = res["summary"]
                m = recipes[p].expect.metric
                log(f"  [{done}/{len(tasks)}] {p.stem} seed {s}: {m}={sm['metrics'][m]:.4f} ({sm['wall_s']:.0f} s)")
    wall = time.perf_counter() - t0
    rows = [aggregate(p, [results[(p, s)] for q, s in tasks if q == p], overrides) for p in paths]
    machine = machine_description()
    report = markdown(rows, machine, wall)
    (out / "report.md").write_text(report)
    (out / "report.json").write_text(json.dumps({"machine": machine, "wall_s": wall, "rows": rows}, indent=2) + "\n")
    from .plots import plot_reproduction, plot_tradeoff

    title = f"archlab reproduce {' '.join(Path(s).stem for s in suite)}"
    plot_reproduction(rows, out / "report.png", title=title)
    if len(rows) > 1 and len({r["metric"] for r in rows}) == 1:  # a comparison: metric vs cost
        plot_tradeoff(rows, out / "tradeoff.png", title=title)
    for p in paths:  # the loop's own pictures over seeds (RL: learning curves, mean ± std)
        dirs = [out / "runs" / f"{p.stem}-s{s}" for q, s in tasks if q == p and "summary" in results[(q, s)]]
        if dirs:
            recipes[p].loop_class.write_seed_artifacts(dirs, out, p.stem)
    log("")
    log(report)
    log(f"report: {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}")
    return rows, 1 if any(r["passed"] is False for r in rows) else 0  # n/a (None) is no failure


def _cost_hint(rec: recipe_mod.Recipe) -> float:
    """Rough relative cost, to schedule long runs first."""
    weights = {"gru": 8.0, "lstm": 8.0, "rnn": 4.0, "cnn1d": 2.0, "resnet20": 50.0, "lenet5": 5.0}
    return weights.get(rec.model_name, 1.0) * (rec.train.steps or rec.train.epochs * 100)
