"""Recipes: one reproducible experiment as TOML, validated into dataclasses.

A recipe has the tables ``[model]``, ``[data]``, ``[optim]``, ``[train]`` and ``[expect]``.
``[model]`` holds ``name`` plus that model's own config keys; ``[data]`` holds ``name``, loader keys
and ``[data.options]`` (the dataset's own keys). Every key is checked against its dataclass, so a
typo fails with the key's dotted path and the allowed keys before any work starts. ``--set a.b=v``
overrides are parsed as TOML values and go through the same validation.
"""

from __future__ import annotations

import copy
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from . import config as _config
from .errors import ArchlabError

Precision = Literal["fp32", "bf16", "fp16"]


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
    folds: int = 0
    """Graph classification: k-fold cross-validation with this many folds (0: no folds; a stratified
    ``val_fraction`` / ``test_fraction`` split instead)."""
    fold: int = -1
    """Which fold is held out for testing; -1: ``seed % folds``, so seeds 0..k-1 together run the whole
    cross-validation (``archlab reproduce`` with ``expect.seeds = k``)."""
    test_fraction: float = 0.1
    """Graph classification without folds: share of the graphs held out for testing."""
    fanouts: list[int] = field(default_factory=list)
    """Graph loops: neighbours sampled per layer for mini-batch training (e.g. [25, 10]); empty: full
    batch. With fanouts, ``batch_size`` counts target nodes per step."""
    seq_len: int = 128
    """Masked-LM loop: text tokens per training window ([CLS] and [SEP] come on top)."""
    mask_prob: float = 0.15
    """Masked-LM loop: share of the text tokens the model must predict (Devlin et al. 2019: 0.15)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.folds < 0 or self.folds == 1 or (self.folds and self.fold >= self.folds) or self.fold < -1:
            raise ValueError(f"need folds = 0 or >= 2 and -1 <= fold < folds, got folds={self.folds}, "
                             f"fold={self.fold}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError("test_fraction must be in [0, 1)")
        if any(f < 1 for f in self.fanouts):
            raise ValueError(f"fanouts must be positive, got {self.fanouts}")
        if self.seq_len < 1 or not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"need seq_len >= 1 and 0 < mask_prob < 1, got {self.seq_len}, {self.mask_prob}")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """L2 penalty (decoupled for AdamW); never applied to biases and norm weights."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = False
    schedule: Literal["constant", "cosine", "linear", "step"] = "constant"
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over this many steps, before the schedule."""
    min_lr_ratio: float = 0.0
    """cosine/linear decay end at ``lr * min_lr_ratio``."""
    step_size: int = 1000
    """step schedule: multiply by ``gamma`` every ``step_size`` steps."""
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    """step schedule: if given, decay by ``gamma`` at these steps instead of every ``step_size``."""

    def __post_init__(self) -> None:
        # `not x >= 0` also rejects NaN, which torch's optimizers would report with a traceback.
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0 or not self.weight_decay >= 0 or not self.momentum >= 0:
            raise ValueError("eps must be > 0, weight_decay and momentum >= 0")
        if self.step_size < 1 or self.warmup_steps < 0:
            raise ValueError("step_size must be >= 1 and warmup_steps >= 0")


@dataclass
class TrainConfig:
    """The training loop and engine services."""

    loop: str = "supervised"
    """Training paradigm (``supervised`` ...)."""
    steps: int = 0
    """Optimizer steps; 0 means use ``epochs``."""
    epochs: float = 0.0
    """Passes over the training split (used when ``steps`` is 0)."""
    eval_every: int = 0
    """Evaluate on validation every N steps (0: once per epoch)."""
    eval_iters: int = 200
    """Language-model loop: random batches of train and of val averaged per evaluation (nanoGPT's eval_iters)."""
    log_every: int = 50
    """Write train loss to metrics.jsonl every N steps."""
    precision: Precision = "fp32"
    compile: bool = False
    """Wrap the model in torch.compile."""
    grad_clip: float = 0.0
    """Clip the global gradient norm (0 disables)."""
    accumulate: int = 1
    """Gradient accumulation: micro-batches per optimizer step."""
    l1: float = 0.0
    """L1 penalty on weights (not biases/norms), added to the loss."""
    label_smoothing: float = 0.0
    checkpoint_every: int = 0
    """Write a checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 3
    early_stopping: int = 0
    """Stop after N evaluations without improving ``monitor`` (0 disables)."""
    monitor: str = "val_acc"
    """Validation metric for early stopping and best-model selection."""
    monitor_mode: Literal["max", "min"] = "max"
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (slower on some ops)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = False
    """Also log scalars to TensorBoard (needs the tensorboard extra)."""
    threads: int = 0
    """torch CPU threads (0: leave PyTorch's default)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs == 0):
            raise ValueError("set train.steps or train.epochs to a positive number")
        if not math.isfinite(self.epochs):
            raise ValueError(f"epochs must be finite, got {self.epochs}")
        if self.accumulate < 1:
            raise ValueError("accumulate must be >= 1")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.eval_iters < 1:
            raise ValueError(f"eval_iters must be >= 1, got {self.eval_iters}")
        for key in ("eval_every", "checkpoint_every", "early_stopping", "threads"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.grad_clip >= 0 or not self.l1 >= 0:
            raise ValueError("grad_clip and l1 must be >= 0")


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
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

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
class EnvConfig:
    """Reinforcement learning (``train.loop = "rl"``): the environment."""

    id: str
    """gymnasium environment id, e.g. ``CartPole-v1`` (or one of archlab's toy envs, ``archlab/Identity-v0``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``gymnasium.make``, e.g. ``{ is_slippery = false }``."""
    eval_episodes: int = 10
    """Episodes of the deterministic policy averaged by each evaluation."""

    def __post_init__(self) -> None:
        if self.eval_episodes < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {self.eval_episodes}")


@dataclass
class Recipe:
    train: TrainConfig
    model: dict[str, Any] | None = None
    """The model: ``name`` plus its config keys (every loop but ``rl``)."""
    data: DataConfig | None = None
    algo: dict[str, Any] | None = None
    """Reinforcement learning: ``name`` of the algorithm plus its hyperparameters."""
    env: EnvConfig | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    expect: ExpectConfig | None = None
    name: str = "run"
    """Short name (defaults to the file stem); names the run directory."""
    description: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        # The name becomes part of a path (runs/<name>-s<seed>-<time>): no separators, no "..".
        if not self.name or any(c in self.name for c in "/\\") or self.name in (".", ".."):
            raise ValueError(f"name {self.name!r} must be a plain file name (no '/' or '\\')")

    @property
    def is_rl(self) -> bool:
        return self.algo is not None

    @property
    def model_name(self) -> str:
        """The model's registered name (the algorithm's, for RL recipes)."""
        return self.algo["name"] if self.algo is not None else self.model["name"]

    @property
    def dataset(self) -> str:
        """The dataset name (the environment id, for RL recipes)."""
        return self.env.id if self.env is not None else self.data.name

    @property
    def model_config(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model or self.algo).items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        d = _config.to_dict(self)
        if self.is_rl:  # RL hyperparameters live in [algo]; an [optim] table would be rejected on reload
            d.pop("optim", None)
        return d

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


_SECTIONS = ("model", "data", "algo", "env", "optim", "train", "expect")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=v`` -> (["a", "b"], v), v parsed as a TOML value (bare words are strings)."""
    if "=" not in item:
        raise ArchlabError(f"malformed --set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.01")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ArchlabError(f"malformed --set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.01")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
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


def from_dict(raw: dict[str, Any], default_name: str = "run") -> Recipe:
    """Validate a raw recipe dict (model and dataset keys included)."""
    from .data import dataset_names, make_transform
    from .data.registry import get_entry
    from .registry import build_config, get

    raw = dict(raw)
    if "train" not in raw:
        raise ArchlabError("recipe has no [train] table; required tables: model, data, train (or algo, env, train)")
    allowed = set(_SECTIONS) | {"name", "description", "seed"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ArchlabError(f"unknown key {unknown[0]} in recipe; allowed keys: {', '.join(sorted(allowed))}")
    train = raw["train"] if isinstance(raw["train"], dict) else {}
    from .train import loop_names

    loop = train.get("loop", "supervised")
    if loop not in loop_names():
        raise ArchlabError(f"train.loop: unknown loop {loop!r}; loops: {', '.join(loop_names())}")
    raw.setdefault("name", default_name)
    if loop == "rl":
        return _rl_from_dict(raw)
    for key in ("model", "data"):
        if key not in raw:
            raise ArchlabError(f"recipe has no [{key}] table; required tables: model, data, train")
    for key in ("algo", "env"):
        if key in raw:
            raise ArchlabError(f"[{key}] is for reinforcement learning recipes (train.loop = \"rl\"); "
                               f"this recipe's loop is {loop!r}")
    model = raw["model"]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ArchlabError("model.name: required string naming a registered model (see `archlab list`)")
    try:
        get(model["name"])  # unknown model -> one-line error listing the registered ones
    except ArchlabError as exc:
        raise ArchlabError(f"model.name: {exc}") from None
    build_config(model["name"], {k: v for k, v in model.items() if k != "name"})
    recipe = _config.build(Recipe, raw)
    if recipe.data.name not in dataset_names():
        raise ArchlabError(f"data.name: unknown dataset {recipe.data.name!r}; datasets: {', '.join(dataset_names())}")
    # The dataset's own keys and the augment specs fail here too, not after the run has started.
    _config.build(get_entry(recipe.data.name).config_class, recipe.data.options, "data.options")
    try:
        make_transform(recipe.data.augment)
    except ArchlabError as exc:
        raise ArchlabError(f"data.augment: {exc}") from None
    from .train import get_loop

    wants = getattr(get_loop(recipe.train.loop), "data_kind", "arrays")
    kind = get_entry(recipe.data.name).kind
    if kind != wants:
        fitting = sorted(n for n in dataset_names() if get_entry(n).kind == wants)
        raise ArchlabError(f"data.name: {recipe.data.name!r} is a dataset of kind {kind!r} but loop "
                           f"{recipe.train.loop!r} needs kind {wants!r} ({', '.join(fitting)})")
    return recipe


def _rl_from_dict(raw: dict[str, Any]) -> Recipe:
    """An RL recipe: [algo] (name + hyperparameters) and [env] instead of [model] and [data]."""
    from .rl import algo_names, get_algo

    for key in ("algo", "env"):
        if key not in raw:
            raise ArchlabError(f"recipe has no [{key}] table; reinforcement learning recipes need algo, env, train")
    for key in ("model", "data", "optim"):
        if key in raw:
            raise ArchlabError(f"[{key}] is not used by reinforcement learning recipes; put hyperparameters "
                               f"(learning_rate, net_arch ...) in [algo]")
    algo = raw["algo"]
    if not isinstance(algo, dict) or not isinstance(algo.get("name"), str):
        raise ArchlabError(f"algo.name: required string naming an algorithm ({', '.join(algo_names())})")
    try:
        cls = get_algo(algo["name"])
    except ArchlabError as exc:
        raise ArchlabError(f"algo.name: {exc}") from None
    _config.build(cls.Config, {k: v for k, v in algo.items() if k != "name"}, "algo")
    return _config.build(Recipe, raw)


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ArchlabError(f"recipe file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ArchlabError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ArchlabError(f"{path}: not a text file") from None
    return from_dict(apply_overrides(raw, overrides or []), default_name=path.stem)
