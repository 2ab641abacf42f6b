"""The loop contract: everything a training paradigm may give the engine, declared in one place.

A loop is a subclass of :class:`Loop`, registered by name in :data:`LOOPS` (``train.loop = "name"``
in a recipe). It declares, as class attributes, what it needs from a recipe -- its own ``[loop]``
table (the dataclass ``Config``), which table names the trained object (``[model]`` or ``[algo]``),
extra tables (``[env]``), the kind of data, the named optimizers (``[optim.NAME]``), the metrics it
reports -- and implements one step of its own kind. The runner and the :class:`~archlab.engine.driver.Driver`
call only the hooks below; every hook has a default, so a loop overrides what it needs and nothing
is probed with ``hasattr``.

Hook order in a run::

    data  = Loop.load_data(recipe)                       class-level: before anything is built
    model = Loop.build_model(recipe, data, device)       (uses Loop.model_defaults)
    Loop.check_fit(recipe, data, model)                  one-line error when they do not fit
    loop  = Loop(recipe, model, data, ctx)               builds its Trainables (optimizers)
    driver: loop.train_step(step) ... loop.evaluate("val") ... loop.state_dict() ... loop.finished()
    loop.final_metrics(); loop.final_object().save_pretrained(run); loop.write_artifacts(run); loop.close()
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..errors import ArchlabError
from ..registry import Registry
from .device import Precision
from .distributed import DistInfo, mean_across_workers
from .optim import OptimConfig, build_scheduler, l1_penalty
from .parallel import ParallelConfig, Strategy, make_strategy

if TYPE_CHECKING:
    from ..recipe import Recipe

#: Every training loop, by the name recipes give in ``train.loop``. The loop modules register
#: themselves; ``archlab.train`` imports them all.
LOOPS: Registry[type[Loop]] = Registry("loop", ("archlab.train",))


@dataclass
class NoConfig:
    """This loop has no settings of its own (its ``[loop]`` table must be empty)."""


@dataclass
class Context:
    """What the engine hands every loop: resolved device, precision, workers and seed."""

    device: torch.device
    precision: Precision
    dist: DistInfo
    seed: int


class Trainable:
    """One optimized unit: a module, its optimizer, learning-rate schedule and gradient scaler.

    A loop with one optimizer has one (``"model"``); a GAN has ``"generator"`` and
    ``"discriminator"``, each configured by its own ``[optim.NAME]`` table. ``state_dict`` holds all
    four parts, so resuming a loop with any number of trainables is exact.
    """

    def __init__(self, name: str, module: nn.Module, cfg: OptimConfig, total_steps: int, ctx: Context,
                 grad_clip: float = 0.0, parallel: Strategy | None = None) -> None:
        self.name, self.module, self.cfg, self.ctx, self.grad_clip = name, module, cfg, ctx, grad_clip
        # How the --nproc workers share the work (train.parallel; default: data parallel). It shards or
        # splits the module in place, so it comes before the optimizer.
        self.parallel = parallel or Strategy(ParallelConfig(), ctx.dist, ctx.device, total_steps)
        self.parallel.prepare(module)
        self.optimizer = self.parallel.build_optimizer(module, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps)
        # fp16 needs one loss scaler per optimizer (a shared one would skip both after one overflow).
        self.precision = Precision(ctx.precision.name, ctx.device)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss)

    def step(self) -> float:
        """After the backward pass: combine gradients over workers (ddp: average; see
        :mod:`~archlab.engine.parallel`), unscale (fp16), clip the global norm to ``grad_clip`` (0: no
        clipping), step the optimizer, then the schedule (local SGD: then the periodic outer step).
        Returns the learning rate the step used."""
        self.parallel.reduce_gradients(self.module)
        self.precision.unscale(self.optimizer)
        if self.grad_clip:
            self.parallel.clip_grad_norm(self.module, self.grad_clip)
        self.precision.step(self.optimizer)
        lr = self.lr
        self.scheduler.step()
        self.parallel.after_step(self.module)
        return lr

    def accumulated_step(self, accumulate: int, l1: float, micro_loss: Callable[[], torch.Tensor]) -> dict[str, Any]:
        """One optimizer step over ``accumulate`` micro-batches: each ``micro_loss()`` (draws a batch,
        returns its mean loss) plus the L1 penalty ``l1 * sum|W|``, scaled by ``1 / accumulate`` and
        backpropagated; the logged loss is averaged over workers. Returns ``{"loss", "lr"}``."""
        self.module.train()
        self.zero_grad()
        total = torch.zeros((), device=self.ctx.device)
        for _ in range(accumulate):
            loss = micro_loss()
            if l1:
                loss = loss + l1 * l1_penalty(self.module.parameters())
            loss = loss / accumulate
            self.backward(loss)
            total += loss.detach()
        # Each rank's loss covers its slice only; the global-batch loss is what one process would log
        # and NaN-check, and every rank then sees the same value (they stop at the same step).
        mean_across_workers(total, self.ctx.dist)
        return {"loss": total, "lr": self.step()}

    def batch_step(self, accumulate: int, l1: float, next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                   forward: Callable[[torch.Tensor], torch.Tensor],
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        """One optimizer step over ``accumulate`` micro-batches under any ``train.parallel`` strategy.

        ``next_batch()`` draws the *global* micro-batch ``(x, y)`` (the same on every worker); the
        strategy decides which part this worker computes (ddp, fsdp, local SGD: rows ``r B/N ..``;
        tensor, pipeline: all of it) and how: ``loss_fn(forward(x), y)`` (a mean over the examples, the
        forward pass under autocast) plus ``l1 * sum|W|``, scaled by ``1 / accumulate`` and
        backpropagated. The logged loss is the global batch's. Returns ``{"loss", "lr"}``."""
        self.module.train()
        self.zero_grad()
        total = torch.zeros((), device=self.ctx.device)
        for _ in range(accumulate):
            x, y = next_batch()
            total += self.parallel.forward_backward(self, x, y, forward, loss_fn, l1, accumulate)
        return {"loss": self.parallel.global_loss(total), "lr": self.step()}

    def state_dict(self) -> dict[str, Any]:
        # every worker calls this (sharded strategies gather their shards); rank 0 writes it
        return {**self.parallel.state_dict(self.module, self.optimizer),
                "scheduler": self.scheduler.state_dict(), "precision": self.precision.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parallel.load_state_dict(self.module, self.optimizer, state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["precision"])

    def unshard(self) -> tuple[nn.Module, nn.Module]:
        """After the last step, on every worker: (the trained module, a plain module with its full weights;
        the same one unless the strategy sharded it). The plain one becomes :attr:`module`."""
        old, self.module = self.module, self.parallel.unshard(self.module)
        return old, self.module


class Loop:
    """Base class of every training loop; see the module docstring for the order of the hooks."""

    # -- declarations (class attributes) -----------------------------------------------------------
    name: ClassVar[str] = ""
    """The registered name (set by :func:`register_loop`)."""
    Config: ClassVar[type] = NoConfig
    """Dataclass of the loop's own ``[loop]`` recipe table (a docstring per field)."""
    model_table: ClassVar[str] = "model"
    """Recipe table naming what is trained: ``[model]`` (registered model + config) or ``[algo]``."""
    model_families: ClassVar[tuple[str, ...] | None] = None
    """Registry families this loop can train (None: every family but ``rl``)."""
    uses_data: ClassVar[bool] = True
    """Whether the recipe has a ``[data]`` table (RL's data is its environment, in ``[env]``)."""
    tables: ClassVar[dict[str, type]] = {}
    """Extra recipe tables the loop reads, name -> dataclass (RL: ``{"env": EnvConfig}``)."""
    data_kind: ClassVar[str] = "arrays"
    """Kind of dataset the loop trains on (``arrays``, ``graph``, ``text`` ...), checked against the data registry."""
    trainables: ClassVar[tuple[str, ...]] = ("model",)
    """Names of the optimized units: ``[optim]`` configures all of them, ``[optim.NAME]`` one (per
    model, when :meth:`trainables_for` says so: then these are all the names the loop's models use)."""
    metrics: ClassVar[tuple[str, ...]] = ("val_acc", "val_loss", "test_acc", "test_loss")
    """Final metrics the loop reports (``expect.metric`` and ``train.monitor`` are checked against them)."""
    monitor: ClassVar[tuple[str, str]] = ("val_acc", "max")
    """Default validation metric and mode for best-model selection and early stopping."""
    keep_best: ClassVar[bool] = False
    """The driver keeps the weights of the best evaluation and restores them before the final metrics."""
    tie_break: ClassVar[str | None] = None
    """With ``keep_best``: on equal monitor values the lower value of this metric wins (e.g. ``val_loss``)."""
    progress_keys: ClassVar[tuple[str, ...]] = ("loss",)
    """Logged keys the progress line shows."""
    parallel: ClassVar[tuple[str, ...]] = ("ddp",)
    """``train.parallel`` strategies the loop supports (:mod:`archlab.engine.parallel`). Beyond ddp a loop
    must step through :meth:`Trainable.batch_step` and train what :meth:`trainable` returns."""

    # -- before the loop exists --------------------------------------------------------------------
    @classmethod
    def load_data(cls, recipe: Recipe) -> Any:
        """The loop's data (default: an array dataset with a validation split)."""
        from ..data import load_dataset

        d = recipe.data
        return load_dataset(d.name, d.options, d.val_fraction, d.split_seed)

    @classmethod
    def trainables_for(cls, model_name: str, model_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The named trainables of a run of this loop on model ``model_name`` (its model-table keys
        ``model_config``), each with the ``[optim]`` values it defaults to (the recipe's keys win).
        Default: :attr:`trainables` with :class:`~archlab.engine.optim.OptimConfig`'s defaults; a loop
        whose models differ in their optimizers (RL: PPO's ``policy``, SAC's ``actor``, ``critic``,
        ``temperature``) answers per model."""
        return {name: {} for name in cls.trainables}

    @classmethod
    def model_defaults(cls, recipe: Recipe, data: Any) -> dict[str, Any]:
        """Model config values the data decides (input size, classes ...); keys the recipe sets win."""
        return {}

    @classmethod
    def build_model(cls, recipe: Recipe, data: Any, device: torch.device) -> Any:
        """A fresh model (or agent) from the recipe's model table and :meth:`model_defaults`."""
        from ..registry import create

        return create(recipe.model_name, **{**cls.model_defaults(recipe, data), **recipe.model_config})

    @classmethod
    def check_fit(cls, recipe: Recipe, data: Any, model: Any) -> None:
        """Raise a one-line :class:`ArchlabError` when ``model`` cannot train on ``data`` with this
        loop (wrong input size, too few outputs ...), before the first step."""

    # -- the loop ----------------------------------------------------------------------------------
    def __init__(self, recipe: Recipe, model: Any, data: Any, ctx: Context) -> None:
        self.recipe, self.model, self.data, self.ctx = recipe, model, data, ctx
        self.cfg = recipe.loop
        self.total_steps = 1
        """Steps of a complete run (an upper bound when :meth:`finished` ends runs early)."""
        self.eval_every = 0
        """``evaluate("val")`` every this many steps; 0: never during training."""
        self._trainables: list[Trainable] = []

    def trainable(self, name: str, module: nn.Module) -> Trainable:
        """The :class:`Trainable` ``name`` (one of :attr:`trainables`) over ``module``, configured
        by the recipe's ``[optim]`` / ``[optim.NAME]`` and run under ``train.parallel`` (which may shard
        ``module`` in place); call it once ``total_steps`` and ``eval_every`` are known."""
        tc = self.recipe.train
        strategy = make_strategy(tc.parallel_config(), self.ctx.dist, self.ctx.device, self.total_steps)
        strategy.check(module, tc, self.eval_every)
        t = Trainable(name, module, self.recipe.optim[name], self.total_steps, self.ctx, tc.grad_clip, strategy)
        self._trainables.append(t)
        return t

    def unshard(self) -> None:
        """After the last step (the runner calls it on every worker, before saving): modules a
        ``train.parallel`` strategy sharded are replaced by plain ones with the full weights --
        :attr:`model` too when it was one of them -- so rank 0 alone can save, sample and plot."""
        for t in self._trainables:
            old, new = t.unshard()
            if self.model is old:
                self.model = new

    @property
    def log_every(self) -> int:
        """Log train scalars every this many steps."""
        return self.recipe.train.log_every

    @property
    def checkpoint_every(self) -> int:
        """Checkpoint every this many steps (0: by wall time and at evaluations only)."""
        return self.recipe.train.checkpoint_every

    def finished(self) -> bool:
        """True when the run's budget is spent before ``total_steps`` (RL: environment steps)."""
        return False

    def train_step(self, step: int) -> dict[str, Any]:
        """Do step ``step`` (0-based); return scalars to log. ``loss`` (tensor or float) is NaN-checked."""
        raise NotImplementedError

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on a split, named ``{split}_{metric}`` (e.g. ``val_acc``); {} when there is nothing to report."""
        raise NotImplementedError

    def final_metrics(self) -> dict[str, float]:
        """The run's result (after the driver restored the best weights, for ``keep_best`` loops)."""
        return {**self.evaluate("val"), **self.evaluate("test")}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly: trainables, generators, data position, buffers."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def best_state(self) -> dict[str, Any]:
        """A copy of the weights the driver keeps for ``keep_best`` (default: the final object's)."""
        return copy.deepcopy(self.final_object().state_dict())

    def load_best(self, state: dict[str, Any]) -> None:
        self.final_object().load_state_dict(state)

    def final_object(self) -> Any:
        """What the run produces: saved as ``config.json`` + ``model.safetensors`` and returned by
        ``archlab.load(RUN_DIR)`` (a model; an RL agent)."""
        return self.model

    def write_artifacts(self, run_dir: str | os.PathLike) -> None:
        """Loop-specific files next to the model (tokenizer, episode log, pictures)."""

    def close(self) -> None:
        """Release what the loop holds open (environments, worker processes)."""

    @classmethod
    def write_seed_artifacts(cls, run_dirs: list[Path], out: Path, name: str) -> None:
        """``archlab reproduce``: pictures over the finished runs of one recipe's seeds, into ``out``."""

    @classmethod
    def evaluate_run(cls, run_dir: str | os.PathLike, recipe: Recipe, ctx: Context) -> dict[str, float]:
        """``archlab eval RUN_DIR``: the final metrics of a finished run, recomputed from its saved model."""
        from ..registry import load

        obj = load(run_dir, map_location=str(ctx.device))
        data = cls.load_data(recipe) if cls.uses_data else None
        loop = cls(recipe, obj, data, ctx)
        try:
            return loop.final_metrics()
        finally:
            loop.close()


def probe_forward(module: nn.Module, x: torch.Tensor, what: str, on: str) -> Any:
    """``check_fit``'s probe: ``module`` in eval mode, without gradients, on a few examples ``x``
    (``[n, *shape]``); returns its output. A module that cannot take them is a user mistake, said in one line:
    ``"<what> does not fit <on> (examples of shape <shape>): <first line of the error>"``."""
    try:
        with torch.no_grad():
            return module.eval()(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArchlabError(f"{what} does not fit {on} (examples of shape {tuple(x.shape[1:])}): {msg[:200]}") from None


def register_loop(name: str) -> Callable[[type[Loop]], type[Loop]]:
    """Class decorator: make a :class:`Loop` subclass usable as ``train.loop = name``."""

    def deco(cls: type[Loop]) -> type[Loop]:
        if not issubclass(cls, Loop):
            raise TypeError(f"{cls.__name__} must subclass archlab.engine.loop.Loop")
        cls.name = name
        return LOOPS.add(name, cls)

    return deco


def get_loop(name: str) -> type[Loop]:
    return LOOPS.get(name).obj

