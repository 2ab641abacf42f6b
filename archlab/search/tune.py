"""``archlab tune``: hyperparameter search over recipe keys on Optuna (Akiba et al. 2019, "Optuna: A
Next-generation Hyperparameter Optimization Framework", KDD).

Optuna owns the search: samplers (TPE, random, grid, CMA-ES, Gaussian process, NSGA-II), pruners
(median, Hyperband) and storages (SQLite, journal file, any RDB URL). archlab owns the trial: every
trial is an ordinary ``archlab train`` run of the recipe with the sampled keys set, and the engine's
``on_eval`` callback hands each validation evaluation to the pruner::

    for trial in study:                                  (J worker processes share one storage)
        params  = {key: trial.suggest_*(key, ...)}       the space: [tune.params] over recipe keys
        recipe  = RECIPE + --set fixed + --set params    validated like `archlab train --set`
        summary = train(recipe, out=STUDY/trials/trial-NNNN,
                        on_eval=lambda step, s: (trial.report(s[metric], step), trial.should_prune())[1])
        value   = summary.metrics[metric]              (pruned trials: status "stopped" -> TrialPruned)

The space is TOML, in a file (``--space``) or in the recipe's own ``[tune]`` table::

    metric = "best_val_acc"            # or a list, e.g. ["best_val_acc", "num_params"] (multi-objective)
    direction = "maximize"             # default: minimize for *loss, *ppl, num_params, wall_s
    [params]                           # (``[tune.params]`` inside a recipe)
    "optim.lr" = { type = "float", low = 1e-4, high = 1e-1, log = true }
    "model.hidden" = { type = "int", low = 16, high = 256 }
    "optim.name" = { type = "categorical", choices = ["adam", "sgd"] }

The study folder (``--out``, default ``runs/tune/<study>``) holds the default storage (``study.db``;
``study.journal`` for ``--jobs`` > 1), ``trials/``, ``trials.csv``, ``best.toml`` (single objective),
``pareto.csv`` (multi-objective) and ``plots/``. Running the same command again resumes the study:
``--trials N`` is the number of finished (complete or pruned) trials the study should end with.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tomli_w

from .. import config as _config
from ..errors import ArchlabError, NonFiniteLoss
from ..io import atomic_write_bytes

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "nsga2")
PRUNERS = ("median", "hyperband", "none")
SUMMARY_METRICS = ("num_params", "wall_s")
"""Objectives read from summary.json besides the loop's metrics (for accuracy-vs-size searches)."""
MAX_TRIALS = 100_000
MAX_JOBS = 256


# -- the search space ----------------------------------------------------------------------------
@dataclass
class ParamSpec:
    """One searched recipe key (an entry of ``[tune.params]``)."""

    type: Literal["float", "int", "categorical"]
    """float and int are ranges [low, high]; categorical picks one of ``choices``."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    """Sample on a log scale (ranges with low > 0)."""
    step: float | None = None
    """Grid spacing of a range (required for ``--sampler grid`` on floats; ints default to 1)."""
    choices: list[Any] | None = None
    """The values of a categorical key: strings, numbers, booleans or lists (e.g. layer widths
    ``[[32], [64, 64]]``; Optuna sees a list as its TOML text, e.g. ``"[64, 64]"``)."""

    def __post_init__(self) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list 'choices'")
            if any(not isinstance(c, (str, int, float, bool, list)) for c in self.choices):
                raise ValueError("choices must be strings, numbers, booleans or lists")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ValueError("choices must be distinct")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical parameter has only 'choices' (no low/high/log/step)")
            return
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter has low/high, not choices")
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"a {self.type} parameter needs low <= high")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError("an int parameter needs integer low and high")
        if self.log and self.low <= 0:
            raise ValueError("log = true needs low > 0")
        if self.step is not None:
            if self.step <= 0 or (self.type == "int" and not float(self.step).is_integer()):
                raise ValueError("step must be positive (an integer for int parameters)")
            if self.log:
                raise ValueError("step and log = true cannot be combined (Optuna samples one or the other)")

    def grid(self, key: str) -> list[Any]:
        """Every value ``--sampler grid`` visits."""
        if self.type == "categorical":
            return self.labels()
        assert self.low is not None and self.high is not None
        if self.type == "float" and self.step is None:
            raise ArchlabError(f"tune.params.{key}: --sampler grid needs a 'step' on float ranges (or use choices)")
        step = self.step or 1
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        if n > 10_000:
            raise ArchlabError(f"tune.params.{key}: the grid has {n} values (at most 10000)")
        values = [self.low + i * step for i in range(n)]
        return [int(v) for v in values] if self.type == "int" else values

    def probes(self) -> list[Any]:
        """Values checked against the recipe before the first trial: the ends of a range, every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def labels(self) -> list[Any]:
        """The categorical values as Optuna stores them (lists as their TOML text)."""
        return [_toml_value(c) if isinstance(c, list) else c for c in self.choices or []]

    def suggest(self, trial: Any, key: str) -> Any:
        if self.type == "categorical":
            label = trial.suggest_categorical(key, self.labels())
            return (self.choices or [])[self.labels().index(label)]
        if self.type == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(key, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass
class SpaceConfig:
    """A search space: the objective(s) and the searched keys (the ``[tune]`` table of a recipe)."""

    metric: str | list[str] = "best_val_acc"
    """Final metric(s) of a trial to optimize (summary.json ``metrics``, or num_params / wall_s)."""
    direction: str | list[str] = ""
    """maximize | minimize, one per metric ("": minimize losses, perplexities, num_params and wall_s)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Recipe key (dotted path, as for --set) -> ParamSpec table."""

    def __post_init__(self) -> None:
        metrics = [self.metric] if isinstance(self.metric, str) else list(self.metric)
        if not metrics or len(metrics) > 8 or len(set(metrics)) != len(metrics):
            raise ValueError("metric must be one metric name or a list of 1..8 distinct names")
        self.metric = metrics
        if self.direction in ("", []):
            self.direction = ["minimize" if _lower_is_better(m) else "maximize" for m in metrics]
        directions = [self.direction] if isinstance(self.direction, str) else list(self.direction)
        if len(directions) != len(metrics) or any(d not in ("maximize", "minimize") for d in directions):
            raise ValueError(f"direction must be 'maximize' or 'minimize', one per metric ({len(metrics)})")
        self.direction = directions
        if not self.params:
            raise ValueError("[params] is empty: name at least one recipe key to search")

    @property
    def metrics(self) -> list[str]:
        return list(self.metric)

    @property
    def directions(self) -> list[str]:
        return list(self.direction)


def _lower_is_better(metric: str) -> bool:
    return metric.endswith(("loss", "ppl", "regret")) or metric in SUMMARY_METRICS


def parse_space(raw: dict[str, Any], where: str) -> tuple[SpaceConfig, dict[str, ParamSpec]]:
    space = _config.build(SpaceConfig, raw, where)
    specs = {}
    for key, value in space.params.items():
        if not isinstance(value, dict):
            raise ArchlabError(f"{where}.params.{key}: expected a table such as {{ type = \"float\", low = 0.0, "
                               f"high = 1.0 }}, got {value!r}")
        parts = key.split(".")
        if any(not p for p in parts) or key in ("name", "seed", "description"):
            raise ArchlabError(f"{where}.params.{key}: a searched key is a dotted recipe path such as optim.lr")
        specs[key] = _config.build(ParamSpec, value, f"{where}.params.{key}")
    return space, specs


def _toml_value(value: Any) -> str:
    """A one-line --set value: ``tomli_w`` writes scalars exactly (floats round-trip, strings quoted)."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).strip()[len("v = "):]


# -- recipes -------------------------------------------------------------------------------------
def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ArchlabError(f"{what} file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ArchlabError(f"{path}: cannot read the {what} ({exc})") from None


def trial_recipe(recipe_path: Path, fixed: list[str], params: dict[str, Any]) -> Any:
    """The recipe of one trial: the file, the fixed ``--set`` overrides, then the sampled keys."""
    from .. import recipe as recipe_mod

    return recipe_mod.load(recipe_path, fixed + [f"{k}={_toml_value(v)}" for k, v in params.items()])


def reported_metrics(recipe: Any) -> set[str]:
    """Everything a trial's summary.json can give as an objective."""
    cls = recipe.loop_class
    metric, _ = recipe.monitor()
    names = {*cls.metrics, f"best_{metric}", "best_step", *SUMMARY_METRICS}
    if cls.keep_best:
        names |= {f"final_{m}" for m in cls.metrics}
    return names


# -- storage -------------------------------------------------------------------------------------
def default_storage(out: Path, jobs: int) -> str:
    """The study folder's own storage: an existing one, else SQLite (one worker) or a journal file."""
    db, journal = out / "study.db", out / "study.journal"
    if journal.exists() or (jobs > 1 and not db.exists()):
        return f"journal:{journal}"
    return f"sqlite:///{db}"


def open_storage(url: str) -> Any:
    """``journal:PATH`` -> Optuna's journal file storage (safe for many processes on one machine);
    ``sqlite:///PATH``, ``postgresql://...``, ``mysql://...`` -> RDB storage. SQLite waits up to 60 s
    for a locked database; server databases get Optuna's heartbeat, so a trial whose machine died
    is failed and retried after two minutes."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ArchlabError(f"--storage {url!r}: expected journal:PATH, sqlite:///PATH or a database URL "
                           f"such as postgresql://user:password@host/db")
    try:
        if url.startswith("sqlite:"):
            Path(url.split(":///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        from optuna.storages import RetryFailedTrialCallback

        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                          failed_trial_callback=RetryFailedTrialCallback(max_retry=1))
    except (ImportError, ModuleNotFoundError) as exc:
        raise ArchlabError(f"--storage {url.split('://')[0]}://...: the database driver is missing ({exc})") from None
    except Exception as exc:  # noqa: BLE001 -- SQLAlchemy raises many kinds; the user needs one line
        raise ArchlabError(f"--storage: cannot open {url.split('@')[-1]!r}: {str(exc).splitlines()[0][:200]}") from None


# -- samplers and pruners ------------------------------------------------------------------------
def make_sampler(name: str, seed: int, specs: dict[str, ParamSpec]) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({k: s.grid(k) for k, s in specs.items()}, seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def make_pruner(name: str) -> Any:
    import optuna

    if name == "median":  # prune below the median of earlier trials at the same step, after 2 trials
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


# -- one worker ----------------------------------------------------------------------------------
@dataclass
class WorkerSpec:
    """Everything a worker process needs, as plain JSON."""

    recipe: str
    fixed: list[str]
    space: dict[str, Any]
    space_where: str
    storage: str
    study: str
    sampler: str
    pruner: str
    seed: int
    trials: int
    """Trials this worker runs."""
    total: int
    """Finished trials the study should end with (workers stop early when it is reached)."""
    out: str
    worker: int = 0


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: assume someone is still working on it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_study(spec: WorkerSpec, create: bool) -> Any:
    import optuna

    space, specs = parse_space(spec.space, spec.space_where)
    storage = open_storage(spec.storage)
    kwargs = {"study_name": spec.study, "storage": storage, "pruner": make_pruner(spec.pruner)}
    if not create:
        # A fresh study's first worker samples with --seed itself (the sequence Optuna gives for that
        # seed); other workers, and sessions resuming a study, mix in their index and the trials
        # already there, so they do not replay the values the first session drew.
        existing = len(optuna.load_study(**kwargs).get_trials(deepcopy=False))
        seed = spec.seed if spec.worker == 0 and existing == 0 else int(
            np.random.SeedSequence([spec.seed, spec.worker, existing]).generate_state(1)[0])
        return optuna.load_study(sampler=make_sampler(spec.sampler, seed, specs), **kwargs)
    try:
        return optuna.create_study(directions=space.directions, load_if_exists=True, **kwargs)
    except ValueError as exc:  # an existing study with other directions
        raise ArchlabError(f"--study {spec.study}: {exc}") from None


def run_worker(spec: WorkerSpec, log: Any = print) -> None:
    """Run ``spec.trials`` trials of the study (one process)."""
    import optuna
    from optuna.trial import TrialState

    from ..runner import train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, specs = parse_space(spec.space, spec.space_where)
    study = load_study(spec, create=False)
    recipe_path, out = Path(spec.recipe), Path(spec.out)
    metrics, single = space.metrics, len(space.metrics) == 1
    # Intermediate values come from validation evaluations: best_val_acc is reported as val_acc.
    watched = metrics[0].removeprefix("best_") if single else None
    prefix = f"[worker {spec.worker}] " if spec.worker else ""

    def objective(trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = {key: s.suggest(trial, key) for key, s in specs.items()}
        recipe = trial_recipe(recipe_path, spec.fixed, params)
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))

        def on_eval(step: int, scores: dict[str, float]) -> bool:
            if watched not in scores:
                return False
            trial.report(scores[watched], step)
            return trial.should_prune()

        summary = train(recipe, out=run_dir, progress=False, log=lambda m: None,
                        on_eval=on_eval if single else None)
        values = [_objective_value(summary, m) for m in metrics]
        shown = " ".join(f"{m}={v:.4g}" for m, v in zip(metrics, values, strict=True))
        setting = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        if summary["status"] == "stopped":
            log(f"{prefix}trial {trial.number}: pruned at step {summary['steps']} ({setting})")
            raise optuna.TrialPruned()
        log(f"{prefix}trial {trial.number}: {shown} ({setting}) [{summary['wall_s']:.1f} s]")
        return values[0] if single else values

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    study.optimize(objective, n_trials=spec.trials, catch=(ArchlabError, NonFiniteLoss),
                   callbacks=[optuna.study.MaxTrialsCallback(spec.total, states=finished)])


def _objective_value(summary: dict[str, Any], metric: str) -> float:
    value = summary.get(metric) if metric in SUMMARY_METRICS else summary["metrics"].get(metric)
    if not isinstance(value, (int, float)):
        raise ArchlabError(f"tune metric {metric!r}: the trial reported none (metrics: "
                           f"{', '.join(summary['metrics'])})")
    return float(value)


# -- the study -----------------------------------------------------------------------------------
def recover_stale_trials(study: Any, storage_url: str, log: Any = print) -> int:
    """Trials left RUNNING by a killed worker of this machine (its process is gone) become FAIL and
    their parameters are queued again, so the resumed study runs them first. Returns how many."""
    from optuna.trial import TrialState

    storage = open_storage(storage_url)
    study_id = storage.get_study_id_from_name(study.study_name)
    host, recovered = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or _pid_alive(t.user_attrs.get("pid")):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log(f"archlab: trial {t.number} was left running by a stopped worker (pid {t.user_attrs['pid']}); "
            f"queued again")
        recovered += 1
    return recovered


def tune(recipe: str | os.PathLike, space_path: str | os.PathLike | None = None, trials: int = 20,
         sampler: str | None = None, pruner: str | None = None, storage: str | None = None,
         study: str | None = None, jobs: int = 1, out: str | os.PathLike | None = None,
         fixed: list[str] | None = None, seed: int = 0, log: Any = print) -> dict[str, Any]:
    """Run (or resume) a study; write its reports; return ``{"study", "out", "best", "trials"}``."""
    try:
        import optuna
    except ImportError:
        raise ArchlabError("archlab tune needs Optuna: pip install 'archlab[tune]'") from None
    from optuna.trial import TrialState

    from .. import recipe as recipe_mod

    fixed = list(fixed or [])
    recipe_path = Path(recipe)
    if not 1 <= trials <= MAX_TRIALS:
        raise ArchlabError(f"--trials must be in [1, {MAX_TRIALS}], got {trials}")
    if not 1 <= jobs <= MAX_JOBS:
        raise ArchlabError(f"--jobs must be in [1, {MAX_JOBS}], got {jobs}")
    if not 0 <= seed < 2**32:
        raise ArchlabError(f"--seed must be in [0, 2**32), got {seed}")
    base = recipe_mod.load(recipe_path, fixed)  # the recipe and --set are valid on their own
    raw_recipe = _read_toml(recipe_path, "recipe")
    if space_path is not None:
        space_raw, where = _read_toml(Path(space_path), "search space"), "space"
    elif isinstance(raw_recipe.get("tune"), dict):
        space_raw, where = raw_recipe["tune"], "tune"
    else:
        raise ArchlabError(f"{recipe_path}: no search space: pass --space SPACE.toml or add a [tune] table")
    space, specs = parse_space(space_raw, where)
    single = len(space.metrics) == 1
    sampler = sampler or ("tpe" if single else "nsga2")
    pruner = pruner or ("median" if single else "none")
    _check_choices(sampler, pruner, single, specs)
    known = reported_metrics(base)
    for m in space.metrics:
        if m not in known:
            raise ArchlabError(f"{where}.metric: {m!r} is not a metric of loop {base.train.loop!r}; "
                               f"choose from {', '.join(sorted(known))}")
    fixed_keys = {item.split("=", 1)[0].strip() for item in fixed}
    for key, s in specs.items():
        if key in fixed_keys:
            raise ArchlabError(f"{where}.params.{key}: fixed by --set and searched at once; drop one")
        for value in s.probes():  # every value the search can reach must make a valid recipe
            try:
                trial_recipe(recipe_path, fixed, {key: value})
            except ArchlabError as exc:
                raise ArchlabError(f"{where}.params.{key} = {value!r}: {exc}") from None

    name = study or base.name
    out_dir = Path(out) if out is not None else Path("runs") / "tune" / name
    url = storage or default_storage(out_dir, jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = WorkerSpec(recipe=str(recipe_path), fixed=fixed, space=space_raw, space_where=where, storage=url,
                      study=name, sampler=sampler, pruner=pruner, seed=seed, trials=0, total=trials,
                      out=str(out_dir))
    the_study = load_study(spec, create=True)
    recover_stale_trials(the_study, url, log)
    done = len(the_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    remaining = trials - done
    log(f"archlab: study {name!r} in {out_dir} ({url.split('@')[-1]}): {done} finished trials, "
        f"{max(remaining, 0)} to run on {jobs} worker{'s' if jobs > 1 else ''}")
    if remaining > 0 and jobs == 1:
        run_worker(WorkerSpec(**{**asdict(spec), "trials": remaining}), log)
    elif remaining > 0:
        _run_workers(spec, remaining, jobs)
    return write_reports(optuna.load_study(study_name=name, storage=open_storage(url)), space, out_dir, log)


def _check_choices(sampler: str, pruner: str, single: bool, specs: dict[str, ParamSpec]) -> None:
    import importlib.util

    if sampler not in SAMPLERS:
        raise ArchlabError(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ArchlabError(f"--pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if not single and pruner != "none":
        raise ArchlabError("--pruner: Optuna cannot prune multi-objective studies; use --pruner none")
    if not single and sampler in ("cmaes", "gp"):
        raise ArchlabError(f"--sampler {sampler}: single objective only; use nsga2, tpe or random")
    if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ArchlabError("--sampler cmaes needs the cmaes package: pip install cmaes")
    if sampler == "grid":
        for key, s in specs.items():
            s.grid(key)


def _run_workers(spec: WorkerSpec, remaining: int, jobs: int) -> None:
    """``jobs`` processes, each running its share of the remaining trials on the shared storage."""
    shares = [remaining // jobs + (1 if w < remaining % jobs else 0) for w in range(jobs)]
    procs = []
    for w, share in enumerate(shares):
        if share:
            payload = json.dumps(asdict(WorkerSpec(**{**asdict(spec), "trials": share, "worker": w})))
            procs.append(subprocess.Popen([sys.executable, "-m", "archlab.search.tune", payload]))
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # each worker checkpoints its trial, marks it failed and exits
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [str(c) for c in codes if c]
    if failed:
        raise ArchlabError(f"{len(failed)} of {len(procs)} tuning workers failed (exit codes {', '.join(failed)}); "
                           f"run the same command again to resume the study")


# -- reports -------------------------------------------------------------------------------------
def write_reports(study: Any, space: SpaceConfig, out: Path, log: Any = print) -> dict[str, Any]:
    """trials.csv, best.toml (single objective) or pareto.csv, and plots/ of a study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    metrics = space.metrics
    param_keys = sorted({k for t in trials for k in t.params})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", *metrics, *param_keys, "duration_s", "run_dir"])
    for t in trials:
        values = t.values if t.values is not None else [None] * len(metrics)
        duration = t.duration.total_seconds() if t.duration is not None else None
        w.writerow([t.number, t.state.name.lower(), *values, *(t.params.get(k) for k in param_keys),
                    None if duration is None else round(duration, 2), t.user_attrs.get("run_dir", "")])
    atomic_write_bytes(out / "trials.csv", buf.getvalue().encode())
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    result: dict[str, Any] = {"study": study.study_name, "out": str(out), "trials": len(trials),
                              "complete": len(complete), "best": None}
    if not complete:
        log(f"archlab: no trial of {study.study_name!r} completed; trials table: {out / 'trials.csv'}")
        return result
    if len(metrics) == 1:
        best = study.best_trial
        run_dir = Path(best.user_attrs["run_dir"])
        if (run_dir / "recipe.toml").is_file():
            atomic_write_bytes(out / "best.toml", (run_dir / "recipe.toml").read_bytes())
        result["best"] = {"number": best.number, "value": best.value, "params": best.params, "run_dir": str(run_dir)}
        setting = ", ".join(f"{k}={v}" for k, v in best.params.items())
        log(f"best trial {best.number}: {metrics[0]}={best.value:.4f} ({setting}); recipe: {out / 'best.toml'}")
    else:
        front = study.best_trials
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["number", *metrics, *param_keys, "run_dir"])
        for t in sorted(front, key=lambda t: t.values[0]):
            w.writerow([t.number, *t.values, *(t.params.get(k) for k in param_keys), t.user_attrs.get("run_dir")])
        atomic_write_bytes(out / "pareto.csv", buf.getvalue().encode())
        result["best"] = [{"number": t.number, "values": t.values, "params": t.params} for t in front]
        log(f"Pareto front: {len(front)} trials ({out / 'pareto.csv'})")
    from .plots import plot_study

    result["plots"] = [str(p) for p in plot_study(study, space, out / "plots")]
    log(f"trials table: {out / 'trials.csv'}; plots: {out / 'plots'}")
    return result


# -- command line --------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    s = sub.add_parser("tune", help="hyperparameter search over recipe keys (Optuna; resumable, parallel)")
    s.set_defaults(run=run)
    s.add_argument("recipe", help="recipe TOML file")
    s.add_argument("--space", help="search space TOML (default: the recipe's [tune] table)")
    s.add_argument("--trials", type=int, default=20, help="finished trials the study ends with (default 20)")
    s.add_argument("--sampler", help=f"{' | '.join(SAMPLERS)} (default tpe; nsga2 for several metrics)")
    s.add_argument("--pruner", help=f"{' | '.join(PRUNERS)} (default median; none for several metrics)")
    s.add_argument("--storage", help="journal:PATH, sqlite:///PATH or a database URL shared by several machines "
                                     "(default: study.db in the study folder; study.journal with --jobs > 1)")
    s.add_argument("--study", help="study name (default: the recipe name)")
    s.add_argument("--jobs", type=int, default=1, help="worker processes on this machine (default 1)")
    s.add_argument("--out", help="study folder (default runs/tune/<study>)")
    s.add_argument("--seed", type=int, default=0, help="sampler seed (worker w uses seed + w; default 0)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a recipe key for every trial, e.g. --set train.threads=1 (repeatable)")


def run(args: argparse.Namespace) -> int:
    tune(args.recipe, args.space, trials=args.trials, sampler=args.sampler, pruner=args.pruner,
         storage=args.storage, study=args.study, jobs=args.jobs, out=args.out, fixed=args.overrides,
         seed=args.seed)
    return 0


def _worker_main(payload: str) -> int:
    try:
        run_worker(WorkerSpec(**json.loads(payload)))
    except ArchlabError as exc:
        print(f"archlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1]))
