"""Recipes: one reproducible experiment as TOML, validated into dataclasses.

A recipe has the tables ``[model]``, ``[data]``, ``[optim]``, ``[train]``, ``[loop]`` and ``[expect]``.
``[model]`` holds ``name`` plus that model's own config keys; ``[data]`` holds ``name``, loader keys
and ``[data.options]`` (the dataset's own keys); ``[loop]`` the settings of the loop ``train.loop``
names, and ``[optim.NAME]`` the optimizer of each named trainable of that loop. What a loop reads is
declared on the loop (:class:`archlab.engine.loop.Loop`): RL recipes name the algorithm in ``[algo]``
and the environment in ``[env]``, and have no ``[data]``. Every key is checked against its dataclass, so a
typo fails with the key's dotted path and the allowed keys before any work starts. ``--set a.b=v``
overrides are parsed as TOML values and go through the same validation.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from . import config as _config
from .engine.optim import OptimConfig
from .engine.parallel import ParallelConfig, PipelineSchedule, StrategyName
from .errors import ArchlabError

Precision = Literal["fp32", "bf16", "fp16"]

MAX_STEPS = 10**9
"""Upper bound of step counts and intervals: far beyond any run, low enough to catch typos."""
MAX_COUNT = 10**7
"""Upper bound of batch sizes."""
RECIPE_PREFIX = "recipe:"
"""``train.init_from = "recipe:ssl/mae_mnist"``: start from the finished run of that recipe (same seed)."""
RUNTIME_TRAIN_KEYS = frozenset({"threads", "device", "tensorboard", "checkpoint_minutes", "keep_checkpoints",
                                "checkpoint_every"})
"""``[train]`` keys that say how a run executes, not what it computes: left out of :func:`fingerprint`, and
the only ``--set`` keys ``archlab reproduce`` passes on to a ``recipe:`` prerequisite."""


@dataclass
class DataConfig:
    """Which dataset and how batches are drawn."""

    name: str
    """Registered dataset name (``archlab list`` shows models; datasets: digits, mnist1d, mnist)."""
    batch_size: int = 64
    """Global batch size (split across processes with ``--nproc``)."""
    eval_batch_size: int = 1000
    """Batch size for evaluation passes."""
    val_fraction: float = 0.1
    """Share of the training split held out for validation (0 disables validation)."""
    split_seed: int = 0
    """Seed of the train/validation split (fixed across runs so validation is comparable)."""
    augment: list[str] = field(default_factory=list)
    """Training-time batch transforms, e.g. ["shift:2"], ["crop:4", "hflip"]."""
    options: dict[str, Any] = field(default_factory=dict)
    """Dataset-specific keys (validated by the dataset), e.g. mnist1d's ``seed``."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_COUNT or not 1 <= self.eval_batch_size <= MAX_COUNT:
            raise ValueError(f"batch sizes must be in [1, {MAX_COUNT}]")
        if not 0 <= self.split_seed < 2**32:
            raise ValueError(f"split_seed must be in [0, 2**32), got {self.split_seed}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")


@dataclass
class TrainConfig:
    """The training loop and engine services."""

    loop: str = "supervised"
    """Training paradigm (``archlab list loops``); its own settings go in the ``[loop]`` table."""
    steps: int = 0
    """Optimizer steps; 0 means use ``epochs``."""
    epochs: float = 0.0
    """Passes over the training split (used when ``steps`` is 0)."""
    eval_every: int = 0
    """Evaluate on validation every N steps (0: once per epoch)."""
    log_every: int = 50
    """Write train loss to metrics.jsonl every N steps."""
    precision: Precision = "fp32"
    compile: bool = False
    """Wrap the model in torch.compile."""
    activation_checkpointing: bool = False
    """Recompute the model's transformer blocks / residual blocks in the backward pass instead of keeping
    their activations: less memory, one extra forward (models that offer it: ``archlab.nn.checkpointing``)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm (0 disables)."""
    accumulate: int = 1
    """Gradient accumulation: micro-batches per optimizer step."""
    l1: float = 0.0
    """L1 penalty on weights (not biases/norms), added to the loss."""
    checkpoint_every: int = 0
    """Also write a checkpoint every N steps (0: only by wall time and at the end)."""
    checkpoint_minutes: float = 10.0
    """Write a checkpoint when this many minutes of wall time passed since the last one, so a killed
    run loses at most that much (0: off)."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept (at least 1)."""
    early_stopping: int = 0
    """Stop after N evaluations without improving ``monitor`` (0 disables)."""
    monitor: str = ""
    """Validation metric for early stopping and best-model selection ("": the loop's default)."""
    monitor_mode: Literal["", "max", "min"] = ""
    """Whether larger or smaller ``monitor`` is better ("": the loop's default for its default metric)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (slower on some ops)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = False
    """Also log scalars to TensorBoard (needs the tensorboard extra)."""
    threads: int = 0
    """torch CPU threads (0: leave PyTorch's default)."""
    init_from: str = ""
    """Start from the weights of this finished run directory (or save_pretrained folder): tensors are
    copied by name; keys the saved model lacks (adapters, new heads) keep their initialization.
    ``"recipe:FAMILY/NAME"`` (a recipe under ``recipes/``, ``.toml`` optional) means the finished run of that
    recipe at this run's seed, trained first if needed (:func:`prerequisites`, docs/engine.md)."""
    init_skip: list[str] = field(default_factory=list)
    """With init_from: key prefixes (``"head"`` covers ``head.*``) of saved tensors not copied, so those
    keep their fresh initialization -- a new head, even one of another shape."""
    init_rename: dict[str, str] = field(default_factory=dict)
    """With init_from: saved key prefix -> this model's prefix, applied after init_skip (``{encoder = ""}``
    copies a pre-trained MAE's ``encoder.*`` into a plain ViT; ``""`` as a source means every key)."""
    freeze: list[str] = field(default_factory=list)
    """Parameter name prefixes (``"features"`` covers ``features.*``) kept fixed: no gradients, no
    updates (buffers such as batch-norm running statistics still update in training mode)."""
    parallel: StrategyName = "ddp"
    """How ``--nproc`` workers share the run (docs/scale.md): ddp (data parallel) | fsdp (sharded
    parameters, gradients and optimizer state) | tensor (heads and MLP split; transformer family) |
    pipeline (layers split in stages; GPT) | local_sgd (periodic averaging / DiLoCo)."""
    local_sgd_every: int = 1
    """local_sgd: local steps between outer steps (H)."""
    outer_lr: float = 1.0
    """local_sgd: outer learning rate on the averaged pseudo-gradient (1 with momentum 0: plain averaging;
    DiLoCo: 0.7)."""
    outer_momentum: float = 0.0
    """local_sgd: outer Nesterov momentum (DiLoCo: 0.9)."""
    microbatches: int = 2
    """pipeline: micro-batches each global batch is split into (the batch size must divide by it)."""
    pipeline_schedule: PipelineSchedule = "1f1b"
    """pipeline: gpipe (all forwards, then all backwards) | 1f1b (needs microbatches >= processes)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs == 0):
            raise ValueError("set train.steps or train.epochs to a positive number")
        if self.steps > MAX_STEPS or not self.epochs <= 1e6:
            raise ValueError(f"need steps <= {MAX_STEPS} and epochs <= 1e6, got {self.steps}, {self.epochs}")
        if not 1 <= self.accumulate <= 4096:
            raise ValueError(f"accumulate must be in [1, 4096], got {self.accumulate}")
        if not 1 <= self.log_every <= MAX_STEPS:
            raise ValueError(f"log_every must be in [1, {MAX_STEPS}], got {self.log_every}")
        for key, value in (("eval_every", self.eval_every), ("checkpoint_every", self.checkpoint_every),
                           ("early_stopping", self.early_stopping)):
            if not 0 <= value <= MAX_STEPS:
                raise ValueError(f"{key} must be in [0, {MAX_STEPS}], got {value}")
        if not 0 <= self.threads <= 1024:
            raise ValueError(f"threads must be in [0, 1024], got {self.threads}")
        if not 1 <= self.keep_checkpoints <= 1000:
            raise ValueError(f"keep_checkpoints must be in [1, 1000], got {self.keep_checkpoints}")
        if not 0 <= self.checkpoint_minutes <= 1e6:
            raise ValueError(f"checkpoint_minutes must be in [0, 1e6], got {self.checkpoint_minutes}")
        if not 0 <= self.grad_clip <= 1e6 or not 0 <= self.l1 <= 100:
            raise ValueError(f"need 0 <= grad_clip <= 1e6 and 0 <= l1 <= 100, got {self.grad_clip}, {self.l1}")
        for key, prefixes in (("init_skip", self.init_skip), ("freeze", self.freeze)):
            if not all(isinstance(p, str) and p.strip(".") == p and p for p in prefixes):
                raise ValueError(f"{key} must list non-empty key prefixes without leading/trailing dots, got "
                                 f"{prefixes!r}")
        if self.init_from.startswith(RECIPE_PREFIX):
            ref = self.init_from[len(RECIPE_PREFIX):]
            parts = ref.split("/")
            if not ref or "\\" in ref or any(p in ("", ".", "..") for p in parts) or not ref.isprintable():
                raise ValueError(f"init_from = {self.init_from!r}: after {RECIPE_PREFIX!r} comes a recipe path "
                                 "relative to recipes/, e.g. \"recipe:ssl/mae_mnist\"")
        if self.init_skip and not self.init_from:
            raise ValueError("init_skip needs init_from (it names saved tensors not to copy)")
        for source, target in self.init_rename.items():
            if not isinstance(target, str) or source.strip(".") != source or target.strip(".") != target:
                raise ValueError(f"init_rename maps key prefixes to key prefixes (strings without leading/trailing "
                                 f"dots, \"\" for the root), got {source!r} = {target!r}")
        if self.init_rename and not self.init_from:
            raise ValueError("init_rename needs init_from (it moves saved tensors to new names)")
        self.parallel_config()  # range checks of the parallel keys

    def parallel_config(self) -> ParallelConfig:
        """The ``parallel*`` keys as the engine's :class:`~archlab.engine.parallel.ParallelConfig`."""
        return ParallelConfig(self.parallel, self.local_sgd_every, self.outer_lr, self.outer_momentum,
                              self.microbatches, self.pipeline_schedule)


@dataclass
class ExpectConfig:
    """The published target this recipe reproduces."""

    metric: str
    value: float
    source: str
    """Paper + table, or repository + file, the target comes from."""
    compare: Literal["approx", "min", "max"] = "approx"
    """approx: |achieved - value| <= tolerance; min: achieved >= value; max: achieved <= value."""
    tolerance: float = 0.0
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds that ``archlab reproduce`` averages over."""

    def __post_init__(self) -> None:
        if not self.seeds or not all(0 <= s < 2**32 for s in self.seeds):
            raise ValueError(f"seeds must list at least one seed, each in [0, 2**32), got {self.seeds}")
        if not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number, got {self.value}")
        if not 0 <= self.tolerance < math.inf:
            raise ValueError(f"tolerance must be a finite number >= 0, got {self.tolerance}")

    def met(self, achieved: float) -> bool:
        if self.compare == "approx":
            return abs(achieved - self.value) <= self.tolerance + 1e-12
        if self.compare == "min":
            return achieved >= self.value
        return achieved <= self.value

    def describe(self) -> str:
        if self.compare == "approx":
            return f"{self.value:g} ± {self.tolerance:g}"
        return f"{'≥' if self.compare == 'min' else '≤'} {self.value:g}"


@dataclass
class Recipe:
    """A validated recipe. ``loop`` is the loop's own config (its ``[loop]`` table), ``optim`` one
    optimizer config per trainable the loop declares, ``tables`` the loop's extra tables (RL's ``env``)."""

    train: TrainConfig
    model: dict[str, Any]
    """The trained object's table (``[model]``, or ``[algo]`` for RL): ``name`` plus its config keys."""
    data: DataConfig | None
    optim: dict[str, OptimConfig]
    loop: Any
    tables: dict[str, Any] = field(default_factory=dict)
    expect: ExpectConfig | None = None
    name: str = "run"
    """Short name (defaults to the file stem); names the run directory."""
    description: str = ""
    seed: int = 0
    quick: bool = True
    """False: a long run that `archlab reproduce --suite quick` leaves out although its data is embedded."""

    @property
    def loop_class(self) -> type:
        from .engine.loop import get_loop

        return get_loop(self.train.loop)

    @property
    def model_name(self) -> str:
        """The registered name of what is trained (a model, an RL algorithm)."""
        return self.model["name"]

    @property
    def model_config(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}

    @property
    def dataset(self) -> str:
        """What the run learns from: the dataset name, or (loops without ``[data]``) the first extra
        table's ``id`` or ``name`` (RL: the environment id)."""
        if self.data is not None:
            return self.data.name
        for table in self.tables.values():
            values = _config.to_dict(table)
            for key in ("id", "name"):
                if isinstance(values.get(key), str):
                    return values[key]
        return ""

    def monitor(self) -> tuple[str, str]:
        """(metric, mode) of best-model selection and early stopping: the recipe's or the loop's default."""
        default, default_mode = self.loop_class.monitor
        metric = self.train.monitor or default
        mode = self.train.monitor_mode or (default_mode if metric == default else
                                           "min" if metric.endswith(("loss", "ppl")) else "max")
        return metric, mode

    def to_dict(self) -> dict[str, Any]:
        cls = self.loop_class
        out: dict[str, Any] = {"name": self.name, "seed": self.seed, **({} if self.quick else {"quick": False})}
        if self.description:
            out["description"] = self.description
        out[cls.model_table] = dict(self.model)
        if self.data is not None:
            out["data"] = _config.to_dict(self.data)
        configs = list(self.optim.values())
        if configs and all(c == configs[0] for c in configs):
            out["optim"] = _config.to_dict(configs[0])
        elif configs:
            out["optim"] = {k: _config.to_dict(v) for k, v in self.optim.items()}
        out["train"] = _config.to_dict(self.train)
        loop = _config.to_dict(self.loop)
        if loop:
            out["loop"] = loop
        out.update({k: _config.to_dict(v) for k, v in self.tables.items()})
        if self.expect is not None:
            out["expect"] = _config.to_dict(self.expect)
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# Keys that used to live in shared tables and now belong to one loop's [loop] table.
MOVED = {"data.folds": "loop.folds (graph loop)", "data.fold": "loop.fold (graph loop)",
         "data.test_fraction": "loop.test_fraction (graph, link and temporal loops)",
         "data.fanouts": "loop.fanouts (node loop)", "data.seq_len": "loop.seq_len (mlm loop)",
         "data.mask_prob": "loop.mask_prob (mlm loop)", "train.eval_iters": "loop.eval_iters (lm loop)",
         "train.label_smoothing": "loop.label_smoothing (supervised and seq2seq loops)"}

MAX_DEPTH = 32
"""Deepest table nesting a recipe may have (TOML itself has no limit; deep nesting is always a mistake)."""


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of tables/arrays, counted without recursion (a hostile file can nest thousands deep)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=v`` -> (["a", "b"], v), v parsed as a TOML value (bare words are strings)."""
    if "=" not in item:
        raise ArchlabError(f"malformed --set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.01")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ArchlabError(f"malformed --set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.01")
    if any(c in item for c in "\n\r\0"):
        raise ArchlabError(f"malformed --set {item!r}: a value must be on one line")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        if not raw.strip() or any(c in raw for c in "[]{}\"'="):
            raise ArchlabError(f"malformed --set {item!r}: {raw.strip()!r} is not a TOML value") from None
        value = raw.strip()
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ArchlabError(f"--set {item!r}: {p} is not a table")
            node = nxt
        node[parts[-1]] = value
    return raw


def _table(raw: dict[str, Any], key: str, required: bool, why: str = "") -> dict[str, Any] | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise ArchlabError(f"recipe has no [{key}] table{why}")
        return None
    if not isinstance(value, dict):
        raise ArchlabError(f"{key}: expected a table, got {value!r}")
    return value


def _optim(raw: Any, defaults: dict[str, dict[str, Any]], loop: str) -> dict[str, OptimConfig]:
    """``[optim]`` (shared keys) and ``[optim.NAME]`` (per trainable, over the shared keys, over the
    loop's defaults for that trainable) -> one config per trainable the loop declares."""
    names = tuple(defaults)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ArchlabError(f"optim: expected a table, got {raw!r}")
    if not names:
        if raw:
            raise ArchlabError(f"[optim] is not used by loop {loop!r}: its algorithms set their own step sizes "
                               f"(see `archlab list loops`)")
        return {}
    shared = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    named = {k: v for k, v in raw.items() if isinstance(v, dict)}
    unknown = sorted(set(named) - set(names))
    if unknown:
        fields = ", ".join(_config.field_names(OptimConfig))
        raise ArchlabError(f"optim.{unknown[0]}: loop {loop!r} has no optimizer {unknown[0]!r}; its optimizers: "
                           f"{', '.join(names)} (optimizer keys: {fields})")
    return {n: _config.build(OptimConfig, {**defaults[n], **shared, **named.get(n, {})},
                             f"optim.{n}" if n in named else "optim") for n in names}


def from_dict(raw: dict[str, Any], default_name: str = "run") -> Recipe:
    """Validate a raw recipe dict: every table against its dataclass, the model and the dataset
    against their registries, the loop's own tables against the loop's declarations."""
    from .data import dataset_names, make_transform
    from .data.registry import get_entry
    from .engine.loop import LOOPS
    from .registry import MODELS

    if not isinstance(raw, dict):
        raise ArchlabError("a recipe is a TOML table")
    if _depth(raw, MAX_DEPTH) > MAX_DEPTH:
        raise ArchlabError(f"recipe nests tables deeper than {MAX_DEPTH} levels")
    raw = dict(raw)
    train_raw = _table(raw, "train", True, "; required tables: model, data, train (see `archlab list loops`)")
    loop_name = train_raw.get("loop", "supervised")
    if not isinstance(loop_name, str) or loop_name not in LOOPS:
        raise ArchlabError(f"train.loop: unknown loop {loop_name!r}; loops: {', '.join(LOOPS.names())}")
    cls = LOOPS.get(loop_name).obj
    for key, new in MOVED.items():
        table, sub = key.split(".")
        if isinstance(raw.get(table), dict) and sub in raw[table]:
            raise ArchlabError(f"{key} has moved to {new}")
    # [tune] is the recipe's own search space for `archlab tune` (archlab/search/tune.py); training ignores it.
    allowed = {"name", "description", "seed", "quick", "train", "optim", "expect", "loop", "tune", cls.model_table,
               *cls.tables}
    if cls.uses_data:
        allowed.add("data")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ArchlabError(f"unknown key {unknown[0]} in recipe for loop {loop_name!r}; allowed keys: "
                           f"{', '.join(sorted(allowed))}")

    train = _config.build(TrainConfig, train_raw, "train")
    if train.parallel not in cls.parallel:
        raise ArchlabError(f"train.parallel: loop {loop_name!r} supports {', '.join(cls.parallel)}, not "
                           f"{train.parallel!r} (see docs/scale.md)")
    model = _table(raw, cls.model_table, True, f"; loop {loop_name!r} needs [{cls.model_table}] with a name")
    if not isinstance(model.get("name"), str):
        raise ArchlabError(f"{cls.model_table}.name: required string naming a registered "
                           f"{'algorithm' if cls.model_table == 'algo' else 'model'} (see `archlab list`)")
    if model["name"] not in MODELS:
        kinds = [e.name for e in MODELS.entries() if (e.family in cls.model_families if cls.model_families
                                                      else e.family != "rl")]
        what = "algorithm" if cls.model_table == "algo" else "model"
        raise ArchlabError(f"{cls.model_table}.name: unknown {what} {model['name']!r}; loop {loop_name!r} trains: "
                           f"{', '.join(kinds)}")
    entry = MODELS.get(model["name"])
    families = cls.model_families
    if (families is None and entry.family == "rl") or (families is not None and entry.family not in families):
        fitting = [e.name for e in MODELS.entries() if (e.family in families if families else e.family != "rl")]
        raise ArchlabError(f"{cls.model_table}.name: {entry.name!r} is a {entry.family} model and loop "
                           f"{loop_name!r} cannot train it; it trains: {', '.join(fitting)}")
    _config.build(entry.config_class, {k: v for k, v in model.items() if k != "name"}, cls.model_table)

    data = None
    if cls.uses_data:
        data = _config.build(DataConfig, _table(raw, "data", True, "; required tables: model, data, train"), "data")
        if data.name not in dataset_names():
            raise ArchlabError(f"data.name: unknown dataset {data.name!r}; datasets: {', '.join(dataset_names())}")
        ds = get_entry(data.name)
        # The dataset's own keys and the augment specs fail here too, not after the run has started.
        _config.build(ds.config_class, data.options, "data.options")
        try:
            make_transform(data.augment)
        except ArchlabError as exc:
            raise ArchlabError(f"data.augment: {exc}") from None
        if train.parallel == "pipeline" and data.batch_size % train.microbatches:
            raise ArchlabError(f"data.batch_size {data.batch_size} must be divisible by train.microbatches "
                               f"{train.microbatches}")
        if ds.kind != cls.data_kind:
            fitting = sorted(n for n in dataset_names() if get_entry(n).kind == cls.data_kind)
            raise ArchlabError(f"data.name: {data.name!r} is a dataset of kind {ds.kind!r} but loop "
                               f"{loop_name!r} needs kind {cls.data_kind!r} ({', '.join(fitting)})")

    tables = {key: _config.build(tcls, _table(raw, key, True, f"; loop {loop_name!r} needs it"), key)
              for key, tcls in cls.tables.items()}
    loop_cfg = _config.build(cls.Config, _table(raw, "loop", False) or {}, "loop")
    optim = _optim(raw.get("optim"), cls.trainables_for(model["name"], {k: v for k, v in model.items() if k != "name"}),
                   loop_name)
    expect_raw = _table(raw, "expect", False)
    expect = _config.build(ExpectConfig, expect_raw, "expect") if expect_raw is not None else None
    extra = {k: raw[k] for k in ("name", "description", "seed", "quick") if k in raw}
    recipe = _config.build(_Header, {"name": default_name, **extra}, "recipe")
    out = Recipe(train=train, model=dict(model), data=data, optim=optim, loop=loop_cfg, tables=tables,
                 expect=expect, name=recipe.name, description=recipe.description, seed=recipe.seed,
                 quick=recipe.quick)
    metric, _ = out.monitor()
    reported = {*cls.metrics, f"best_{metric}", "best_step"}
    if cls.keep_best:
        reported |= {f"final_{m}" for m in cls.metrics}
    if expect is not None and expect.metric not in reported:
        raise ArchlabError(f"expect.metric: loop {loop_name!r} does not report {expect.metric!r}; it reports: "
                           f"{', '.join(sorted(reported))}")
    if (train.monitor or train.early_stopping or cls.keep_best) and metric not in cls.metrics:
        val = sorted(m for m in cls.metrics if m.startswith("val_"))
        raise ArchlabError(f"train.monitor: loop {loop_name!r} does not report {metric!r} on validation; "
                           f"choose one of {', '.join(val)}")
    return out


@dataclass
class _Header:
    name: str = "run"
    description: str = ""
    seed: int = 0
    quick: bool = True

    def __post_init__(self) -> None:
        # The name becomes part of a path (runs/<name>-s<seed>-<time>): a plain, printable file name.
        if (not self.name or len(self.name) > 100 or self.name in (".", "..")
                or any(c in self.name for c in "/\\") or not self.name.isprintable()):
            raise ValueError(f"name {self.name!r} must be a plain, printable file name of at most 100 "
                             f"characters (no '/' or '\\\\')")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ArchlabError(f"recipe file not found: {path}")
        text = path.read_text()
    except UnicodeDecodeError:  # a ValueError too: must come first
        raise ArchlabError(f"{path}: not a text file") from None
    except (OSError, ValueError) as exc:  # over-long names, NUL bytes in the path
        raise ArchlabError(f"cannot read recipe {str(path)[:200]!r}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ArchlabError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ArchlabError(f"{path}: tables or arrays nested too deeply") from None
    return from_dict(apply_overrides(raw, overrides or []), default_name=path.stem)


def recipes_root() -> Path:
    """``$ARCHLAB_RECIPES``, else the ``recipes/`` folder of the source checkout."""
    env = os.environ.get("ARCHLAB_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "recipes"


def prerequisite_ref(recipe: Recipe) -> str | None:
    """``ssl/mae_mnist`` for ``train.init_from = "recipe:ssl/mae_mnist"``; None for a plain path or none."""
    init = recipe.train.init_from
    return init[len(RECIPE_PREFIX):] if init.startswith(RECIPE_PREFIX) else None


def recipe_path(ref: str) -> Path:
    """The file of a ``recipe:`` reference (relative to :func:`recipes_root`, ``.toml`` optional)."""
    root = recipes_root()
    path = root / (ref if ref.endswith(".toml") else f"{ref}.toml")
    if not path.is_file():
        hint = ""
        if path.parent.is_dir() and (known := sorted(str(p.relative_to(root).with_suffix(""))
                                                     for p in path.parent.glob("*.toml"))):
            hint = f"; recipes there: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}"
        elif root.is_dir():
            hint = f"; families: {', '.join(sorted(p.name for p in root.iterdir() if p.is_dir()))}"
        raise ArchlabError(f"train.init_from: no recipe {RECIPE_PREFIX}{ref} (looked for {path}){hint}")
    return path


def prerequisites(recipe: Recipe) -> list[tuple[str, Path]]:
    """The chain of ``recipe:`` prerequisites of ``recipe``, nearest first: ``[(ref, file), ...]``.

    Every file is read and validated as written (no overrides), so an unknown name, a broken prerequisite
    recipe or a cycle (A starts from B, B from A) is one line before anything trains."""
    chain: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    current = recipe
    while (ref := prerequisite_ref(current)) is not None:
        path = recipe_path(ref)
        if path.resolve() in seen:
            names = " -> ".join([recipe.name, *(r for r, _ in chain), ref])
            raise ArchlabError(f"train.init_from: the recipes start from each other in a cycle: {names}")
        seen.add(path.resolve())
        chain.append((ref, path))
        try:
            current = load(path)
        except ArchlabError as exc:
            raise ArchlabError(f"train.init_from: prerequisite {RECIPE_PREFIX}{ref}: {exc}") from None
    return chain


def fingerprint(recipe: Recipe) -> str:
    """sha256 of what a run of ``recipe`` computes: the resolved recipe (seed included) without its
    description, ``quick`` flag, ``[expect]`` target and :data:`RUNTIME_TRAIN_KEYS`. A ``recipe:`` prerequisite's
    run directory is reused only when its saved recipe.toml has the same fingerprint."""
    values = recipe.to_dict()
    for key in ("description", "quick", "expect"):
        values.pop(key, None)
    values["train"] = {k: v for k, v in values["train"].items() if k not in RUNTIME_TRAIN_KEYS}
    return hashlib.sha256(tomli_w.dumps(values).encode()).hexdigest()
